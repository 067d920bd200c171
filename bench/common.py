"""Shared benchmark plumbing: the machine record and the README section writer."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "bench" / "README.md"


def write_section(name: str, title: str, body: str, readme: Path = README) -> None:
    """Section between `<!-- name:start -->` and `<!-- name:end -->`, headed `## name: title`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = readme.read_text() if readme.is_file() else "# Benchmarks\n"
    section = f"{start}\n## {name}: {title}\n\n`python -m bench.{name}` (see its docstring).\n\n{body}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    readme.write_text(text)


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"node": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "git_sha": sha}


def seconds_per_call(fn, iters: int, device=None) -> float:
    """Wall seconds per call of `fn` over `iters` back-to-back calls; CUDA is synchronised around the loop."""
    import time

    def sync() -> None:
        if device is not None and getattr(device, "type", "cpu") == "cuda":
            import torch

            torch.cuda.synchronize(device)

    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def publish(name: str, title: str, result: dict, table: str, *, quick: bool, readme: bool) -> Path:
    """Write `bench/results/<name>[-quick]-<sha>.json`, the README section, and the table on stdout."""
    import json

    out = REPO / "bench" / "results" / f"{name}-{'quick-' if quick else ''}{result['machine']['git_sha']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if readme:
        write_section(name, title, table)
    print(table)  # noqa: T201 - a benchmark script reports on stdout
    return out
