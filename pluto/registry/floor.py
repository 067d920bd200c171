"""Quality floor: a challenger must beat its own random-init twin before it can be promoted.

A pretrained encoder that does not beat the same architecture at step 0 learned nothing the gate
should reward (issue 12). The test is paired: the twin is probed on the very same folds/seeds as
the model (`pluto.eval.suite.evaluate_task`), so per run d_s = model_s - twin_s, averaged over the
tasks both were scored on, and the floor holds when mean(d) > 2 standard errors.

The runs of a pooled cross-validation record re-deal the folds of one data set, so they are
correlated and the plain SE understates the spread; those records use the corrected repeated k-fold
test (Nadeau & Bengio 2003, "Inference for the generalization error", Machine Learning 52:239-281;
Bouckaert & Frank 2004): on per-fold values SE^2 = var_fold * (1/(J k) + n_test/n_train), with
n_test/n_train = 1/t, t the folds that train (the record's `train_folds`: k - 1 for the quick probe,
k - 2 where a fold is held out for validation). A pooled run is about the mean of its k folds
(var_fold ~ k var(d)), so on the J pooled values SE^2 = var(d) * (1/J + k/t); over several tasks the
largest such inflation is used.
Records on a fixed split (runs vary the seed or a bootstrap resample) use the plain SE.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

FLOOR_SIGMAS = 2.0
TWIN = "random_init"


@dataclass(frozen=True)
class FloorCheck:
    """`passed` None: not checked (no twin scored on the same runs); the reason says why."""

    passed: bool | None
    diff_mean: float
    diff_se: float
    n: int
    tasks: tuple[str, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tasks": list(self.tasks)}  # JSON's shape, so it round-trips through a version tag


def _paired(result: dict[str, Any]) -> tuple[list[str], np.ndarray, float]:
    """Tasks, (tasks, runs) differences model - twin on the headline records, and the variance inflation."""
    from pluto.eval.records import EvalRecord, headline_records

    mode = result.get("headline_mode", "cls")
    model = {r.task: r for r in headline_records([EvalRecord.from_dict(r) for r in result["records"]], mode)}
    twin = {r.task: r for r in (EvalRecord.from_dict(d) for d in result.get("baselines", {}).get(TWIN, []))}
    tasks = sorted(t for t in model if t in twin and model[t].seeds == twin[t].seeds)
    if not tasks:
        return [], np.zeros((0, 0)), 1.0
    diffs = np.array([np.subtract(model[t].values, twin[t].values) for t in tasks])
    n = diffs.shape[1]
    terms = [1.0]  # plain SE: runs that vary a seed or a bootstrap resample
    for t in tasks:
        k = int(model[t].extra.get("folds", 0))
        if model[t].extra.get("spread_over") == "folds" and k > 1:
            train = int(model[t].extra.get("train_folds", k - 1))  # records written before train_folds: k - 1
            terms.append((1 / n + k / train) * n)
    return tasks, diffs, max(terms)  # the most correlated task's inflation, a conservative bound on their mean


def check_floor(result: dict[str, Any], sigmas: float = FLOOR_SIGMAS) -> FloorCheck:
    """Does the model of a `SuiteResult.to_dict()` beat its random-init twin by > `sigmas` SE, paired per run?"""
    tasks, diffs, inflation = _paired(result)
    if not tasks:
        return FloorCheck(None, math.nan, math.nan, 0, (), "not checked: no random-init twin scored on the same runs "
                          "(eval.baselines is off, or the twin ran other seeds)")
    per_run = diffs.mean(axis=0)  # suite-level difference per run: mean over tasks
    n = per_run.size
    mean = float(per_run.mean())
    if n < 2:
        return FloorCheck(None, mean, math.nan, n, tuple(tasks), f"not checked: one run per task, no spread (diff {mean:+.4f})")
    se = float(np.std(per_run, ddof=1) * math.sqrt(inflation / n))
    passed = mean > sigmas * se
    verb = "beats" if passed else "does not beat"
    reason = (f"{verb} its random-init twin: paired difference {mean:+.4f} ± {se:.4f} SE over {n} runs on "
              f"{', '.join(tasks)} (floor: > {sigmas:g} SE)")
    return FloorCheck(passed, mean, se, n, tuple(tasks), reason)
