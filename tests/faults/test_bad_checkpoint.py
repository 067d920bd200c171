"""Checkpoints that are not ours, or that would run code when unpickled, are refused by every loader
with a CheckpointError naming the file; the code never runs (its marker file is never created)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from safetensors.torch import save_file

import pluto.models  # noqa: F401  (registers the archs)
from pluto.errors import CheckpointError
from pluto.eval.embeddings import resolve_model
from pluto.models import load_model, save_model
from pluto.train.checkpoint import FORMAT, load_checkpoint, load_latest
from pluto.train.trainer import warm_start


class _RunsCode:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a hostile pickle runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile(path: Path, marker: Path) -> Path:
    torch.save({"format": FORMAT, "meta": {}, "student": {"w": torch.zeros(2)}, "hook": _RunsCode(marker)}, path)
    return path


def test_the_hostile_payload_is_live(tmp_path: Path) -> None:
    """Positive control: an unsafe load of the same kind of file does run the code."""
    marker = tmp_path / "control-marker"
    evil = _hostile(tmp_path / "control.pt", marker)
    torch.load(evil, weights_only=False)
    assert marker.exists()


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    m = tmp_path / "pwned"
    yield m
    assert not m.exists(), "a loader executed pickled code"


def test_training_checkpoint_loaders_refuse_code(tmp_path: Path, marker: Path) -> None:
    run = tmp_path / "ckpts"
    run.mkdir()
    evil = _hostile(run / "ckpt-000000007.pt", marker)
    with pytest.raises(CheckpointError, match=rf"{evil.name}: unreadable with weights_only=True"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="none of 1 checkpoints is loadable"):
        load_latest(run)  # resume refuses rather than starting over on top of it


@pytest.mark.parametrize(
    "payload, message",
    [
        (lambda: torch.nn.Conv2d(3, 8, 3).state_dict(), f"not a {FORMAT} checkpoint"),
        (lambda: [torch.zeros(3)], f"not a {FORMAT} checkpoint"),
        (lambda: {"format": FORMAT, "student": {}}, "without a valid 'meta' entry"),
        (lambda: {"format": FORMAT, "meta": {"stepz": 1}}, "without a valid 'meta' entry"),
        (lambda: {"format": FORMAT, "meta": "step 3"}, "without a valid 'meta' entry"),
    ],
    ids=["plain_state_dict", "list", "no_meta", "unknown_meta_key", "meta_not_a_mapping"],
)
def test_training_checkpoint_that_is_not_ours(tmp_path: Path, payload, message: str) -> None:
    path = tmp_path / "ckpt-000000001.pt"
    torch.save(payload(), path)
    with pytest.raises(CheckpointError, match=rf"{path.name}: .*{message}"):
        load_checkpoint(path)


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory) -> Path:
    return save_model(timm.create_model("pluto_tiny", pretrained=False), tmp_path_factory.mktemp("tiny"))


def _with_weights(src: Path, dest: Path, write_weights) -> Path:
    """A copy of a saved model whose model.safetensors is replaced and whose config.json hash is
    updated to match, so the hash check passes and the loader itself must refuse the file."""
    shutil.copytree(src, dest)
    weights = dest / "model.safetensors"
    write_weights(weights)
    config = json.loads((dest / "config.json").read_text())
    config["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_every_model_loader_refuses_a_pickle_posing_as_safetensors(saved_tiny: Path, tmp_path: Path, marker: Path) -> None:
    from pluto.registry.embedder_model import PlutoEmbedder

    model_dir = _with_weights(saved_tiny, tmp_path / "evil_model", lambda w: _hostile(w, marker))
    loaders = {
        "pluto.models.load_model": lambda: load_model(model_dir),
        "pluto.eval resolve_model": lambda: resolve_model(str(model_dir)),
        "pluto.train warm_start": lambda: warm_start(None, model_dir, "pluto_tiny"),  # refused before touching the objective
        "registry pyfunc load_context": lambda: PlutoEmbedder().load_context(SimpleNamespace(artifacts={"model_dir": str(model_dir)}, model_config={})),
    }
    for name, load in loaders.items():
        with pytest.raises(CheckpointError, match=r"model\.safetensors: not a safetensors file"):
            load()


def test_model_dirs_that_are_not_ours(saved_tiny: Path, tmp_path: Path) -> None:
    other = torch.nn.Conv2d(3, 8, 3)  # valid safetensors, someone else's tensors
    foreign = _with_weights(saved_tiny, tmp_path / "foreign", lambda w: save_file(other.state_dict(), str(w)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: weights do not fit pluto_tiny"):
        load_model(foreign)
    cases = {
        "list": ([1, 2], r"config\.json: not a pluto model config"),
        "no_kwargs": ({"arch": "pluto_tiny"}, r"config\.json: cannot build pluto_tiny from it \(KeyError: 'kwargs'\)"),
        "bad_kwarg": (None, r"config\.json: cannot build pluto_tiny from it \(TypeError: .*'exec_on_load'"),
        "not_json": ("{arch: pluto", r"config\.json: not valid JSON"),
    }
    for name, (config, message) in cases.items():
        d = tmp_path / name
        shutil.copytree(saved_tiny, d)
        original = json.loads((d / "config.json").read_text())
        if name == "bad_kwarg":
            config = {**original, "kwargs": {**original["kwargs"], "exec_on_load": "rm -rf /"}}
        elif isinstance(config, dict):
            config = {**config, "weights_sha256": original["weights_sha256"]}
        (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
        with pytest.raises(CheckpointError, match=message):
            load_model(d)
