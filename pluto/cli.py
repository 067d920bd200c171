"""`pluto` command: one sub-command per stage, calling the same library functions as the flows.

Settings resolve as defaults < --config file < PLUTO_* environment < flags.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from pluto.config import Settings, load_settings
from pluto.errors import PlutoError
from pluto.services import PREFECT_PORT

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
    from pluto.slides.handles import configure_slide_access

    clean = {k: v for k, v in overrides.items() if v is not None and v != {}}
    s = load_settings(ctx.obj.get("config") if ctx.obj else None, **clean)
    configure_slide_access(s.slides.handle_pool_size, s.slides.tile_cache_mib)
    return s


@app.command("config")
def show_config(
    ctx: typer.Context,
    recipe: bool = typer.Option(False, "--recipe", help="Show train.arch's resolved recipe: field, value, source (or the explicit override)."),
) -> None:
    """Print the resolved settings (defaults < train.arch's recipe < file < env)."""
    s = settings_from(ctx)
    if not recipe:
        typer.echo(s.model_dump_json(indent=2))
        return
    from pluto.train.recipes import describe

    rows = [(r["field"], json.dumps(r["value"]), r["source"]) for r in describe(s.train)]
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    typer.echo(f"recipe of {s.train.arch}:")
    for field, value, source in rows:
        typer.echo(f"{field.ljust(width[0])}  {value.ljust(width[1])}  {source}")


@app.command("tile")
def tile(
    ctx: typer.Context,
    work: Optional[Path] = typer.Option(None, "--work", help="Work dir: reads catalog.parquet and qc/, writes tiles/."),
    mode: Optional[str] = typer.Option(None, "--mode", help="grid (every QC-passing tile) or sample (PLUTO-4 regions)."),
    mpp: Optional[list[float]] = typer.Option(None, "--mpp", help="Target um/px; repeat for several."),
    tile_px: Optional[list[int]] = typer.Option(None, "--tile-px", help="Output tile size in px; repeat for several."),
    regions_per_slide: Optional[int] = typer.Option(None, "--regions-per-slide", help="Sample mode: regions per slide."),
    min_tissue: Optional[float] = typer.Option(None, "--min-tissue", help="Minimum tissue fraction of a tile."),
    shard_rows: Optional[int] = typer.Option(None, "--shard-rows", help="Rows per manifest shard."),
) -> None:
    """Tile QC-passing tissue at each target um/px into a sharded coordinate manifest (DIR/tiles)."""
    from rich.progress import Progress

    from pluto.tiling import tile_cohort

    flags = {"mode": mode, "mpps": mpp or None, "tile_pxs": tile_px or None, "regions_per_slide": regions_per_slide,
             "min_tissue": min_tissue, "shard_rows": shard_rows}
    s = settings_from(ctx, paths={"work_dir": work} if work else None,
                      tiling={k: v for k, v in flags.items() if v is not None})
    t = s.tiling
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("tiling slides", total=None)
        summary = tile_cohort(
            s.paths.catalog, s.paths.qc_dir, s.paths.tiles_dir, mpps=t.mpps, tile_pxs=t.tile_pxs, mode=t.mode,
            regions_per_slide=t.regions_per_slide, min_tissue=t.min_tissue, max_pen=t.max_pen, max_fold=t.max_fold,
            max_bubble=t.max_bubble, shard_rows=t.shard_rows, seed=s.seed, rel_tol=s.slides.mpp_rel_tol,
            pixel_filters=t.pixel_filters, qc_params=s.qc,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    per_spec = summary.groupby(["mpp", "tile_px"])["n_tiles"].sum()
    for (spec_mpp, spec_px), n in per_spec.items():
        typer.echo(f"{spec_mpp:g} um/px x {spec_px} px: {n} tiles")
    flagged = summary.loc[summary["slide_status"] != "ok", ["slide_id", "slide_status"]].drop_duplicates()
    for rec in flagged.itertuples():
        typer.echo(f"flagged {rec.slide_id[:12]}: {rec.slide_status}")
    typer.echo(f"manifest: {s.paths.tiles_dir}")


@app.command("ingest")
def ingest_cmd(
    ctx: typer.Context,
    src: str = typer.Argument(..., help="Folder of slides or s3://bucket/prefix."),
    out: Optional[Path] = typer.Option(None, "--out", help="Work dir: writes catalog.parquet (and cache/ for S3)."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="csv: slide (file name or slide_id), patient, site, organ, stain, scanner."),
    mpp_overrides: Optional[Path] = typer.Option(None, "--mpp-overrides", help="csv: slide (file name or slide_id), mpp."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Files processed in parallel."),
) -> None:
    """Catalog every file under SRC; bad files are quarantined with a reason (exit 0 when the batch finished)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pluto.slides import ingest

    s = settings_from(
        ctx,
        paths={"work_dir": out} if out else None,
        slides={"mpp_overrides_csv": mpp_overrides} if mpp_overrides else None,
        ingest={k: v for k, v in {"metadata_csv": metadata, "workers": workers}.items() if v is not None},
    )
    columns = (TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"))
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("", total=None)
        catalog = ingest(
            src, s.paths.work_dir, workers=s.ingest.workers, metadata_csv=s.ingest.metadata_csv,
            mpp_overrides_csv=s.slides.mpp_overrides_csv, default_stain=s.ingest.default_stain,
            mpp_range=(s.slides.mpp_min, s.slides.mpp_max), max_dimension_px=s.slides.max_dimension_px,
            s3_endpoint_url=s.s3.endpoint_url, s3_region=s.s3.region, s3_retries=s.s3.retries,
            s3_cache_max_bytes=s.s3.cache_max_bytes,
            on_progress=lambda done, total, name: progress.update(task, completed=done, total=total, description=name),
        )
    reasons = catalog.loc[catalog["status"] != "ok", "reason"].value_counts()
    quarantined = ", ".join(f"{n} {r}" for r, n in reasons.items())
    typer.echo(
        f"{len(catalog)} files: {len(catalog) - int(reasons.sum())} ok, {int(reasons.sum())} quarantined"
        f"{f' ({quarantined})' if quarantined else ''} -> {s.paths.catalog}"
    )


@app.command("qc")
def qc_cmd(
    ctx: typer.Context,
    work: Optional[Path] = typer.Option(None, "--work", help="Work dir: reads catalog.parquet, writes qc/."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Slides processed in parallel."),
    detector: Optional[str] = typer.Option(None, "--detector", help="Artifact detector, 'package.module:callable'."),
) -> None:
    """Tissue masks, artifact masks and per-cell QC scores for every ok slide (DIR/qc)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pluto.qc import run_qc

    s = settings_from(ctx, paths={"work_dir": work} if work else None,
                      qc={k: v for k, v in {"workers": workers, "detector": detector}.items() if v is not None})
    columns = (TextColumn("qc"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("", total=None)
        summary = run_qc(s.paths.catalog, s.paths.qc_dir, params=s.qc, mpp_range=(s.slides.mpp_min, s.slides.mpp_max),
                         on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    for rec in summary[summary["status"] != "ok"].itertuples():
        typer.echo(f"flagged {rec.slide_id[:12]}: {rec.status} ({rec.detail})")
    typer.echo(f"{len(summary)} slides QC'd, {int((summary['status'] != 'ok').sum())} flagged, "
               f"{int(summary['n_keep'].sum())} cells kept -> {s.paths.qc_dir}")


@app.command("report")
def report_cmd(
    ctx: typer.Context,
    work: Optional[Path] = typer.Option(None, "--work", help="Work dir: reads qc/ and catalog.parquet, writes qc/report.html."),
) -> None:
    """Write the cohort QC report (self-contained HTML) and print its path."""
    from pluto.qc import write_report

    s = settings_from(ctx, paths={"work_dir": work} if work else None)
    typer.echo(str(write_report(s.paths.qc_dir, s.paths.catalog)))


@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help="Architecture NAME (random init), CHECKPOINT_DIR (save_model) or models:/URI."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of images (with --labels)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="labels.csv: filename,label[,split]; no split -> stratified folds."),
    suite: Optional[Path] = typer.Option(None, "--suite", help="Suite file (JSON/YAML list of tasks: dataset, root, split, protocol)."),
    out: Path = typer.Option(..., "--out", help="Output folder: results.html/.png/.csv and records.json."),
    preset: Optional[str] = typer.Option(None, "--preset", help="quick (L-BFGS logistic regression) or eva (AdamW, 12,500 steps)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Number of seeds (default: the preset's)."),
    champion: Optional[Path] = typer.Option(None, "--champion", help="records.json of the current champion, shown beside."),
) -> None:
    """Evaluate a frozen encoder on a suite file or one labeled image folder; print and write the results table."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from pluto.eval.suite import evaluate_inputs

    s = settings_from(ctx, eval={k: v for k, v in {"preset": preset, "device": device, "n_seeds": seeds}.items() if v is not None})
    with Progress(TextColumn("embeddings"), BarColumn(), MofNCompleteColumn(), console=console, transient=True) as progress:
        task = progress.add_task("", total=None)
        result = evaluate_inputs(model, out, s.eval, suite, images, labels, champion,
                                 on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    _echo_table(out / "results.csv")
    typer.echo(f"score {result.score:.3f} -> {out / 'results.html'}")


def _echo_table(results_csv: Path) -> None:
    """The results table exactly as in results.csv (model, champion, random-init and mean-RGB baselines), aligned."""
    import csv

    with results_csv.open(newline="") as f:
        rows = list(csv.reader(f))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@app.command("pretrain")
def pretrain_cmd(
    ctx: typer.Context,
    work: Optional[Path] = typer.Option(None, "--work", help="Work dir: data from WORK/tiles, run (checkpoints, metrics, export) in WORK/train."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (schedules span them)."),
    launcher: str = typer.Option("local", "--launcher", help="local (torchrun here) | slurm (sbatch) | kubeflow (PyTorchJob)."),
    nproc: int = typer.Option(1, "--nproc", help="Local processes (ranks) for --launcher local."),
    data: Optional[Path] = typer.Option(None, "--data", help="Tile manifest dir, or an image folder with --data-kind images."),
    data_kind: Optional[str] = typer.Option(None, "--data-kind", help="manifest | images."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the job until it ends."),
) -> None:
    """Pretrain (or resume) with DDP via torchrun, Slurm or Kubeflow; re-attaches to a running job of the same name."""
    from pluto.train.launch import launch

    flags = {"steps": steps, "data_kind": data_kind}
    if work is not None:
        flags.update(run_dir=str(work / "train"), data=str(work / "tiles"))
    if data is not None:
        flags["data"] = str(data)
    s = settings_from(ctx, train={k: v for k, v in flags.items() if v is not None})
    cfg = s.train
    if not cfg.tracking_uri:
        from dataclasses import replace

        cfg = replace(cfg, tracking_uri=s.mlflow.tracking_uri)
    job_id, state = launch(cfg, launcher, nproc_per_node=nproc, wait=wait)
    typer.echo(f"{launcher} job {job_id}: {state} (run dir {cfg.run_dir})")
    if state == "failed":
        raise typer.Exit(1)


def _promotion_log(s: Settings) -> Path:
    return s.paths.work_dir / "registry" / "promotions.jsonl"


@app.command("promote")
def promote_cmd(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="Registered model, e.g. pluto-tiny."),
    version: int = typer.Argument(..., help="Model version to make champion."),
    why: str = typer.Option(..., "--why", help="Reason, kept in the promotion log."),
    who: Optional[str] = typer.Option(None, "--who", help="Defaults to the login name."),
    force: bool = typer.Option(False, "--force", help="Promote although the gate blocks it (the reason goes in the log)."),
) -> None:
    """Point the `champion` alias at VERSION after showing the gate's verdict; a failing gate needs --force."""
    from pluto.registry.register import GateBlocked, promote_version

    s = settings_from(ctx)

    def show(verdict) -> None:
        typer.echo(f"gate: {'pass' if verdict.promote else 'BLOCK'}: {verdict.summary}")
        if verdict.table:
            typer.echo(verdict.markdown())

    try:
        verdict, event = promote_version(s.mlflow.tracking_uri, model, version, why=why, who=who, force=force,
                                         log_path=_promotion_log(s), min_margin=s.chain.gate_min_margin, floor=s.chain.quality_floor)
    except GateBlocked as exc:
        show(exc.decision)
        raise
    show(verdict)
    if event is None:
        typer.echo(f"{model}: v{version} already is the champion; nothing changed")
        return
    typer.echo(f"{model}: champion v{event.previous} -> v{event.version} ({event.at}, {event.who})")
    _champion_data(s, model, version)


registry_app = typer.Typer(help="Model registry checks.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("audit")
def registry_audit_cmd(
    ctx: typer.Context, model: Optional[str] = typer.Argument(None, help="Registered model, e.g. pluto-tiny; default: all."),
) -> None:
    """Log a champion alias moved outside pluto (MLflow UI or API) in the promotion log, so rollback follows it;
    complete a change that was recorded but whose alias move was cut short."""
    from pluto.registry.promotion import audit_models

    s = settings_from(ctx)
    for name, event in audit_models(s.mlflow.tracking_uri, _promotion_log(s), [model] if model else None).items():
        if event is None:
            typer.echo(f"{name}: the champion alias agrees with the promotion log")
        elif event.action == "external":
            typer.echo(f"{name}: champion moved outside pluto, v{event.previous} -> v{event.version}; logged as event {event.seq}")
        else:
            typer.echo(f"{name}: event {event.seq} ({event.action} v{event.version} by {event.who}) was cut short; completed")


@app.command("rollback")
def rollback_cmd(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="Registered model, e.g. pluto-tiny."),
    why: str = typer.Option(..., "--why", help="Reason, kept in the promotion log."),
    who: Optional[str] = typer.Option(None, "--who"),
) -> None:
    """Point `champion` back at the previous champion recorded in the promotion log."""
    from pluto.registry.promotion import rollback

    s = settings_from(ctx)
    event = rollback(s.mlflow.tracking_uri, model, why=why, who=who, log_path=_promotion_log(s))
    typer.echo(f"{model}: champion v{event.previous} -> v{event.version} (rollback by {event.who})")
    _champion_data(s, model, event.version)


def _champion_data(s: Settings, model: str, version: int) -> None:
    """After the champion moved: the DVC project's data.dvc follows it, and (opt-in) git tags its data's commit.
    The promotion stands whatever happens here: a step that cannot be done is a warning that says why."""
    if not (s.chain.dvc_project or s.chain.data_git):
        return
    from pluto.registry.register import get_record

    record = get_record(s.mlflow.tracking_uri, model, version=version)
    if s.chain.dvc_project:
        from pluto.data_version import publish
        from pluto.registry.lineage import run_data_dvc

        with tempfile.TemporaryDirectory() as tmp:
            dvc_file = run_data_dvc(s.mlflow.tracking_uri, record.run_id, Path(tmp)) if record.run_id else None
            try:
                if dvc_file is None:
                    raise PlutoError(f"{model} v{version}: its run logged no data.dvc")
                published = publish(s.chain.dvc_project, dvc_file, s.chain.dvc_remote, s.s3.endpoint_url,
                                    cache_dir=s.paths.work_dir / ".dvc" / "cache")
                typer.echo(f"{s.chain.dvc_project}/data.dvc -> {published.md5}")
            except PlutoError as exc:
                typer.echo(f"warning: {exc}; {s.chain.dvc_project}/data.dvc still names the previous champion's data", err=True)
    if s.chain.data_git:  # opt-in: model/<name>/v<N> at the commit of its data
        from pluto.data_git import tag_model_version

        try:
            typer.echo(f"git tag {tag_model_version(s.paths.work_dir, model, version, record.data_hash, s.chain.data_git_remote)}")
        except PlutoError as exc:
            typer.echo(f"warning: {exc}; v{version} is champion without a git tag", err=True)


@app.command("register")
def register_cmd(
    ctx: typer.Context,
    model_dir: Path = typer.Argument(..., help="Directory written by pluto.models.save_model."),
    suite: Path = typer.Option(..., "--suite", help="JSON of an eval SuiteResult (to_dict)."),
    data_hash: Optional[str] = typer.Option(None, "--data-hash", help="DVC data version; default: WORK/data.dvc."),
) -> None:
    """Register MODEL_DIR as a new version (challenger) and run the champion gate."""
    import json

    from pluto.data_version import read_version
    from pluto.registry.gate import SuiteScores
    from pluto.registry.provenance import git_sha
    from pluto.registry.register import gate, register_model
    from pluto.tracking import Tracker

    s = settings_from(ctx)
    scores = SuiteScores.from_suite(json.loads(suite.read_text()))
    data = data_hash or read_version(s.paths.work_dir).md5
    with Tracker(s.paths.work_dir / "tracking" / "register.jsonl", s.mlflow.tracking_uri, s.mlflow.experiment, "register",
                 tags={"pluto.data_hash": data, "pluto.git_sha": git_sha()}, connect_now=True) as run:
        if data_hash is None:  # the work dir's data.dvc, kept on the run: `pluto data checkout` restores it
            run.log_artifact(s.paths.work_dir / "data.dvc", "data")
        from pluto.registry.checkpoint_store import sha256_file

        key = f"{sha256_file(model_dir / 'model.safetensors')[:16]}-{data[:16]}-{scores.suite_version}"
        rec = register_model(model_dir, tracking_uri=s.mlflow.tracking_uri, run_id=run.run_id, scores=scores,
                             data_hash=data, git_sha=git_sha(), idempotency_key=key, embedding_mode=s.chain.embedding_mode)
    decision = gate(s.mlflow.tracking_uri, rec.name, rec.version, min_margin=s.chain.gate_min_margin, log_path=_promotion_log(s),
                    floor=s.chain.quality_floor, auto_promote=s.chain.auto_promote)
    typer.echo(f"{rec.name} v{rec.version}: " + (
        ("champion" if s.chain.auto_promote else f"passes the gate; `pluto promote {rec.name} {rec.version}` makes it champion")
        if decision.promote else "challenger; " + "; ".join(decision.reasons)))
    typer.echo(decision.markdown())  # per task: candidate, champion, random-init twin, mean RGB, margin, verdict
    if decision.promote:
        _champion_data(s, rec.name, rec.version)


data_app = typer.Typer(help="Data versions (DVC over the work tables).", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("checkout")
def data_checkout_cmd(
    ctx: typer.Context,
    model_version: int = typer.Option(..., "--model-version", help="Restore the data this model version was trained on."),
    model: str = typer.Option("pluto-tiny", "--model", help="Registered model name."),
) -> None:
    """Restore catalog, QC tables and tile manifests of a model version into the work dir."""
    from pluto.data_version import checkout_data
    from pluto.registry.lineage import run_data_dvc
    from pluto.registry.register import get_record

    s = settings_from(ctx)
    record = get_record(s.mlflow.tracking_uri, model, version=model_version)
    with tempfile.TemporaryDirectory() as tmp:
        dvc_file = run_data_dvc(s.mlflow.tracking_uri, record.run_id, Path(tmp)) if record.run_id else None
        if dvc_file is None:  # DVC pulls what a .dvc file names: without the version's own there is nothing to restore
            raise PlutoError(f"{model} v{model_version}: its run {record.run_id or '(none)'} logged no data.dvc, so its data "
                             f"{record.data_hash} cannot be checked out; with chain.data_git on, `dvc get` its data/ tag instead")
        version = checkout_data(s.paths.work_dir, dvc_file, s.chain.dvc_remote, s.s3.endpoint_url, md5=record.data_hash,
                                data_root=s.paths.data_root)
    typer.echo(f"{model} v{model_version}: data {version.md5} restored into {s.paths.work_dir} from its run's data.dvc")


services_app = typer.Typer(help="Local servers on 127.0.0.1.", no_args_is_help=True)
app.add_typer(services_app, name="services")


@services_app.command("up")
def services_up_cmd(
    ctx: typer.Context,
    prefect_port: int = typer.Option(PREFECT_PORT, "--prefect-port", help="Port of the Prefect server on 127.0.0.1."),
) -> None:
    """Start MLflow (at mlflow.tracking_uri) and Prefect on 127.0.0.1, state under the work dir; Ctrl-C stops them."""
    from pluto.services import start_services

    s = settings_from(ctx)
    services = start_services(s.paths.work_dir.resolve(), s.mlflow.tracking_uri, prefect_port)
    for svc in services:
        typer.echo(f"{svc.name}: {svc.url}")
    try:
        services[0].proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for svc in reversed(services):
            svc.stop()


tracking_app = typer.Typer(help="Experiment tracking (MLflow + the local JSONL record).", no_args_is_help=True)
app.add_typer(tracking_app, name="tracking")


@tracking_app.command("sync")
def tracking_sync_cmd(
    ctx: typer.Context,
    files: Optional[list[Path]] = typer.Argument(None, help="Tracker JSONL files; default: every one under the work dir."),
    work: Optional[Path] = typer.Option(None, "--work", help="Work dir to search for Tracker JSONL files."),
) -> None:
    """Replay into MLflow the metrics, params and tags the JSONL records hold and the server lacks (idempotent)."""
    from pluto.tracking import sync_runs, tracking_files

    s = settings_from(ctx, paths={"work_dir": work} if work else None)
    report = sync_runs(files or tracking_files(s.paths.work_dir), s.mlflow.tracking_uri)
    typer.echo(f"{report.runs} runs checked ({report.runs_created} created): sent {report.metrics} metric points, "
               f"{report.params} params, {report.tags} tags; {report.terminated} runs ended")


def main() -> None:
    try:
        app()
    except PlutoError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
