"""Replace (or append) one benchmark's marked section of bench/README.md, leaving the others untouched."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"


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
