"""Code version of a pipeline stage, for its cache keys: a hash of the source it runs.

A stage's cached outputs must not outlive a fix to the code that made them, and nobody should have
to remember to bump a version constant. The version hashes every `.py` file of each `pluto` package
the stage's entry module imports, directly or through other pluto modules (imports inside
functions included), read from the source with `ast` (nothing is imported). A whole subpackage
counts as soon as one of its modules is imported, since packages re-export lazily
(`pluto.lazy_exports`) and a detector or reader may be picked by name; a top-level module
(`pluto.errors`) counts alone. Edits elsewhere (registry, training, flows, settings) leave the
version, and so the cache, alone. Computed once per process, like the modules it describes.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent  # the pluto package


def _unit(module: str) -> Path | None:
    """What counts for `module`: its subpackage's folder (pluto.a.b -> pluto/a/), or the file of a
    top-level module (pluto.errors -> pluto/errors.py, pluto -> pluto/__init__.py)."""
    parts = module.split(".")
    if parts[0] != "pluto":
        return None
    if len(parts) > 1 and (ROOT / parts[1]).is_dir():
        return ROOT / parts[1]
    if len(parts) > 1 and (ROOT / f"{parts[1]}.py").is_file():
        return ROOT / f"{parts[1]}.py"
    return ROOT / "__init__.py"


def _sources(unit: Path) -> list[Path]:
    return sorted(unit.rglob("*.py")) if unit.is_dir() else [unit]


def _imported_modules(path: Path) -> set[str]:
    """pluto modules named by the import statements of one source file (relative ones resolved)."""
    rel = path.relative_to(ROOT.parent).with_suffix("").parts
    package = rel[:-1]  # pluto/a/b.py and pluto/a/__init__.py both resolve relative imports in pluto.a
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = list(package[: len(package) - node.level + 1])
                base = ".".join([*parent, base] if base else parent)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == "pluto"}


def stage_sources(entry: str) -> list[Path]:
    """Every source file of the units (subpackages, top-level modules) `entry` reaches through imports."""
    todo, units = [entry], set[Path]()
    while todo:
        unit = _unit(todo.pop())
        if unit is None or unit in units:
            continue
        units.add(unit)
        for path in _sources(unit):
            todo.extend(_imported_modules(path))
    return sorted(p for u in units for p in _sources(u))


@lru_cache(maxsize=None)
def code_version(entry: str) -> str:
    """16-hex hash of the sources of the packages `entry` (a dotted pluto module) reaches."""
    h = hashlib.sha256()
    for path in stage_sources(entry):
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]
