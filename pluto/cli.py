"""`pluto` command: one sub-command per stage, calling the same library functions as the flows.

Settings resolve as defaults < --config file < PLUTO_* environment < flags.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from pluto.config import Settings, load_settings
from pluto.errors import PlutoError

app = typer.Typer(help="PLUTO platform: slides -> QC -> tiles -> pretraining -> evaluation -> registry.", no_args_is_help=True)
console = Console(stderr=True)


@app.callback()
def _main(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Settings file (.yaml/.toml)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    ctx.obj = {"config": config}


def settings_from(ctx: typer.Context, **overrides) -> Settings:
    """Resolve settings for a command: its flags are the highest-precedence overrides."""
    clean = {k: v for k, v in overrides.items() if v is not None and v != {}}
    return load_settings(ctx.obj.get("config") if ctx.obj else None, **clean)


@app.command("config")
def show_config(ctx: typer.Context) -> None:
    """Print the resolved settings (defaults < file < env)."""
    typer.echo(settings_from(ctx).model_dump_json(indent=2))


def main() -> None:
    try:
        app()
    except PlutoError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
