"""Register a trained backbone as an MLflow pyfunc model version and run the champion gate.

One registered model per architecture (`pluto-tiny`, `pluto-4s`, `pluto-4g`): the embedding size
is pinned on the registered model (tag `pluto.embed_dim`) and a version of another size is
refused, so downstream heads never silently get another embedding size. Each version carries the
signature and a batch-2 input example (a batch of 1 would let MLflow fix the batch dimension),
the suite scores, the DVC data hash, the git sha, the S3 URI + sha256 of the full training
checkpoint, and an idempotency key: registering the same key twice returns the first version
(a retried flow task never creates duplicates). New versions get the `challenger` alias.

An MLflow outage fails a registration cleanly: a `RegistryUnavailable` (a PlutoError, so the CLI
prints one line) that names the server and the key, raised at once when the server does not
answer `/health` and after MLflow's own HTTP retries when it dies mid-way. The version is created
in one request that carries the key tag, so whatever step the outage interrupted, a retry finds
either nothing (and registers) or that version (and finishes it: the `challenger` alias of a
version not yet gated). Exactly one version per key.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pluto.errors import PlutoError
from pluto.registry.checkpoint_store import CheckpointRef
from pluto.registry.gate import GateDecision, SuiteScores, decide
from pluto.registry.promotion import CHALLENGER, CHAMPION, PromotionEvent, audit, champion_lock, current_version, move_champion

log = logging.getLogger(__name__)

EMBEDDER_CODE = Path(__file__).with_name("embedder_model.py")
TAG_KEY = "pluto.idempotency_key"
TAG_SCORES = "pluto.suite_scores"
TAG_DATA = "pluto.data_hash"
TAG_GIT = "pluto.git_sha"
TAG_CKPT = "pluto.checkpoint"
TAG_DIM = "pluto.embed_dim"
TAG_GATE = "pluto.gate"


def model_name(arch: str) -> str:
    """timm architecture name -> registered model name: `pluto_tiny` -> `pluto-tiny`."""
    return "pluto-" + arch.removeprefix("pluto_").replace("_", "-")


@dataclass(frozen=True)
class ModelRecord:
    """What the registry knows about one model version."""

    name: str
    version: int
    run_id: str
    source: str
    data_hash: str
    git_sha: str
    scores: SuiteScores
    checkpoint: CheckpointRef | None
    idempotency_key: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scores"] = self.scores.to_dict()
        d["checkpoint"] = self.checkpoint.to_dict() if self.checkpoint else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelRecord":
        return cls(
            name=d["name"], version=int(d["version"]), run_id=d["run_id"], source=d["source"],
            data_hash=d["data_hash"], git_sha=d["git_sha"], scores=SuiteScores.from_dict(d["scores"]),
            checkpoint=CheckpointRef.from_dict(d["checkpoint"]) if d.get("checkpoint") else None,
            idempotency_key=d["idempotency_key"],
        )

    @classmethod
    def from_version(cls, mv: Any) -> "ModelRecord":
        tags = mv.tags
        ckpt = tags.get(TAG_CKPT)
        return cls(
            name=mv.name, version=int(mv.version), run_id=mv.run_id or "", source=mv.source,
            data_hash=tags.get(TAG_DATA, ""), git_sha=tags.get(TAG_GIT, ""),
            scores=SuiteScores.from_dict(json.loads(tags[TAG_SCORES])),
            checkpoint=CheckpointRef.from_dict(json.loads(ckpt)) if ckpt else None,
            idempotency_key=tags.get(TAG_KEY, ""),
        )


def get_record(tracking_uri: str, name: str, version: int | None = None, alias: str | None = None) -> ModelRecord:
    """Record of `name` at `version` or `alias` (exactly one of them)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
    return ModelRecord.from_version(mv)


def download_model_dir(tracking_uri: str, name: str, dest_dir: Path, alias: str = CHAMPION) -> Path | None:
    """The `pluto.models.save_model` directory of `name@alias`, downloaded under `dest_dir/v<version>`
    (reused when already there; a download lands in `.part` and is renamed when complete); None when
    the alias is not set (e.g. no champion before the first run)."""
    import shutil

    import mlflow
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    version = current_version(client, name, alias)
    if version is None:
        return None
    local = Path(dest_dir) / f"v{version}"
    if not local.is_dir():
        part = local.with_name(local.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        # the version's own artifact URI: a `models:/` URI would resolve against the process's default registry
        source = client.get_model_version_download_uri(name, str(version))
        got = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(part), tracking_uri=tracking_uri)
        Path(got).rename(local)  # the model's root, however the store nests it under `part`
        shutil.rmtree(part, ignore_errors=True)
    artifact = Model.load(str(local / "MLmodel")).flavors["python_function"]["artifacts"]["model_dir"]["path"]
    log.info("%s@%s is v%d: model dir %s", name, alias, version, local / artifact)
    return local / artifact


class RegistryUnavailable(PlutoError):
    """The MLflow server could not be reached while registering; retrying later is safe."""


def _unavailable(tracking_uri: str, what: str, key: str, cause: object) -> RegistryUnavailable:
    return RegistryUnavailable(
        f"MLflow at {tracking_uri} unreachable while registering {what} ({str(cause)[:200]}); nothing was promoted. "
        f"Registration is idempotent (key {key}): retry once the server is back"
    )


def _find_by_key(client: Any, name: str, key: str) -> Any | None:
    hits = client.search_model_versions(f"name = '{name}' and tags.`{TAG_KEY}` = '{key}'")
    return min(hits, key=lambda mv: int(mv.version)) if hits else None


def _example_batch(model: Any) -> "Any":
    """Two deterministic normalised images at the model's input size (batch >= 2, see module doc)."""
    import numpy as np

    c, h, w = model.pretrained_cfg.get("input_size", (3, 224, 224))
    return np.random.default_rng(0).standard_normal((2, c, h, w)).astype(np.float32)


def _ensure_registered_model(client: Any, name: str, embed_dim: int, arch: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, tags={TAG_DIM: str(embed_dim), "pluto.arch": arch},
            description=f"PLUTO backbone {arch}: image batch (B,3,H,W) float32 -> embeddings (B,{embed_dim}).",
        )
        return
    pinned = rm.tags.get(TAG_DIM)
    if pinned is not None and int(pinned) != embed_dim:
        raise PlutoError(f"{name}: registered embedding size is {pinned}, refusing a version with {embed_dim}")


def register_model(
    model_dir: Path,
    *,
    tracking_uri: str,
    run_id: str,
    scores: SuiteScores,
    data_hash: str,
    git_sha: str,
    idempotency_key: str,
    checkpoint: CheckpointRef | None = None,
    embedding_mode: str = "cls",
) -> ModelRecord:
    """Log `model_dir` (a `pluto.models.save_model` directory) as pyfunc under `run_id`, register it.

    Raises RegistryUnavailable when MLflow cannot be reached (see module doc; retrying is safe).
    """
    from mlflow.exceptions import MlflowException

    from pluto.tracking import server_reachable

    if not server_reachable(tracking_uri):
        raise _unavailable(tracking_uri, str(model_dir), idempotency_key, f"{tracking_uri}/health does not answer")
    if not run_id:
        raise PlutoError(f"registering {model_dir}: no MLflow run to log the model under (run_id is empty)")
    try:
        return _register(model_dir, tracking_uri, run_id, scores, data_hash, git_sha, idempotency_key, checkpoint, embedding_mode)
    except (MlflowException, OSError) as exc:  # requests' transport errors are OSErrors
        if server_reachable(tracking_uri):
            raise  # the server is up and refused: not an outage, the caller sees MLflow's own error
        raise _unavailable(tracking_uri, str(model_dir), idempotency_key, exc) from exc


def _register(
    model_dir: Path, tracking_uri: str, run_id: str, scores: SuiteScores, data_hash: str, git_sha: str,
    idempotency_key: str, checkpoint: CheckpointRef | None, embedding_mode: str,
) -> ModelRecord:
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from pluto.models import embed, load_model

    client = MlflowClient(tracking_uri)
    model = load_model(model_dir).eval()
    arch = model.pretrained_cfg.get("architecture") or type(model).__name__
    name = model_name(arch)
    _ensure_registered_model(client, name, int(model.embed_dim), arch)
    existing = _find_by_key(client, name, idempotency_key)
    if existing is not None:
        log.info("%s: key %s already registered as v%s; not registering again", name, idempotency_key, existing.version)
        aliased = {current_version(client, name, alias) for alias in (CHALLENGER, CHAMPION)}
        if TAG_GATE not in existing.tags and int(existing.version) not in aliased:
            # an earlier attempt created the version but died before aliasing it
            client.set_registered_model_alias(name, CHALLENGER, existing.version)
        return ModelRecord.from_version(existing)

    import torch

    example = _example_batch(model)
    with torch.inference_mode():
        out = embed(model, torch.from_numpy(example), mode=embedding_mode).values.float().numpy()
    mlflow.set_tracking_uri(tracking_uri)
    # the fluent API refuses a run outside the process's active experiment (set by any earlier caller)
    mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
    with mlflow.start_run(run_id=run_id), tempfile.TemporaryDirectory() as staging:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(EMBEDDER_CODE),
            artifacts={"model_dir": str(model_dir)},
            model_config={"embedding_mode": embedding_mode},
            signature=infer_signature(example, out),
            input_example=example,
            pip_requirements=_requirements(),
            code_paths=[str(_model_code(Path(staging)))],
            tags={TAG_DATA: data_hash, TAG_GIT: git_sha},
        )
    tags = {
        TAG_KEY: idempotency_key, TAG_SCORES: scores.to_json(), TAG_DATA: data_hash, TAG_GIT: git_sha,
        "pluto.suite_version": scores.suite_version, "pluto.suite_score": f"{scores.score:.6f}",
    }
    if checkpoint is not None:
        tags[TAG_CKPT] = json.dumps(checkpoint.to_dict())
    mv = mlflow.register_model(info.model_uri, name, tags=tags)
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    log.info("registered %s v%s (suite score %.4f, data %s)", name, mv.version, scores.score, data_hash)
    return ModelRecord.from_version(client.get_model_version(name, mv.version))


def _requirements() -> list[str]:
    """Pinned runtime requirements, all on the package index (given explicitly: MLflow's inference would load
    the model again); the project's own code travels with the model (`_model_code`), not as a package."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "timm", "safetensors", "numpy")]


MODEL_CODE = ("__init__.py", "errors.py", "atomic.py", "models")  # what `pluto.models.load_model`/`embed` import


def _model_code(staging: Path) -> Path:
    """A `pluto` package holding only what the served model imports, for MLflow's `code_paths` (it is put on
    sys.path when the model loads, so a bare environment with the pinned requirements can serve it)."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    dest = staging / "pluto"
    for name in MODEL_CODE:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def gate_preview(client: Any, name: str, version: int, *, min_margin: float, floor: bool = True) -> GateDecision:
    """The gate's verdict on `version` against the current champion, changing nothing."""
    candidate = ModelRecord.from_version(client.get_model_version(name, str(version)))
    champ_version = current_version(client, name, CHAMPION)
    if champ_version == version:  # re-gating the champion: nothing to compare it with, and nothing to move
        return GateDecision(True, (), f"v{version} is already the champion; not re-gated")
    champion = None
    if champ_version is not None:
        champion = ModelRecord.from_version(client.get_model_version(name, str(champ_version))).scores
    return decide(candidate.scores, champion, min_margin, floor)


def gate(
    tracking_uri: str, name: str, version: int, *, min_margin: float, log_path: Path, floor: bool = True, auto_promote: bool = False
) -> GateDecision:
    """Compare `version` with the champion, record the verdict on it, and (auto_promote) promote it when the gate allows.

    Reading the champion, deciding and moving the alias happen under `champion_lock`, after an
    `audit` that logs any alias change made outside pluto, so a concurrent promotion can neither
    slip in between nor be compared against a stale champion.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    with champion_lock(client, name, "gate"):
        audit(client, name, log_path)
        decision = gate_preview(client, name, version, min_margin=min_margin, floor=floor)
        if decision.summary.endswith("not re-gated"):
            log.info("%s v%s is already the champion; not re-gated", name, version)
            return decision
        client.set_model_version_tag(name, str(version), TAG_GATE, json.dumps(decision.to_dict()))
        if decision.promote and auto_promote:
            move_champion(client, name, version, "promote", "gate", f"gate: {decision.summary}", log_path)
        elif decision.promote:
            log.info("%s v%s passes the gate; chain.auto_promote is off, so `pluto promote` makes it champion", name, version)
        else:
            log.info("%s v%s not promoted: %s", name, version, "; ".join(decision.reasons))
    return decision


class GateBlocked(PlutoError):
    """A manual promotion the gate blocks, without `force`; carries the verdict to show."""

    def __init__(self, message: str, decision: GateDecision) -> None:
        super().__init__(message)
        self.decision = decision


def promote_version(
    tracking_uri: str, name: str, version: int, *, why: str, log_path: Path, min_margin: float, floor: bool = True,
    force: bool = False, who: str | None = None,
) -> tuple[GateDecision, PromotionEvent | None]:
    """A person's promotion (`pluto promote`): the gate's verdict against the current champion, then the move.

    Verdict and move happen under one `champion_lock`, so the verdict is about the champion that is
    replaced. A blocked version raises GateBlocked unless `force`; a forced move is logged as action
    `force` with the gate's reasons beside `why`. Returns (verdict, event); no event when `version`
    already is the champion.
    """
    import getpass

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    with champion_lock(client, name, who or getpass.getuser()):
        audit(client, name, log_path)
        decision = gate_preview(client, name, version, min_margin=min_margin, floor=floor)
        if current_version(client, name, CHAMPION) == version:
            return decision, None
        if not decision.promote and not force:
            raise GateBlocked(f"{name} v{version}: the gate blocks it ({'; '.join(decision.reasons)}); "
                              "pass --force with --why to promote it anyway", decision)
        if decision.promote:
            return decision, move_champion(client, name, version, "promote", who, why, log_path)
        return decision, move_champion(client, name, version, "force", who,
                                       f"{why} [forced over the gate: {'; '.join(decision.reasons)}]", log_path)
