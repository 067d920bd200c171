"""How a run starts: `init_from` warm-starts both backbones (a resume ignores it); `parent_run_id` nests its MLflow run."""

from __future__ import annotations

import pytest
import timm
import torch

from pluto.errors import CheckpointError
from pluto.models import save_model
from pluto.train.trainer import build_objective, train, warm_start


def _saved(tmp_path, arch: str, seed: int) -> tuple:
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False)
    return save_model(model, tmp_path / f"{arch}-{seed}"), model.state_dict()


def _exported(run_dir) -> dict[str, torch.Tensor]:
    from pluto.models import load_model

    return load_model(run_dir / "export").state_dict()


def test_init_from_loads_both_backbones_and_keeps_fresh_heads(tmp_path, tiles_manifest, tiny_config):
    donor_dir, donor = _saved(tmp_path, "pluto_tiny", seed=7)
    cfg = tiny_config(tmp_path / "run", tiles_manifest, init_from=str(donor_dir))
    torch.manual_seed(cfg.seed)
    fresh = build_objective(cfg, torch.device("cpu"))
    torch.manual_seed(cfg.seed)
    obj = build_objective(cfg, torch.device("cpu"))
    warm_start(obj, cfg.init_from, cfg.arch)
    for name in ("student", "teacher"):
        tower, fresh_tower = getattr(obj, name), getattr(fresh, name)
        got = tower["backbone"].state_dict()
        assert got.keys() == donor.keys()
        assert all(torch.equal(got[k], v) for k, v in donor.items()), name
        key = "patch_embed.proj.weight"
        assert not torch.equal(fresh_tower["backbone"].state_dict()[key], donor[key])  # a fresh init differs: not vacuous
        heads = {k: v for k, v in tower.state_dict().items() if not k.startswith("backbone.")}
        assert heads and all(torch.equal(v, fresh_tower.state_dict()[k]) for k, v in heads.items())


@pytest.mark.integration
def test_a_run_starts_from_init_from_nested_under_its_parent_and_a_resume_ignores_it(tmp_path, tiles_manifest, tiny_config,
                                                                                     mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.url)
    parent = client.create_run("0", run_name="retrain").info.run_id
    donor_dir, donor = _saved(tmp_path, "pluto_tiny", seed=7)
    other_dir, other = _saved(tmp_path, "pluto_tiny", seed=8)
    kw = {"steps": 1, "ckpt_every": 1, "tracking_uri": mlflow_server.url, "experiment": "t-run-start", "parent_run_id": parent}
    first = train(tiny_config(tmp_path / "run", tiles_manifest, init_from=str(donor_dir), **kw))
    assert [h["step"] for h in first.history] == [1]
    teacher = _exported(tmp_path / "run")
    # one EMA update (momentum ~0.99) away from the donor; a fresh init is ~0.02 away per weight
    assert all(torch.allclose(teacher[k], v, atol=1e-3) for k, v in donor.items())
    assert not torch.allclose(teacher["patch_embed.proj.weight"], other["patch_embed.proj.weight"], atol=1e-3)

    run = client.get_run((tmp_path / "run" / "mlflow_run_id").read_text())
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.params["init_from"] == str(donor_dir)

    again = train(tiny_config(tmp_path / "run", tiles_manifest, init_from=str(other_dir), **kw))
    assert again.history == []  # resumed at step 1 of 1: the checkpoint's weights, not other's
    assert all(torch.equal(v, teacher[k]) for k, v in _exported(tmp_path / "run").items())
    assert client.get_run(run.info.run_id).info.status == "FINISHED"  # the resume re-attached to the same run


def test_init_from_of_another_arch_is_refused(tmp_path, tiles_manifest, tiny_config):
    small_dir, _ = _saved(tmp_path, "pluto_4s", seed=0)
    cfg = tiny_config(tmp_path / "run", tiles_manifest, init_from=str(small_dir))
    with pytest.raises(CheckpointError, match="init_from holds a pluto_4s model, this run trains pluto_tiny"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
