"""Champion/challenger gate and promotion history: pure rules, no servers."""

from __future__ import annotations

import json

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
    assert not d.promote and d.reasons == ("task mag: drop 0.1000 > margin 0.0300 (std over seeds)",)


def test_drop_within_seed_spread_is_tolerated():
    # mag drops 0.025: above min_margin 0.01 but within the candidate's seed std 0.03
    cand = SuiteScores("1", 0.81, {"crc": 0.895, "mag": 0.725}, {"crc": 0.01, "mag": 0.03})
    assert decide(cand, CHAMP, 0.01).promote


def test_other_suite_version_is_not_comparable_and_missing_task_blocks():
    other = SuiteScores("2", 0.99, {"crc": 0.99, "mag": 0.99}, {})
    d = decide(other, CHAMP, 0.01)
    assert not d.promote and not d.comparable and "eval-suite version" in d.reasons[0] and d.summary.startswith("not comparable")
    assert {r["verdict"] for r in d.table} == {"not comparable"}
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
    base = {"random_init": tuple(EvalRecord(t, t, "cv", "balanced_accuracy", (0.3, 0.5), (0, 1), "quick", "twin", 16, "cls")
                                 for t in ("crc", "mag"))}
    s = SuiteScores.from_suite(SuiteResult(recs, 0.725, baselines=base).to_dict())
    assert s.baselines == {"random_init": pytest.approx({"crc": 0.4, "mag": 0.4})}
    assert s.task_n == {"crc": 2, "mag": 2} and s.task_protocols["crc"] == "quick [cls]" and s.spread_over["crc"] == "seeds"
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
    removed = events + [_event(5, "external", None, 2)]  # the alias removed in the MLflow UI
    assert champion_history(removed) == [1, 2, None] and champion_history(removed + [_event(6, "rollback", 2, None)]) == [1, 2]
    assert PromotionEvent.from_dict(removed[-1].to_dict()) == removed[-1]


def test_a_suite_file_that_is_not_a_suite_result_is_refused_clearly():
    from pluto.errors import PlutoError

    with pytest.raises(PlutoError, match="not a pluto.eval SuiteResult"):
        SuiteScores.from_suite({"score": 0.8, "records": [{"task": "crc", "embedding_mode": "cls", "mean": 0.8}]})


def _n(scores: SuiteScores, **kw) -> SuiteScores:
    return SuiteScores.from_dict(scores.to_dict() | kw)


def test_single_run_has_no_spread_so_the_margin_is_min_margin_and_the_decision_says_so():
    # a std recorded beside n = 1 (0 by construction, 0.05 here to prove it is not used) gives no margin
    champ = _n(CHAMP, task_stds={"crc": 0.05, "mag": 0.05}, task_n={"crc": 1, "mag": 1})
    cand = _n(champ, score=0.81, task_means={"crc": 0.88, "mag": 0.72})
    d = decide(cand, champ, 0.01)
    assert not d.promote and d.reasons == ("task mag: drop 0.0300 > margin 0.0100 (min_margin: n = 1, no spread)",)
    ok = decide(_n(cand, task_means={"crc": 0.88, "mag": 0.745}), champ, 0.01)
    assert ok.promote and "no spread (n = 1) on crc, mag: margin min_margin 0.0100 there" in ok.summary
    assert [r["margin"] for r in ok.table] == ["0.0100 (min_margin: n = 1, no spread)"] * 2


def test_the_model_with_runs_sets_the_margin_when_the_other_has_one_run():
    champ = _n(CHAMP, task_stds={"crc": 0.0, "mag": 0.04}, task_n={"crc": 5, "mag": 5}, spread_over={"mag": "folds"})
    cand = _n(CHAMP, score=0.81, task_means={"crc": 0.86, "mag": 0.72}, task_stds={"crc": 0.0, "mag": 0.0},
              task_n={"crc": 1, "mag": 1})
    d = decide(cand, champ, 0.01)
    assert d.promote and d.table[1]["margin"] == "0.0400 (std over folds)"
    assert d.table[0]["margin"] == "0.0100 (min_margin; std over seeds 0.0000 is smaller)"


def test_another_protocol_on_a_task_is_not_comparable():
    champ = _n(CHAMP, task_protocols={"crc": "linear_probe/eva [cls]", "mag": "linear_probe/eva [cls]"})
    cand = _n(champ, score=0.95, task_protocols={"crc": "linear_probe/quick [cls]", "mag": "linear_probe/eva [cls]"})
    d = decide(cand, champ, 0.01)
    assert not d.promote and not d.comparable
    assert d.reasons == ("task crc: protocol 'linear_probe/quick [cls]' differs from the champion's 'linear_probe/eva [cls]'",)


def test_the_gate_table_shows_candidate_champion_and_both_baselines():
    cand = _n(CHAMP, score=0.83, task_means={"crc": 0.86, "mag": 0.80}, task_n={"crc": 5, "mag": 5},
              baselines={"random_init": {"crc": 0.51, "mag": 0.40}, "mean_rgb": {"crc": 0.62}})
    d = decide(cand, CHAMP, 0.01)
    assert d.table[0] == {"task": "crc", "candidate": "0.860 ± 0.010 (n=5)", "champion": "0.850 ± 0.010",
                          "random init": "0.510", "mean rgb": "0.620", "margin": "0.0100 (std over seeds)",
                          "verdict": "drop -0.0100: ok"}
    assert d.table[1]["mean rgb"] == "–"
    md = d.markdown().splitlines()
    assert md[0] == "| task | candidate | champion | random init | mean rgb | margin | verdict |" and len(md) == 4
    assert GateDecision.from_dict(json.loads(json.dumps(d.to_dict()))) == d


def test_evaluate_flow_table_and_mlflow_metrics_carry_the_baselines():
    from flows.evaluate import metric_name, table_rows
    from pluto.eval.records import EvalRecord, SuiteResult

    rec = lambda mid, mode, v: EvalRecord("crc", "folder", "cv", "balanced_accuracy", v, (0, 1), "linear_probe/quick", mid, 16, mode)  # noqa: E731
    result = SuiteResult((rec("m", "cls", (0.8, 0.9)),), 0.85,
                         baselines={"random_init": (rec("twin", "cls", (0.5, 0.5)),), "mean_rgb": (rec("mean_rgb", "mean_rgb", (0.6, 0.7)),)})
    rows = table_rows(result.to_dict())
    assert [(r["model"], r["mean"], r["n"]) for r in rows] == [("model", 0.85, 2), ("random_init", 0.5, 2), ("mean_rgb", 0.65, 2)]
    assert [metric_name(r) for r in rows] == ["crc.cls.balanced_accuracy", "baseline.random_init.crc.cls.balanced_accuracy",
                                              "baseline.mean_rgb.crc.mean_rgb.balanced_accuracy"]


def test_metric_names_are_ones_mlflow_accepts():
    """MLflow refuses a whole metric batch over one name with '+': the cls+mean mode is written cls_mean."""
    from mlflow.utils.validation import _validate_metric_name

    from pluto.registry.lineage import eval_metrics

    rec = {"task": "crc", "metric": "balanced_accuracy", "mean": 0.8, "std": 0.01}
    names = eval_metrics({"score": 0.8, "records": [{**rec, "embedding_mode": "cls+mean"}]},
                         {"mean_rgb": [{**rec, "embedding_mode": "mean_rgb"}]})
    assert set(names) == {"suite_score", "crc.cls_mean.balanced_accuracy", "crc.cls_mean.balanced_accuracy_std",
                          "baseline.mean_rgb.crc.mean_rgb.balanced_accuracy"}
    for name in names:
        _validate_metric_name(name)
