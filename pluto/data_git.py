"""Opt-in git history for data versions: commit `data.dvc` and tag it, as DVC users version data.

With `chain.data_git` on, the DVC project (the work dir) is also a git repository that tracks only
the DVC metadata (`data.dvc`, `.dvc/config`, the ignore files); every new data version is a commit
tagged `data/<md5[:8]>`, a promoted model version is tagged `model/<name>/v<N>` at the commit of
its data, and with `chain.data_git_remote` set the tags are pushed there. That makes each version
reachable by DVC's own tools: `dvc get <repo> data --rev data/<md5[:8]>`, `dvc import ... --rev`.
Git runs as a subprocess (no git library), with the repository's own identity settings or, when it
has none, a fixed pluto identity so a commit never fails on a bare machine.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from pluto.errors import PlutoError

log = logging.getLogger(__name__)

# git tracks the DVC metadata only: everything else in the work dir (tables, tiles, stores) stays out
GITIGNORE = "/*\n!/.gitignore\n!/.dvcignore\n!/data.dvc\n!/.dvc/\n/.dvc/*\n!/.dvc/config\n"
IDENTITY = ("-c", "user.name=pluto", "-c", "user.email=pluto@localhost")


def _git(repo: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *IDENTITY, "-C", str(repo), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise PlutoError(f"{repo}: git {' '.join(args)} failed: {proc.stderr.strip()[:500]}")
    return proc.stdout.strip()


def data_tag(md5: str) -> str:
    return f"data/{md5.removesuffix('.dir')[:8]}"


def model_tag(name: str, version: int) -> str:
    return f"model/{name}/v{version}"


def commit_version(repo: Path, md5: str, remote: str | None = None) -> str:
    """Commit `data.dvc` (and the DVC config) and tag it `data/<md5[:8]>`; returns the tag. Idempotent."""
    repo = Path(repo).resolve()
    if not (repo / ".git").exists():
        _git(repo, "init", "-q")
    ignore = repo / ".gitignore"
    if not ignore.is_file() or ignore.read_text() != GITIGNORE:
        ignore.write_text(GITIGNORE)
    _git(repo, "add", "-A")
    if _git(repo, "status", "--porcelain"):
        _git(repo, "commit", "-q", "-m", f"data {md5}")
    tag = data_tag(md5)
    if not _git(repo, "tag", "--list", tag):
        _git(repo, "tag", tag)
    elif _git(repo, "rev-list", "-n1", tag) != _git(repo, "rev-parse", "HEAD") and _data_md5_at(repo, tag) != md5:
        raise PlutoError(f"{repo}: tag {tag} names other data than {md5} (an 8-hex prefix clash); rename one tag by hand")
    if remote:
        _git(repo, "push", "-q", remote, "HEAD", tag)
    log.info("data version %s committed in git as %s", md5, tag)
    return tag


def _data_md5_at(repo: Path, rev: str) -> str:
    import yaml

    return yaml.safe_load(_git(repo, "show", f"{rev}:data.dvc"))["outs"][0]["md5"]


def tag_model_version(repo: Path, name: str, version: int, md5: str, remote: str | None = None) -> str:
    """Tag the commit of `md5`'s data as `model/<name>/v<N>` (on promotion); returns the tag."""
    repo = Path(repo).resolve()
    target = data_tag(md5)
    if not _git(repo, "tag", "--list", target, check=False):
        raise PlutoError(f"{repo}: no git tag {target} for data {md5}; was chain.data_git on when it was versioned?")
    tag = model_tag(name, version)
    _git(repo, "tag", "-f", tag, target)
    if remote:
        _git(repo, "push", "-q", "-f", remote, tag)
    return tag
