"""Containment of user-supplied paths: one check for every place a name or path resolves under a root.

A slide listing, a labels.csv row, a benchmark annotation or a checkout reference can name `..`,
an absolute path, or a symlink that leads out of the folder it belongs to. `safe_join` resolves
the path as the OS would open it (symlinks followed) and refuses anything that lands outside.
"""

from __future__ import annotations

from pathlib import Path

from pluto.errors import PlutoError


class PathEscapeError(PlutoError):
    """A path that resolves outside the root it must stay under."""

    def __init__(self, root: Path, relative: str | Path, resolved: Path) -> None:
        self.root, self.relative, self.resolved = Path(root), str(relative), Path(resolved)
        super().__init__(f"{self.relative}: resolves to {self.resolved}, outside {self.root}")


def safe_join(root: str | Path, relative: str | Path) -> Path:
    """`root / relative` fully resolved (symlinks followed, `..` collapsed); PathEscapeError unless
    it is `root` itself or below it. An absolute `relative` is accepted only when it lands inside."""
    base = Path(root).resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise PathEscapeError(base, relative, path)
    return path
