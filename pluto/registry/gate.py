"""Champion/challenger gate: a candidate replaces the champion only if it is not worse.

Rule (issue 7, DESIGN.md "Registry"): the two suite results must come from the same eval-suite
version; the candidate's suite score (mean of the headline metrics) must be >= the champion's;
and no task may drop by more than its margin, where the margin is never smaller than the seed
spread (the larger of the two models' across-seed std on that task) nor than `min_margin`.
A task the champion was scored on but the candidate was not counts as a block. Pure functions:
the registry calls `decide` and records the decision next to the model version.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pluto.errors import PlutoError


@dataclass(frozen=True)
class SuiteScores:
    """One model's evaluation summary: per task mean and across-seed std of the headline metric."""

    suite_version: str
    score: float
    task_means: dict[str, float] = field(default_factory=dict)
    task_stds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SuiteScores":
        return cls(
            suite_version=str(d["suite_version"]),
            score=float(d["score"]),
            task_means={k: float(v) for k, v in d.get("task_means", {}).items()},
            task_stds={k: float(v) for k, v in d.get("task_stds", {}).items()},
        )

    @classmethod
    def from_suite(cls, result: dict[str, Any]) -> "SuiteScores":
        """From `pluto.eval` `SuiteResult.to_dict()`: the headline record of each task, the same ones
        the suite score averages (segmentation tasks count through their patch-token record)."""
        from pluto.eval.records import EvalRecord, headline_records

        mode = result.get("headline_mode", "cls")
        try:
            records = headline_records([EvalRecord.from_dict(r) for r in result["records"]], mode)
        except (KeyError, TypeError, AttributeError) as exc:
            raise PlutoError(f"suite result is not a pluto.eval SuiteResult (write it with `pluto evaluate`): {exc!r}") from exc
        versions = {r.suite_version for r in records}
        if len(versions) != 1:
            raise ValueError(f"suite result mixes eval-suite versions {sorted(versions)}")
        return cls(
            suite_version=versions.pop(), score=float(result["score"]),
            task_means={r.task: float(r.mean) for r in records},
            task_stds={r.task: float(r.std) for r in records},
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: tuple[str, ...]  # why it was blocked; empty when promoted
    summary: str

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": list(self.reasons), "summary": self.summary}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GateDecision":
        return cls(promote=bool(d["promote"]), reasons=tuple(d["reasons"]), summary=str(d["summary"]))


def task_margin(task: str, candidate: SuiteScores, champion: SuiteScores, min_margin: float) -> float:
    """Allowed drop on one task: max(min_margin, seed spread of either model on that task)."""
    spread = max(candidate.task_stds.get(task, 0.0), champion.task_stds.get(task, 0.0))
    return max(min_margin, spread)


def decide(candidate: SuiteScores, champion: SuiteScores | None, min_margin: float) -> GateDecision:
    """Promote `candidate` over `champion` (None: no champion yet, promote)?"""
    if champion is None:
        return GateDecision(True, (), f"no champion yet; candidate suite score {candidate.score:.4f}")
    if candidate.suite_version != champion.suite_version:
        reason = f"eval-suite version {candidate.suite_version!r} differs from the champion's {champion.suite_version!r}"
        return GateDecision(False, (reason,), "not comparable: " + reason)
    reasons = []
    if candidate.score < champion.score:
        reasons.append(f"suite score {candidate.score:.4f} < champion {champion.score:.4f}")
    for task, champ_mean in sorted(champion.task_means.items()):
        if task not in candidate.task_means:
            reasons.append(f"task {task}: not evaluated for the candidate")
            continue
        drop = champ_mean - candidate.task_means[task]
        margin = task_margin(task, candidate, champion, min_margin)
        if drop > margin:
            reasons.append(f"task {task}: drop {drop:.4f} > margin {margin:.4f}")
    summary = f"candidate {candidate.score:.4f} vs champion {champion.score:.4f}"
    return GateDecision(not reasons, tuple(reasons), summary)
