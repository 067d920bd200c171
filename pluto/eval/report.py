"""The results table a person reads: task x metric rows, CLS vs CLS+mean columns, mean ± std over seeds,
baselines, the current champion and comparable published numbers; written as CSV, JSON, HTML and PNG.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from pluto.atomic import write_with
from pluto.eval.published import published_for
from pluto.eval.records import EvalRecord

MODES_SHOWN = ("cls", "cls+mean", "patch_tokens")


def _cell(recs: list[EvalRecord]) -> str:
    return f"{recs[0].mean:.3f} ± {recs[0].std:.3f} (n={len(recs[0].values)})" if recs else "–"


def results_table(records: list[EvalRecord], baselines: dict[str, list[EvalRecord]] | None = None,
                  champion: list[EvalRecord] | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per (task, dataset, split, metric); columns per embedding mode and comparison."""
    baselines, champion = baselines or {}, champion or []
    keys = sorted({(r.task, r.dataset, r.split, r.metric) for r in records})
    modes = [m for m in MODES_SHOWN if any(r.embedding_mode == m for r in records)]
    header = ["task", "dataset", "split", "metric", "protocol"] + [f"model {m}" for m in modes]
    header += [f"champion {m}" for m in modes] if champion else []
    header += [f"baseline {b}" for b in baselines] + ["published (same protocol)"]
    rows = []
    for key in keys:
        same = lambda rs, m=None: [r for r in rs if (r.task, r.dataset, r.split, r.metric) == key and (m is None or r.embedding_mode == m)]  # noqa: E731
        mine = same(records)
        row = [*key, ",".join(sorted({r.protocol for r in mine}))]
        row += [_cell(same(records, m)) for m in modes]
        row += [_cell(same(champion, m)) for m in modes] if champion else []
        row += [_cell(same(b)) for b in baselines.values()]
        pub = {f"{name} [{r.embedding_mode}]": v for r in mine for name, v in published_for(r.dataset, r.embedding_mode, r.protocol).items()}
        row.append("; ".join(f"{k}: {v:.3f}" for k, v in sorted(pub.items())) or "–")
        rows.append(row)
    return header, rows


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
    spread = max((r.std for r in records), default=0.0)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px 8px}table{border-collapse:collapse}</style>"
            f"<h1>{html.escape(title)}</h1><p>mean ± std over seeds (sample std); largest seed spread {spread:.3f}. "
            "Published numbers appear only where our protocol matches theirs (EVA / HEST ridge).</p>"
            "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{body}</table>")
    write_with(paths["html"], lambda p: p.write_text(page))
    write_with(paths["png"], lambda p: _plot(p, records, baselines or {}, champion or []))
    return paths


def _plot(path: Path, records, baselines, champion) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {f"model {m}": [r for r in records if r.embedding_mode == m] for m in MODES_SHOWN}
    series |= {"champion": [r for r in champion if r.embedding_mode == "cls"]} if champion else {}
    series |= {f"baseline {k}": v for k, v in baselines.items()}
    series = {k: v for k, v in series.items() if v}
    tasks = sorted({r.task for r in records})
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(tasks) * max(1, len(series)) / 2), 3.6))
    width = 0.8 / max(1, len(series))
    for j, (name, recs) in enumerate(series.items()):
        by_task = {r.task: r for r in recs}
        xs = [i + j * width for i, t in enumerate(tasks) if t in by_task]
        ax.bar(xs, [by_task[t].mean for t in tasks if t in by_task], width,
               yerr=[by_task[t].std for t in tasks if t in by_task], capsize=3, label=name)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks)
    ax.set_ylabel("headline metric (mean ± std over seeds)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
