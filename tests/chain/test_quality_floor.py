"""The quality floor: paired model - random-init twin over the same runs, corrected for re-dealt folds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pluto.eval.records import EvalRecord, SuiteResult
from pluto.registry.floor import check_floor

SEEDS = (0, 1, 2, 3, 4)


def _rec(task, values, model_id="m", mode="cls", folds=4, spread="folds"):
    extra = {"spread_over": spread, **({"folds": folds} if spread == "folds" else {})}
    return EvalRecord(task, "folder", "cv", "balanced_accuracy", values, SEEDS[: len(values)], "linear_probe/quick",
                      model_id, 16, mode, extra=extra)


def _result(model, twin):
    return SuiteResult(tuple(model), float(np.mean([r.mean for r in model])), "cls",
                       {"random_init": tuple(twin)} if twin else {}).to_dict()


def test_a_clear_paired_win_passes_and_a_tie_does_not():
    twin = [_rec("crc", [0.40, 0.45, 0.42, 0.38, 0.44], "twin"), _rec("mag", [0.30, 0.32, 0.31, 0.29, 0.33], "twin")]
    better = [_rec("crc", [0.60, 0.62, 0.61, 0.59, 0.63]), _rec("mag", [0.40, 0.41, 0.42, 0.40, 0.43])]
    win = check_floor(_result(better, twin))
    assert win.passed is True and win.tasks == ("crc", "mag") and win.n == 5 and "beats its random-init twin" in win.reason
    per_run = np.mean([np.subtract(m.values, t.values) for m, t in zip(better, twin)], axis=0)  # mean over tasks, per run
    assert win.diff_mean == pytest.approx(per_run.mean()) and win.diff_se == pytest.approx(np.std(per_run, ddof=1) * math.sqrt(1 / 5 + 4 / 3))
    same = [_rec("crc", [0.41, 0.44, 0.43, 0.37, 0.45]), _rec("mag", [0.30, 0.33, 0.30, 0.29, 0.34])]
    tie = check_floor(_result(same, twin))
    assert tie.passed is False and "does not beat" in tie.reason


def test_pooled_folds_inflate_the_standard_error_as_nadeau_and_bengio():
    twin = [_rec("crc", [0.40, 0.45, 0.42, 0.38, 0.44], "twin", spread="seeds")]
    model = [_rec("crc", [0.45, 0.48, 0.49, 0.41, 0.47], spread="seeds")]
    plain = check_floor(_result(model, twin))
    d = np.subtract(model[0].values, twin[0].values)
    assert plain.diff_se == pytest.approx(np.std(d, ddof=1) / math.sqrt(5))
    folded = check_floor(_result([_rec("crc", model[0].values, folds=4)], [_rec("crc", twin[0].values, "twin", folds=4)]))
    assert folded.diff_se == pytest.approx(np.std(d, ddof=1) * math.sqrt(1 / 5 + 4 / 3))  # 1/J + k n_test/n_train, k = 4
    assert folded.diff_se > plain.diff_se



def test_a_probe_that_holds_out_a_validation_fold_trains_on_fewer_folds_and_widens_the_se():
    """n_test/n_train is 1/(k-1) for the quick probe (every fold but the test fold trains) and 1/(k-2) for eva's probe and
    ABMIL (a fold validates): the record says which, and over several tasks the widest inflation holds."""
    m, t = [0.45, 0.48, 0.49, 0.41, 0.47], [0.40, 0.45, 0.42, 0.38, 0.44]
    sd = np.std(np.subtract(m, t), ddof=1)

    def rec(values, who, train_folds):
        r = _rec("crc", values, who, folds=4)
        return EvalRecord(r.task, r.dataset, r.split, r.metric, r.values, r.seeds, r.protocol, r.model_id, r.patch_size,
                          r.embedding_mode, extra={**r.extra, "train_folds": train_folds})

    quick = check_floor(_result([rec(m, "m", 3)], [rec(t, "twin", 3)]))
    eva = check_floor(_result([rec(m, "m", 2)], [rec(t, "twin", 2)]))
    assert quick.diff_se == pytest.approx(sd * math.sqrt(1 / 5 + 4 / 3))
    assert eva.diff_se == pytest.approx(sd * math.sqrt(1 / 5 + 4 / 2))
    seeded = _rec("mag", [0.30, 0.32, 0.31, 0.29, 0.33], spread="seeds")
    mixed = check_floor(_result([rec(m, "m", 2), seeded], [rec(t, "twin", 2), _rec("mag", [0.3] * 5, "twin", spread="seeds")]))
    per_run = (np.subtract(m, t) + np.subtract(seeded.values, 0.3)) / 2
    assert mixed.diff_se == pytest.approx(np.std(per_run, ddof=1) * math.sqrt(1 / 5 + 4 / 2))  # not the seeded task's plain SE

def test_without_a_twin_on_the_same_runs_the_floor_says_it_was_not_checked():
    model = [_rec("crc", [0.6, 0.62])]
    assert check_floor(_result(model, None)).passed is None
    other_seeds = EvalRecord("crc", "folder", "cv", "balanced_accuracy", (0.4, 0.41), (7, 8), "linear_probe/quick", "twin", 16, "cls")
    unpaired = check_floor(_result(model, [other_seeds]))
    assert unpaired.passed is None and "not checked" in unpaired.reason
    one_run = check_floor(_result([_rec("crc", [0.6])], [_rec("crc", [0.4], "twin")]))
    assert one_run.passed is None and "no spread" in one_run.reason


def test_the_gate_registers_but_never_promotes_a_candidate_below_its_floor():
    from pluto.registry.gate import SuiteScores, decide

    twin = [_rec("crc", [0.40, 0.45, 0.42, 0.38, 0.44], "twin")]
    below = SuiteScores.from_suite(_result([_rec("crc", [0.41, 0.44, 0.43, 0.37, 0.45])], twin))
    above = SuiteScores.from_suite(_result([_rec("crc", [0.60, 0.62, 0.61, 0.59, 0.63])], twin))
    assert below.floor["passed"] is False and above.floor["passed"] is True
    assert SuiteScores.from_dict(json.loads(below.to_json())).floor == below.floor  # travels with the version's scores
    first = decide(below, None, 0.01)  # no champion yet: still not promoted
    assert not first.promote and first.reasons[0].startswith("quality floor: does not beat its random-init twin")
    assert decide(above, None, 0.01).promote
    weak_champion = SuiteScores("2", 0.30, {"crc": 0.30}, {"crc": 0.01})
    assert not decide(below, weak_champion, 0.01).promote  # beating the champion is not enough
    unchecked = SuiteScores.from_suite(_result([_rec("crc", [0.60, 0.62, 0.61, 0.59, 0.63])], None))
    d = decide(unchecked, None, 0.01)
    assert d.promote and "quality floor: not checked" in d.summary  # said, not silently passed
