"""Save and load a PLUTO model as `model.safetensors` + `config.json` (never pickle).

config.json holds what rebuilds the model without code from the run: the registered arch name,
the constructor kwargs, the pretrained_cfg, the default patch size and the sha256 of the weights
file, which `load_model` checks before trusting the weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pluto.atomic import write_with
from pluto.errors import CheckpointError
from pluto.models.variants import PLUTO_ARCHS

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def save_model(model: nn.Module, out_dir: str | Path) -> Path:
    """Write `out_dir/model.safetensors` and `out_dir/config.json`; returns out_dir.

    Both files are written to a temporary name and renamed, weights first, so a reader never sees
    a config whose weights are missing.
    """
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if arch not in PLUTO_ARCHS or not hasattr(model, "arch_kwargs"):
        raise CheckpointError(f"save_model: expected a model built by timm.create_model({PLUTO_ARCHS}), got {arch!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_with(out / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"arch": arch}))
    config = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "kwargs": _jsonable(model.arch_kwargs),
        "pretrained_cfg": _jsonable(dict(model.pretrained_cfg)),
        "patch_size": int(model.patch_size),
        "patch_sizes": list(model.patch_sizes),
        "embed_dim": int(model.embed_dim),
        "weights_sha256": _sha256(out / WEIGHTS_FILE),
    }
    write_with(out / CONFIG_FILE, lambda p: p.write_text(json.dumps(config, indent=2, sort_keys=True)))
    logger.info("saved %s (%s) to %s", arch, config["weights_sha256"][:12], out)
    return out


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """The config.json of a saved model, checked for a known arch."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a pluto model config (a JSON object is expected)")
    arch = config.get("arch")
    if arch not in PLUTO_ARCHS:
        raise CheckpointError(f"{path}: unknown arch {arch!r}; known: {', '.join(PLUTO_ARCHS)}")
    return config


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from config.json and load its safetensors weights (strict, hash-checked)."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: not found")
    digest = _sha256(weights)
    if digest != config.get("weights_sha256"):
        raise CheckpointError(f"{weights}: sha256 {digest[:12]} does not match config.json ({str(config.get('weights_sha256'))[:12]})")
    try:
        kwargs = dict(config["kwargs"])
        kwargs["patch_sizes"] = tuple(kwargs["patch_sizes"])
        kwargs.setdefault("flexi_interpolation", "bicubic")  # saved before the variants' bilinear PI-resize: rebuild as saved
        if kwargs.get("base_patch_size") is None:  # saved before the 32 x 32 FlexiViT kernel, when None meant the patch size;
            kwargs["base_patch_size"] = int(kwargs["patch_size"])  # timm drops None kwargs, which would build today's kernel
        cfg = {  # JSON turned timm's tuples (input_size, mean, std) into lists
            k: tuple(v) if isinstance(v, list) else v
            for k, v in config["pretrained_cfg"].items()
            if k not in ("architecture", "tag")
        }
        model = timm.create_model(config["arch"], pretrained=False, pretrained_cfg_overlay=cfg, **kwargs)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{model_dir / CONFIG_FILE}: cannot build {config['arch']} from it ({type(e).__name__}: {e})") from e
    try:
        model.load_state_dict(load_file(str(weights), device=str(device)))
    except SafetensorError as e:
        raise CheckpointError(f"{weights}: not a safetensors file ({e})") from e
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: weights do not fit {config['arch']} ({e})") from e
    return model.to(device)
