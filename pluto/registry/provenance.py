"""Where a run came from: the code version (git sha) recorded on every MLflow run and model version."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_sha(repo: Path = REPO_ROOT) -> str:
    """`<sha>` of HEAD, `<sha>-dirty` when tracked files differ from it; outside a git checkout (the
    cluster image has no .git) the `PLUTO_GIT_SHA` the image was built with, else `unknown`."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--"], cwd=repo, capture_output=True, timeout=30
        ).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("PLUTO_GIT_SHA") or "unknown"
    return f"{sha}-dirty" if dirty else sha
