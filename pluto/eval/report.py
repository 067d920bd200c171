"""The results table a person reads, written as CSV, JSON, HTML and PNG.

One row per (task, dataset, split, metric). Side by side: the model (one column per embedding
mode), the champion, the two baselines that say whether the model learned anything (the
random-init twin: same architecture, no training; mean-RGB: a probe on the mean colour), and one
column per source paper of published numbers. Nothing is silently absent: a baseline that did not
run says "not run", a champion measured under another protocol or eval-suite version says "not
comparable (protocol X / suite v)", and a paper whose numbers do not match says why (published.py).
Each value is mean ± std over n runs and names what varied between them (`extra["spread_over"]`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from pluto.atomic import write_with
from pluto.eval.published import SOURCES, published_for
from pluto.eval.records import EvalRecord

MODES_SHOWN = ("cls", "cls+mean", "patch_tokens")
BASELINE_LABELS = {"random_init": "random-init twin", "mean_rgb": "mean-RGB"}  # suite.evaluate_task's names
NOT_RUN, NO_CHAMPION = "not run", "no champion"
Key = tuple[str, str, str, str]


def _key(r: EvalRecord) -> Key:
    return r.task, r.dataset, r.split, r.metric


def _cell(r: EvalRecord) -> str:
    over = r.extra.get("spread_over")
    runs = f"n={len(r.values)}" + (f", over {over}" if over else "")
    return f"{r.mean:.3f} ± {r.std:.3f} ({runs})" if len(r.values) > 1 else f"{r.mean:.3f} ({runs})"


def _comparable(candidates: list[EvalRecord], ref: EvalRecord) -> EvalRecord | str:
    """The candidate measured like `ref` (same protocol and eval-suite version), else why none is."""
    same = [c for c in candidates if c.protocol == ref.protocol and c.suite_version == ref.suite_version]
    if same:
        return same[0]
    if candidates:
        c = candidates[0]
        return f"not comparable (protocol {c.protocol} / suite v{c.suite_version})"
    return NOT_RUN


def _shown(found: EvalRecord | str) -> str:
    return found if isinstance(found, str) else _cell(found)


def _published(mine: list[EvalRecord]) -> list[str]:
    """One cell per source paper: its comparable values, or the reason why not, per embedding mode of ours."""
    cells = []
    per_mode = [(r.embedding_mode, published_for(r)) for r in mine]
    for paper in SOURCES:
        texts = {mode: (pub[paper] if isinstance(pub[paper], str) else ", ".join(f"{m} {v:.3f}" for m, v in pub[paper].items()))
                 for mode, pub in per_mode}
        distinct = set(texts.values())
        cells.append(distinct.pop() if len(distinct) == 1 else "; ".join(f"[{m}] {t}" for m, t in texts.items()))
    return cells


def _champion_cell(champion: list[EvalRecord] | None, ref: EvalRecord) -> str:
    if champion is None:
        return NO_CHAMPION
    return _shown(_comparable([c for c in champion if _key(c) == _key(ref) and c.embedding_mode == ref.embedding_mode], ref))


def _baseline_names(baselines: dict[str, list[EvalRecord]]) -> list[str]:
    return list(BASELINE_LABELS) + [k for k in baselines if k not in BASELINE_LABELS]


def results_table(records: list[EvalRecord], baselines: dict[str, list[EvalRecord]] | None = None,
                  champion: list[EvalRecord] | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per (task, dataset, split, metric); model, champion, baselines and papers as columns."""
    baselines = baselines or {}
    keys = sorted({_key(r) for r in records})
    modes = [m for m in MODES_SHOWN if any(r.embedding_mode == m for r in records)]
    names = _baseline_names(baselines)
    header = ["task", "dataset", "split", "metric", "protocol", "suite version"]
    header += [f"model {m}" for m in modes] + [f"champion {m}" for m in modes]
    header += [f"baseline {BASELINE_LABELS.get(b, b)}" for b in names] + list(SOURCES.values())
    rows = []
    for key in keys:
        mine = [r for r in records if _key(r) == key]
        by_mode = {r.embedding_mode: r for r in mine}
        row = [*key, ",".join(sorted({r.protocol for r in mine})), ",".join(sorted({r.suite_version for r in mine}))]
        row += [_cell(by_mode[m]) if m in by_mode else "–" for m in modes]
        row += [_champion_cell(champion, by_mode[m]) if m in by_mode else "–" for m in modes]
        row += [_shown(_comparable([b for b in baselines.get(name, []) if _key(b) == key], mine[0])) for name in names]
        row += _published(mine)
        rows.append(row)
    return header, rows


def plot_series(records: list[EvalRecord], baselines: dict[str, list[EvalRecord]] | None = None,
                champion: list[EvalRecord] | None = None) -> dict[str, dict[str, EvalRecord | None]]:
    """Bars of the PNG: label -> {task: record, or None where it did not run or is not comparable}.
    The model per embedding mode; the champion and baselines matched to the model's headline record
    of each task (its CLS record, or its only mode)."""
    tasks = sorted({r.task for r in records})
    headline = {t: next((r for r in records if r.task == t and r.embedding_mode == "cls"),
                        next(r for r in records if r.task == t)) for t in tasks}

    def matched(candidates: list[EvalRecord], same_mode: bool) -> dict[str, EvalRecord | None]:
        out = {}
        for t, ref in headline.items():
            found = _comparable([c for c in candidates if _key(c) == _key(ref)
                                 and (not same_mode or c.embedding_mode == ref.embedding_mode)], ref)
            out[t] = None if isinstance(found, str) else found
        return out

    series = {f"model {m}": {t: next((r for r in records if r.task == t and r.embedding_mode == m), None) for t in tasks}
              for m in MODES_SHOWN if any(r.embedding_mode == m for r in records)}
    if champion is not None:
        series["champion"] = matched(champion, same_mode=True)
    for name in _baseline_names(baselines or {}):
        series[BASELINE_LABELS.get(name, name)] = matched((baselines or {}).get(name, []), same_mode=False)
    return series


def draw_results(series: dict[str, dict[str, EvalRecord | None]]):
    """A grouped bar chart (mean ± std) of `plot_series`; a missing bar is marked "not run / n.c." in place."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for by_task in series.values() for t in by_task})
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(tasks) * len(series) + 2), 3.8))
    lowest = 0.0
    for j, (label, by_task) in enumerate(series.items()):
        xs = np.arange(len(tasks)) + j * width
        means = [by_task[t].mean if by_task.get(t) else np.nan for t in tasks]
        stds = [by_task[t].std if by_task.get(t) else 0.0 for t in tasks]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=label)
        for x, m in zip(xs, means):
            if np.isnan(m):
                ax.text(x, 0.02, "not run / n.c.", rotation=90, ha="center", va="bottom", fontsize=6)
        lowest = min(lowest, np.nanmin(means + [0.0]))
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks)
    ax.set_ylabel("headline metric (mean ± std over runs)")
    ax.set_ylim(lowest - 0.05 if lowest < 0 else 0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_report(out_dir: Path, records: list[EvalRecord], baselines: dict[str, list[EvalRecord]] | None = None,
                 champion: list[EvalRecord] | None = None, title: str = "PLUTO evaluation") -> dict[str, Path]:
    """Write results.csv, records.json, results.html and results.png under `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header, rows = results_table(records, baselines, champion)
    paths = {k: out_dir / f"results.{k}" for k in ("csv", "html", "png")} | {"json": out_dir / "records.json"}

    def w_csv(p: Path) -> None:
        import csv

        with p.open("w", newline="") as f:
            csv.writer(f).writerows([header, *rows])

    every = {"model": [r.to_dict() for r in records], "champion": [r.to_dict() for r in champion or []],
             "baselines": {k: [r.to_dict() for r in v] for k, v in (baselines or {}).items()}}
    write_with(paths["csv"], w_csv)
    write_with(paths["json"], lambda p: p.write_text(json.dumps(every, indent=2)))
    write_with(paths["html"], lambda p: p.write_text(_html(title, header, rows)))

    def w_png(p: Path) -> None:
        import matplotlib.pyplot as plt

        fig = draw_results(plot_series(records, baselines, champion))
        fig.savefig(p, format="png", dpi=120)
        plt.close(fig)

    write_with(paths["png"], w_png)
    return paths


def _html(title: str, header: list[str], rows: list[list[str]]) -> str:
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px 8px}table{border-collapse:collapse}</style>"
            f"<h1>{html.escape(title)}</h1><p>Each value: mean ± sample std over n runs, and what varied between "
            "the runs (seeds, folds or a bootstrap); n=1 has no spread. The champion and the baselines are shown "
            "only when measured under the same protocol and eval-suite version as the model. Published numbers "
            "appear only where dataset, split, protocol, embedding and a complete copy all match; otherwise the "
            "cell says why.</p><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{body}</table>")
