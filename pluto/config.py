"""One typed settings object for the whole platform.

Precedence: defaults < settings file (YAML/TOML, `--config` or `PLUTO_CONFIG`) < environment
(`PLUTO_` prefix, `__` for nesting, e.g. `PLUTO_TILING__MPPS='[0.5,1.0]'`) < explicit overrides
(CLI flags, flow parameters). Library functions never read the environment themselves: the CLI
and the flows build a `Settings` and pass plain values (or frozen dataclasses for the torch-only
packages) down. Credentials are never fields here: S3 and MLflow credentials come from the
standard AWS / MLflow environment and config files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from pluto.errors import ConfigError
from pluto.qc.params import QCParams
from pluto.eval.eval_config import EvalConfig
from pluto.train.config import TrainConfig
from pluto.train.recipes import bind_recipe

REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_shared() -> Path:
    return REPO_ROOT.parent / "shared"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathSettings(_Section):
    """Where inputs may come from and where every stage writes."""

    data_root: Path = Field(default_factory=lambda: _default_shared() / "data")
    work_dir: Path = Path("work")

    @property
    def catalog(self) -> Path:
        return self.work_dir / "catalog.parquet"

    @property
    def qc_dir(self) -> Path:
        return self.work_dir / "qc"

    @property
    def tiles_dir(self) -> Path:
        return self.work_dir / "tiles"


class SlideSettings(_Section):
    """Slide access: MPP sources and tolerances, the handle pool."""

    mpp_overrides_csv: Path | None = None  # csv: slide (file name or slide_id), mpp
    mpp_rel_tol: float = Field(0.02, gt=0, le=0.02)  # a level may be this much coarser than the target (scanner jitter), no more
    mpp_min: float = Field(0.05, gt=0)  # below this a header MPP is not believed
    mpp_max: float = Field(50.0, gt=0)
    max_dimension_px: int = Field(1_000_000, gt=0)  # larger header dims => quarantined, too_large
    handle_pool_size: int = Field(32, ge=1)
    tile_cache_mib: float = Field(64.0, ge=0)  # decoded JPEG tiles kept per process (grid-order reads reuse them); 0 = off


class IngestSettings(_Section):
    workers: int = Field(2, ge=1)
    metadata_csv: Path | None = None  # file name or slide_id + patient, site, organ, stain, scanner
    default_stain: str = "H&E"


class TilingSettings(_Section):
    """Tile specs and selection (PLUTO-4: 0.25/0.5/1.0/2.0 um/px, 275/550 px, ~300 regions/slide)."""

    mpps: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    tile_pxs: tuple[int, ...] = (275, 550)
    mode: Literal["grid", "sample"] = "grid"
    regions_per_slide: int = Field(300, ge=1)  # sample mode: 165M regions / 551,164 WSIs
    min_tissue: float = Field(0.4, ge=0, le=1)  # Midnight: foreground area >= 40%
    max_pen: float = Field(0.1, ge=0, le=1)  # artifact area fractions, as QCParams
    max_fold: float = Field(0.25, ge=0, le=1)
    max_bubble: float = Field(0.25, ge=0, le=1)
    pixel_filters: bool = True  # Midnight's HSV and foreground rules and the blur check on each tile's own pixels
    shard_rows: int = Field(1_000_000, ge=1)


class S3Settings(_Section):
    """Object storage endpoint; credentials come from the standard AWS environment/config."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    retries: int = Field(5, ge=0)
    cache_max_bytes: int | None = Field(None, ge=1)  # bound of ingest's local copies of S3 slides (LRU); None keeps them all


class MLflowSettings(_Section):
    tracking_uri: str = "http://127.0.0.1:5000"
    experiment: str = "pluto"


class ChainSettings(_Section):
    """Retraining chain: data versions (DVC remote), fan-out engine, registry gate, checkpoint store."""

    ingest_prefix: str | None = None  # folder or s3:// prefix watched for slides; None = <data_root>/wsi
    # DVC remote and checkpoint store: s3://bucket/prefix (endpoint from s3.endpoint_url) or file:///folder;
    # unset = file stores under <work_dir>/stores, so data versions and checkpoints outlive any server
    dvc_remote: str | None = None
    checkpoint_store: str | None = None
    # the DVC project whose top-level data.dvc names the champion's data; unset = the repository root when the
    # work dir lies in it (a checkout's work/), else none; a promotion points it at the new champion's data and
    # pulls the tables into <project>/data (tests point it at a scratch repository)
    dvc_project: Path | None = None
    # opt-in: commit data.dvc in git, tag data/<md5[:8]> and model/<name>/v<N> on promotion (pluto.data_git),
    # pushing the tags to data_git_remote when set (a URL or path git can push to)
    data_git: bool = False
    data_git_remote: str | None = None
    multipart_chunk_mb: int = Field(64, ge=5)  # S3 minimum part size is 5 MiB
    dask_address: str | None = None  # existing Dask scheduler (tcp://...); None = LocalCluster on 127.0.0.1
    dask_workers: int = Field(2, ge=1)
    fanout_batch_slides: int = Field(16, ge=1)  # slides per fan-out task (one catalog/QC/tiling call)
    task_retries: int = Field(3, ge=0)  # I/O tasks; exponential backoff from retry_delay_s
    retry_delay_s: float = Field(2.0, ge=0)
    gate_min_margin: float = Field(0.01, ge=0)  # per-task drop allowed, raised to the seed spread
    # the gate moves `champion` itself (the demo turns it on); off: it records its verdict and a person runs `pluto promote`
    auto_promote: bool = False
    quality_floor: bool = True  # the gate never promotes a model that does not beat its random-init twin (pluto.registry.floor)
    warm_start: str = Field("champion", pattern="^(champion|none)$")
    embedding_mode: str = Field("cls", pattern="^(cls|cls\\+mean)$")


class Settings(BaseSettings):
    """Resolved configuration of a run; saved next to every run's outputs."""

    model_config = SettingsConfigDict(
        env_prefix="PLUTO_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    seed: int = 0
    paths: PathSettings = PathSettings()
    slides: SlideSettings = SlideSettings()
    ingest: IngestSettings = IngestSettings()
    qc: QCParams = QCParams()  # frozen dataclass shared with pluto.qc (see pluto/qc/params.py)
    tiling: TilingSettings = TilingSettings()
    s3: S3Settings = S3Settings()
    mlflow: MLflowSettings = MLflowSettings()
    chain: ChainSettings = ChainSettings()
    eval: EvalConfig = EvalConfig()  # frozen dataclass shared with pluto.eval (see pluto/eval/eval_config.py)
    train: TrainConfig = TrainConfig()  # frozen dataclass shared with pluto.train (see pluto/train/config.py)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _CONFIG_FILE.get("path")
        if path is not None:
            if path.suffix in {".yaml", ".yml"}:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
            else:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @model_validator(mode="before")
    @classmethod
    def _bind_recipe(cls, data: Any) -> Any:
        """`train.arch` selects its cited recipe (pluto.train.recipes): train fields that no file,
        variable or flag sets come from it, and the ones set over it are listed in recipe_overrides."""
        if isinstance(data, dict):
            data = {**data, "train": bind_recipe(data.get("train") or {})}
        return data

    @model_validator(mode="after")
    def _embedded_stores(self) -> "Settings":
        """Unset stores become file:// folders under the work dir (the embedded defaults); an unset DVC
        project is the repository root when the work dir lies in it (the default `work/` of a checkout,
        whose store the committed `.dvc/config` names): a work dir elsewhere never touches the checkout."""
        stores = self.paths.work_dir.resolve() / "stores"
        folders = {"dvc_remote": "dvc", "checkpoint_store": "checkpoints"}
        filled = {k: (stores / d).as_uri() for k, d in folders.items() if getattr(self.chain, k) is None}
        if self.chain.dvc_project is None and stores.is_relative_to(REPO_ROOT) and (REPO_ROOT / ".dvc" / "config").is_file():
            filled["dvc_project"] = REPO_ROOT
        if filled:
            object.__setattr__(self, "chain", self.chain.model_copy(update=filled))
        return self

    def config_hash(self, *sections: str) -> str:
        """Stable hash of the named sections (all when none): part of every stage's cache key."""
        data = self.model_dump(mode="json")
        if sections:
            data = {k: data[k] for k in sections}
        blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, path: Path) -> Path:
        """Write the resolved settings as JSON (no secrets are fields, so nothing to redact)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2))
        return path


_CONFIG_FILE: dict[str, Path | None] = {}


def _env_names(*keys: Any, below: bool = True) -> list[str]:
    """The set PLUTO_ variables that address `keys` (a field path), or (`below`) a field under it."""
    name = "PLUTO_" + "__".join(str(k) for k in keys).upper()
    return [k for k in os.environ if k.upper() == name or (below and k.upper().startswith(name + "__"))]


def _origin(loc: tuple[Any, ...], path: Path | None, overrides: dict[str, Any]) -> str:
    """Which input gave the value at `loc`, by precedence: a flag, a PLUTO_ variable, else the file."""
    node: Any = overrides
    for key in map(str, loc):
        if not isinstance(node, dict) or key not in node:
            break
        node = node[key]
    else:
        return "flags"
    for i in range(len(loc), 0, -1):  # the variable may set this field or a whole section as JSON
        exact = _env_names(*loc[:i], below=False)
        if exact:
            return exact[0]
    return str(path) if path else "defaults"


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Resolve settings: defaults < file < env < overrides. Raises ConfigError naming the problem.

    `overrides` use nested dicts for sections, e.g. `tiling={"mpps": [0.5]}`.
    """
    file = config_file if config_file is not None else os.environ.get("PLUTO_CONFIG")
    path = Path(file) if file else None
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"{path}: settings file not found")
        if path.suffix not in {".yaml", ".yml", ".toml"}:
            raise ConfigError(f"{path}: settings file must be .yaml, .yml or .toml")
    _CONFIG_FILE["path"] = path
    try:
        if path is not None and path.suffix != ".toml" and not isinstance(yaml.safe_load(path.read_text()) or {}, dict):
            raise ConfigError(f"{path}: settings file must hold a mapping of sections (e.g. 'slides:'), not a list or a scalar")
        return Settings(**overrides)
    except ValidationError as exc:
        errors = exc.errors()
        origins = [_origin(e["loc"], path, overrides) for e in errors]
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" + (f" ({o})" if len(set(origins)) > 1 else "")
            for e, o in zip(errors, origins)
        )
        raise ConfigError(f"{', '.join(dict.fromkeys(origins))}: invalid settings: {problems}") from exc
    except (ValueError, OSError, yaml.YAMLError) as exc:  # malformed YAML/TOML, bad env JSON
        field = re.search(r'field "(\w+)" from source "EnvSettingsSource"', str(exc))
        env = sorted(_env_names(field[1])) if field else []
        where = ", ".join(env) or (str(path) if path else "environment")
        raise ConfigError(f"{where}: cannot parse settings: {exc}") from exc
    finally:
        _CONFIG_FILE["path"] = None
