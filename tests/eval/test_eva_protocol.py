"""The project's eva protocol constants equal eva 0.4.5's own configs (vendored in pluto/eval/eva_configs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pluto.eval.eva_protocol import EVA_TASKS, TORCH_ADAMW_DEFAULT_WEIGHT_DECAY

CONFIGS = Path(__file__).resolve().parents[2] / "pluto" / "eval" / "eva_configs"
_ENV = re.compile(r"\$\{oc\.env:[A-Z_]+, *([^${}]*)\}")


def load_eva_config(relative: str) -> dict:
    """A vendored config with every `${oc.env:NAME, default}` replaced by its default, as eva resolves it unset."""
    text = (CONFIGS / relative).read_text()
    while _ENV.search(text):
        text = _ENV.sub(lambda m: m.group(1).strip(), text)
    return yaml.safe_load(text)


def _callback(cfg: dict, suffix: str) -> dict:
    found = [c for c in cfg["trainer"]["init_args"]["callbacks"] if c["class_path"].endswith(suffix)]
    assert len(found) == 1, suffix
    return found[0].get("init_args", {})


@pytest.mark.parametrize("name", sorted(EVA_TASKS))
def test_constants_equal_eva_config(name):
    task = EVA_TASKS[name]
    cfg = load_eva_config(task.config)
    trainer, model = cfg["trainer"]["init_args"], cfg["model"]["init_args"]
    assert int(trainer["n_runs"]) == task.n_runs
    assert trainer["checkpoint_type"] == "best"
    if task.max_steps is not None:
        assert int(trainer["max_steps"]) == task.max_steps and "max_epochs" not in trainer
    else:
        assert int(trainer["max_epochs"]) == task.max_epochs and "max_steps" not in trainer
    early, ckpt = _callback(cfg, "EarlyStopping"), _callback(cfg, "ModelCheckpoint")
    assert int(early["patience"]) == task.patience and float(early["min_delta"]) == 0
    assert early["monitor"] == ckpt["monitor"] == task.monitor
    assert early["mode"] == ckpt["mode"] == "max"
    opt = model["optimizer"]
    assert opt["class_path"] == "torch.optim.AdamW"
    assert float(opt["init_args"]["lr"]) == task.lr
    assert "weight_decay" not in opt["init_args"]  # so torch's AdamW default applies
    assert "lr_scheduler" not in model  # constant learning rate
    assert int(cfg["data"]["init_args"]["dataloaders"]["train"]["batch_size"]) == task.batch_size
    criterion = model["criterion"]
    if task.head == "segmentation":
        assert criterion["class_path"] == "eva.vision.losses.DiceLoss"
        assert criterion["init_args"]["softmax"] is True and criterion["init_args"]["batch"] is True
        assert criterion["init_args"].get("ignore_index") == task.ignore_index
        assert int(model["decoder"]["init_args"]["num_classes"]) == task.out_features
        assert task.criterion == "dice"
    else:
        expected = {"cross_entropy": "torch.nn.CrossEntropyLoss", "bce": "torch.nn.BCEWithLogitsLoss"}[task.criterion]
        assert criterion == expected
        head = model["head"]
        if task.head == "linear":
            assert head["class_path"] == "torch.nn.Linear"
            assert int(head["init_args"]["out_features"]) == task.out_features
        else:
            assert head["class_path"] == "eva.vision.models.networks.ABMIL"
            assert int(head["init_args"]["output_size"]) == task.out_features
            pad = cfg["data"]["init_args"]["datasets"]["train"]["init_args"]["embeddings_transforms"]["init_args"]["pad_size"]
            assert int(pad) == task.pad_size


def test_weight_decay_default_is_torchs():
    import torch

    p = torch.nn.Parameter(torch.zeros(1))
    assert torch.optim.AdamW([p]).defaults["weight_decay"] == TORCH_ADAMW_DEFAULT_WEIGHT_DECAY


def test_every_vendored_config_has_an_entry():
    vendored = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")}
    assert vendored == {t.config for t in EVA_TASKS.values()}


def test_evas_modules_default_to_constant_lr_warm_up():
    """No vendored config sets a scheduler, so eva's module default applies; our loops pass the same ConstantLR."""
    import inspect

    import torch
    from eva.core.models.modules import HeadModule
    from eva.vision.models.modules import SemanticSegmentationModule

    for module in (HeadModule, SemanticSegmentationModule):
        assert inspect.signature(module).parameters["lr_scheduler"].default is torch.optim.lr_scheduler.ConstantLR
    for task in EVA_TASKS.values():
        assert "lr_scheduler" not in load_eva_config(task.config)["model"]["init_args"]
