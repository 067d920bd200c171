"""Champion/challenger gate: a candidate replaces the champion only if it is not worse.

Rule (issue 7, DESIGN.md "Registry"): the two suite results must be comparable: the same eval-suite
version and, task by task, the same protocol (else the decision is "not comparable", never a pass or
fail on numbers); the candidate's suite score (mean of the headline metrics) must be >= the
champion's; and no task may drop by more than its margin. The margin is the honest spread (the
larger across-run std of the two models on that task, over whatever their runs vary: seeds, folds,
bootstrap) and never smaller than `min_margin`; a task where neither model has more than one run has
no spread, and its margin is `min_margin`, said so in the decision. A task the champion was scored on
but the candidate was not counts as a block. Every decision carries a table (candidate, champion,
random-init twin, mean RGB, margin, verdict per task). Whatever the champion, a candidate that does
not beat its own random-init twin (pluto.registry.floor: paired over the same runs, > 2 SE) is
registered but not promoted, with the reason on the version. Pure functions: the registry calls
`decide` and records the decision next to the model version.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pluto.errors import PlutoError
from pluto.registry.floor import check_floor

BASELINES_SHOWN = ("random_init", "mean_rgb")


@dataclass(frozen=True)
class SuiteScores:
    """One model's evaluation summary, per task: mean, across-run std and run count of the headline
    metric, its protocol, and what the runs vary; plus the baselines' task means (name -> task -> mean)."""

    suite_version: str
    score: float
    task_means: dict[str, float] = field(default_factory=dict)
    task_stds: dict[str, float] = field(default_factory=dict)
    task_n: dict[str, int] = field(default_factory=dict)  # runs behind the mean; absent = unknown (std taken as given)
    task_protocols: dict[str, str] = field(default_factory=dict)  # "linear_probe/quick [cls]"; absent = unknown
    spread_over: dict[str, str] = field(default_factory=dict)  # "seeds" | "folds" | "bootstrap" | "patient folds"
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    floor: dict[str, Any] = field(default_factory=dict)  # pluto.registry.floor.FloorCheck as a dict; empty = not computed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SuiteScores":
        return cls(
            suite_version=str(d["suite_version"]),
            score=float(d["score"]),
            task_means={k: float(v) for k, v in d.get("task_means", {}).items()},
            task_stds={k: float(v) for k, v in d.get("task_stds", {}).items()},
            task_n={k: int(v) for k, v in d.get("task_n", {}).items()},
            task_protocols={k: str(v) for k, v in d.get("task_protocols", {}).items()},
            spread_over={k: str(v) for k, v in d.get("spread_over", {}).items()},
            baselines={b: {k: float(v) for k, v in t.items()} for b, t in d.get("baselines", {}).items()},
            floor=dict(d.get("floor", {})),
        )

    @classmethod
    def from_suite(cls, result: dict[str, Any]) -> "SuiteScores":
        """From `pluto.eval` `SuiteResult.to_dict()`: the headline record of each task, the same ones
        the suite score averages (segmentation tasks count through their patch-token record), and
        each baseline's record of the task."""
        from pluto.eval.records import EvalRecord, headline_records

        mode = result.get("headline_mode", "cls")
        try:
            records = headline_records([EvalRecord.from_dict(r) for r in result["records"]], mode)
            baselines = {name: [EvalRecord.from_dict(r) for r in recs] for name, recs in result.get("baselines", {}).items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise PlutoError(f"suite result is not a pluto.eval SuiteResult (write it with `pluto evaluate`): {exc!r}") from exc
        versions = {r.suite_version for r in records}
        if len(versions) != 1:
            raise ValueError(f"suite result mixes eval-suite versions {sorted(versions)}")
        return cls(
            suite_version=versions.pop(), score=float(result["score"]),
            task_means={r.task: float(r.mean) for r in records},
            task_stds={r.task: float(r.std) for r in records},
            task_n={r.task: len(r.values) for r in records},
            task_protocols={r.task: f"{r.protocol} [{r.embedding_mode}]" for r in records},
            spread_over={r.task: str(r.extra.get("spread_over", "seeds")) for r in records},
            baselines={name: {r.task: float(r.mean) for r in recs} for name, recs in baselines.items()},
            floor=check_floor(result).to_dict(),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: tuple[str, ...]  # why it was blocked (or why the two are not comparable); empty when promoted
    summary: str
    comparable: bool = True  # False: another suite version or protocol; no verdict on the numbers
    table: tuple[dict[str, str], ...] = ()  # one row per task: candidate, champion, baselines, margin, verdict

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": list(self.reasons), "summary": self.summary,
                "comparable": self.comparable, "table": [dict(r) for r in self.table]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GateDecision":
        return cls(promote=bool(d["promote"]), reasons=tuple(d["reasons"]), summary=str(d["summary"]),
                   comparable=bool(d.get("comparable", True)), table=tuple(dict(r) for r in d.get("table", ())))

    def markdown(self) -> str:
        """The table as Markdown (Prefect artifact, demo output)."""
        if not self.table:
            return ""
        cols = list(self.table[0])
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        return "\n".join(lines + ["| " + " | ".join(r.get(c, "") for c in cols) + " |" for r in self.table])


def task_margin(task: str, candidate: SuiteScores, champion: SuiteScores, min_margin: float) -> tuple[float, str]:
    """Allowed drop on one task and where it comes from: the larger across-run std of the two models
    that have more than one run there (a single run has no spread), never below `min_margin`."""
    spreads = [(s.task_stds.get(task, 0.0), s.spread_over.get(task, "seeds")) for s in (candidate, champion)
               if s.task_n.get(task) is None or s.task_n[task] > 1]  # n not recorded (older scores): the std as given
    if not spreads:
        return min_margin, "min_margin: n = 1, no spread"
    std, over = max(spreads)
    if std < min_margin:
        return min_margin, f"min_margin; std over {over} {std:.4f} is smaller"
    return std, f"std over {over}"


def _not_comparable(candidate: SuiteScores, champion: SuiteScores) -> list[str]:
    if candidate.suite_version != champion.suite_version:
        return [f"eval-suite version {candidate.suite_version!r} differs from the champion's {champion.suite_version!r}"]
    return [f"task {t}: protocol {candidate.task_protocols[t]!r} differs from the champion's {p!r}"
            for t, p in sorted(champion.task_protocols.items())
            if t in candidate.task_protocols and candidate.task_protocols[t] != p]


def _cell(scores: SuiteScores | None, task: str) -> str:
    if scores is None or task not in scores.task_means:
        return "–"
    n = scores.task_n.get(task)
    return f"{scores.task_means[task]:.3f} ± {scores.task_stds.get(task, 0.0):.3f}" + (f" (n={n})" if n else "")


def _row(task: str, candidate: SuiteScores, champion: SuiteScores | None, margin: str, verdict: str) -> dict[str, str]:
    row = {"task": task, "candidate": _cell(candidate, task), "champion": _cell(champion, task)}
    for name in BASELINES_SHOWN:
        mean = candidate.baselines.get(name, {}).get(task)
        row[name.replace("_", " ")] = "–" if mean is None else f"{mean:.3f}"
    return row | {"margin": margin, "verdict": verdict}


def _floor(candidate: SuiteScores, enforce: bool) -> tuple[list[str], str]:
    """(blocking reasons, note for the summary) of the candidate's quality floor."""
    if not enforce:
        return [], "quality floor off (chain.quality_floor)"
    if not candidate.floor:
        return [], "quality floor not computed"
    reason = f"quality floor: {candidate.floor['reason']}"
    return ([reason] if candidate.floor["passed"] is False else []), reason


def decide(candidate: SuiteScores, champion: SuiteScores | None, min_margin: float, floor: bool = True) -> GateDecision:
    """Promote `candidate` over `champion` (None: no champion yet)? Either way it must clear its quality floor
    (`floor=False`: reported as off, for smoke runs whose few steps leave the model at random init by design)."""
    floor_block, floor_note = _floor(candidate, floor)
    if champion is None:
        table = tuple(_row(t, candidate, None, "–", "no champion") for t in sorted(candidate.task_means))
        summary = f"no champion yet; candidate suite score {candidate.score:.4f}; {floor_note}"
        return GateDecision(not floor_block, tuple(floor_block), summary, table=table)
    tasks = sorted(set(champion.task_means) | set(candidate.task_means))
    why_not = _not_comparable(candidate, champion)
    if why_not:
        table = tuple(_row(t, candidate, champion, "–", "not comparable") for t in tasks)
        return GateDecision(False, tuple(why_not), "not comparable: " + "; ".join(why_not), comparable=False, table=table)
    reasons, rows, no_spread = list(floor_block), [], []
    if candidate.score < champion.score:
        reasons.append(f"suite score {candidate.score:.4f} < champion {champion.score:.4f}")
    for task in tasks:
        if task not in champion.task_means:
            rows.append(_row(task, candidate, champion, "–", "new task"))
            continue
        if task not in candidate.task_means:
            reasons.append(f"task {task}: not evaluated for the candidate")
            rows.append(_row(task, candidate, champion, "–", "not evaluated"))
            continue
        drop = champion.task_means[task] - candidate.task_means[task]
        margin, source = task_margin(task, candidate, champion, min_margin)
        no_spread += [task] if source.startswith("min_margin: n = 1") else []
        blocked = drop > margin
        if blocked:
            reasons.append(f"task {task}: drop {drop:.4f} > margin {margin:.4f} ({source})")
        rows.append(_row(task, candidate, champion, f"{margin:.4f} ({source})", f"drop {drop:.4f}: " + ("block" if blocked else "ok")))
    summary = f"candidate {candidate.score:.4f} vs champion {champion.score:.4f}"
    if no_spread:
        summary += f"; no spread (n = 1) on {', '.join(no_spread)}: margin min_margin {min_margin:.4f} there"
    summary += f"; {floor_note}"
    return GateDecision(not reasons, tuple(reasons), summary, table=tuple(rows))
