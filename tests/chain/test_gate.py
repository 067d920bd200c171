"""Champion/challenger gate and promotion history: pure rules, no servers."""

from __future__ import annotations

import pytest

from pluto.registry.gate import GateDecision, SuiteScores, decide
from pluto.registry.promotion import PromotionEvent, champion_history

CHAMP = SuiteScores("1", 0.80, {"crc": 0.85, "mag": 0.75}, {"crc": 0.01, "mag": 0.02})


def test_no_champion_promotes():
    assert decide(CHAMP, None, 0.01).promote


def test_better_on_every_task_promotes():
    cand = SuiteScores("1", 0.83, {"crc": 0.86, "mag": 0.80}, {"crc": 0.01, "mag": 0.01})
    d = decide(cand, CHAMP, 0.01)
    assert d.promote and d.reasons == ()


def test_worse_suite_score_blocks():
    cand = SuiteScores("1", 0.79, {"crc": 0.85, "mag": 0.73}, {"crc": 0.01, "mag": 0.02})
    d = decide(cand, CHAMP, 0.01)
    assert not d.promote and "suite score 0.7900 < champion 0.8000" in d.reasons[0]


def test_task_drop_beyond_seed_spread_blocks_even_with_better_mean():
    cand = SuiteScores("1", 0.81, {"crc": 0.97, "mag": 0.65}, {"crc": 0.01, "mag": 0.03})
    d = decide(cand, CHAMP, 0.01)
    assert not d.promote and d.reasons == ("task mag: drop 0.1000 > margin 0.0300",)


def test_drop_within_seed_spread_is_tolerated():
    # mag drops 0.025: above min_margin 0.01 but within the candidate's seed std 0.03
    cand = SuiteScores("1", 0.81, {"crc": 0.895, "mag": 0.725}, {"crc": 0.01, "mag": 0.03})
    assert decide(cand, CHAMP, 0.01).promote


def test_other_suite_version_or_missing_task_blocks():
    other = SuiteScores("2", 0.99, {"crc": 0.99, "mag": 0.99}, {})
    assert "eval-suite version" in decide(other, CHAMP, 0.01).reasons[0]
    partial = SuiteScores("1", 0.90, {"crc": 0.90}, {})
    assert decide(partial, CHAMP, 0.01).reasons == ("task mag: not evaluated for the candidate",)


def test_value_objects_round_trip():
    assert SuiteScores.from_dict(CHAMP.to_dict()) == CHAMP
    d = decide(CHAMP, None, 0.0)
    assert GateDecision.from_dict(d.to_dict()) == d


def test_suite_scores_from_eval_suite_result():
    from pluto.eval.records import EvalRecord, SuiteResult

    recs = tuple(
        EvalRecord(task=t, dataset=t, split="cv", metric="balanced_accuracy", values=v, seeds=(0, 1), protocol="quick",
                   model_id="m", patch_size=16, embedding_mode=mode)
        for t, v in (("crc", (0.8, 0.9)), ("mag", (0.6, 0.6))) for mode in ("cls", "cls+mean")
    )
    seg = EvalRecord(task="seg", dataset="consep", split="test", metric="dice", values=(0.5, 0.7), seeds=(0, 1),
                     protocol="segmentation/quick", model_id="m", patch_size=16, embedding_mode="patch_tokens")
    s = SuiteScores.from_suite(SuiteResult(recs + (seg,), 0.65).to_dict())
    # a segmentation task has only a patch-token record: it still gets a mean and a seed-spread margin
    assert s.task_means["seg"] == pytest.approx(0.6) and s.task_stds["seg"] == pytest.approx(0.1414, abs=1e-4)
    s = SuiteScores.from_suite(SuiteResult(recs, 0.725).to_dict())
    assert s.task_means == pytest.approx({"crc": 0.85, "mag": 0.6})
    assert s.task_stds["crc"] == pytest.approx(0.0707, abs=1e-4) and s.task_stds["mag"] == 0.0
    assert s.suite_version == recs[0].suite_version and s.score == 0.725


def _event(seq, action, version, previous):
    return PromotionEvent(seq, "t", action, "m", version, previous, "me", "why")


def test_champion_history_is_a_stack_of_promotions_and_rollbacks():
    events = [_event(1, "promote", 1, None), _event(2, "promote", 2, 1), _event(3, "promote", 3, 2), _event(4, "rollback", 2, 3)]
    assert champion_history(events) == [1, 2]
    assert champion_history(events + [_event(5, "rollback", 1, 2)]) == [1]
    assert PromotionEvent.from_dict(events[1].to_dict()) == events[1]


def test_a_suite_file_that_is_not_a_suite_result_is_refused_clearly():
    from pluto.errors import PlutoError

    with pytest.raises(PlutoError, match="not a pluto.eval SuiteResult"):
        SuiteScores.from_suite({"score": 0.8, "records": [{"task": "crc", "embedding_mode": "cls", "mean": 0.8}]})
