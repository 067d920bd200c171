"""Training checkpoints: one consolidated file per save, written atomically, loaded without pickle code.

Contract (DESIGN.md "Checkpoint"): a checkpoint holds only tensors and plain JSON-able values
(dict/list/tuple/str/int/float/bool/None) so `torch.load(weights_only=True)` can read it; RNG
states are stored as tensors and the training config as a JSON string. Rank 0 writes one file
whatever the world size (DDP replicas are identical), so a resume may use another world size.
A save writes `<name>.tmp`, fsyncs it, renames it over the final name and fsyncs the directory:
a crash or a full disk at any point leaves the previous checkpoint intact. The newest K are kept.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pluto.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "pluto-train-ckpt/1"
_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")
_PLAIN = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class CheckpointMeta:
    """Where a run stood when the checkpoint was written.

    step: optimizer steps done (= schedule position: schedules are arrays indexed by it).
    global_sample_index: samples consumed by all ranks together; the data order is a function
    of this index only, so it is the resume point whatever the world size.
    """

    step: int
    global_sample_index: int
    world_size: int
    arch: str
    config_json: str
    git_sha: str
    created_at: float
    nan_skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckpointMeta:
        return cls(**d)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.config_json)


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:09d}.pt"


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint files in `ckpt_dir`, newest (highest step) first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)), reverse=True)


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch (CPU and every CUDA device) RNG states as tensors and plain values."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": py_version,
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": py_gauss,
        "numpy_kind": str(np_kind),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`; CUDA states are restored only where the device count matches."""
    random.setstate((state["python_version"], tuple(int(v) for v in state["python_state"].tolist()), state["python_gauss"]))
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((state["numpy_kind"], keys, state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _check_plain(value: Any, where: str) -> None:
    """Refuse anything `weights_only` could not load back (custom objects, numpy arrays, ...)."""
    if isinstance(value, torch.Tensor) or isinstance(value, _PLAIN):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"{where}: key {k!r} is {type(k).__name__}, not str/int")
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise CheckpointError(f"{where}: {type(value).__name__} is not a tensor or plain value")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(ckpt_dir: Path, meta: CheckpointMeta, state: dict[str, Any], keep: int = 3) -> Path:
    """Write `{format, meta, **state}` atomically as `ckpt-<step>.pt`; prune to the newest `keep`.

    `state` maps names (student, teacher, optimizer, scaler, rng, ...) to tensors/plain values.
    Raises CheckpointError (the previous checkpoints untouched) when the write fails, e.g. disk full.
    """
    if keep < 1:
        raise CheckpointError(f"{ckpt_dir}: keep must be >= 1, got {keep}")
    reserved = {"format", "meta"} & set(state)
    if reserved:
        raise CheckpointError(f"{ckpt_dir}: state may not use reserved keys {sorted(reserved)}")
    payload = {"format": FORMAT, "meta": meta.to_dict(), **state}
    _check_plain(payload, "checkpoint")
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / checkpoint_name(meta.step)
    tmp = final.with_name(final.name + ".tmp")
    t0 = time.perf_counter()
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports a short write as RuntimeError
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{final}: write failed ({exc}); previous checkpoints kept") from exc
    log.info("checkpoint %s written (step %d, %.1f MB, %.2f s)", final, meta.step, final.stat().st_size / 1e6, time.perf_counter() - t0)
    for old in list_checkpoints(ckpt_dir)[keep:]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: Path) -> tuple[CheckpointMeta, dict[str, Any]]:
    """Load one checkpoint on CPU with `weights_only=True`; CheckpointError if unreadable or foreign."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: not found") from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for truncated/foreign files
        raise CheckpointError(f"{path}: unreadable with weights_only=True ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    try:
        meta = CheckpointMeta.from_dict(payload.pop("meta"))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {FORMAT} checkpoint without a valid 'meta' entry ({type(exc).__name__}: {exc})") from exc
    payload.pop("format")
    return meta, payload


def load_latest(ckpt_dir: Path) -> tuple[CheckpointMeta, dict[str, Any], Path] | None:
    """Newest loadable checkpoint in `ckpt_dir`, skipping corrupt ones with a warning.

    Returns None when the directory holds no checkpoint (fresh start). Raises CheckpointError when
    checkpoints exist but none loads: silently starting over would overwrite a run's history.
    """
    candidates = list_checkpoints(ckpt_dir)
    for path in candidates:
        try:
            meta, state = load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping checkpoint: %s", exc)
            continue
        return meta, state, path
    if candidates:
        raise CheckpointError(f"{ckpt_dir}: none of {len(candidates)} checkpoints is loadable")
    return None
