"""Shared benchmark plumbing: the machine record and the README section writer."""

from __future__ import annotations

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
    return {"node": platform.node(), "cpu": cpu, "python": platform.python_version(), "git_sha": sha}
