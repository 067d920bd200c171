"""Each arch's recipe equals its cited sources; Settings bind it under explicit settings; the preflight refuses what a model cannot run."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import timm
import yaml

from pluto.config import load_settings
from pluto.errors import ConfigError
from pluto.ssl.config import ssl_preset
from pluto.train.config import TrainConfig
from pluto.train.preflight import check_config
from pluto.train.recipes import recipe, recipe_config

PAPER = Path(os.environ.get("PLUTO_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "papers" / "pluto4-paper.txt"
DINOV2 = yaml.safe_load((Path(__file__).parent / "data" / "dinov2_configs.yaml").read_text())
ARCH_FILE = {"pluto_4s": "vitl16_short.yaml", "pluto_4g": "vitg14.yaml"}  # dinov2's config for the architecture
CENTERING = {"centering": "softmax", "sinkhorn_knopp": "sinkhorn"}  # dinov2's names -> ours


def _dinov2_value(file: str, key: str) -> object:
    section, name = key.split(".")
    return DINOV2[file].get(section, {}).get(name)


def _cited_dinov2(source: str) -> tuple[str, str, object]:
    """'dinov2 FILE KEY' or 'dinov2 FILE KEY / [FILE2] KEY2' (a fraction of epochs) -> (file, key, value)."""
    m = re.fullmatch(r"dinov2 (\S+\.yaml) (\S+)(?: / (?:(\S+\.yaml) )?(\S+))?", source)
    assert m, source
    file, key, file2, key2 = m.groups()
    value = _dinov2_value(file, key)
    if key2:
        value = value / _dinov2_value(file2 or file, key2)
    return file, key, value


@pytest.mark.parametrize("arch", ["pluto_4s", "pluto_4g"])
def test_recipe_values_equal_their_cited_sources_in_precedence_order(arch):
    paper = " ".join(PAPER.read_text().split())
    for field, cited in recipe(arch).items():
        if cited.source.startswith("PLUTO-4 §"):
            assert cited.quote in paper, (field, cited.quote)
            if isinstance(cited.value, (int, float, tuple)) and not isinstance(cited.value, bool):
                shown = f"[{', '.join(map(str, cited.value))}]" if len(cited.value if isinstance(cited.value, tuple) else ()) > 1 else None
                number = str(cited.value[0] if isinstance(cited.value, tuple) else cited.value)
                assert (shown or number) in cited.quote, (field, cited.quote)
            continue
        file, key, value = _cited_dinov2(cited.source)
        if field == "ssl.centering":
            value = CENTERING[value]
        if isinstance(value, list):
            value = tuple(value)
        assert value == pytest.approx(cited.value) if isinstance(value, float) else value == cited.value, (field, cited.source)
        if file == "ssl_default_config.yaml" and " / " not in cited.source:  # the arch's own config must not set it
            assert _dinov2_value(ARCH_FILE[arch], key) is None, (field, f"{ARCH_FILE[arch]} sets {key}")
    for key in ("optim.base_lr", "optim.layerwise_decay", "student.drop_path_rate", "crops.local_crops_size", "teacher.momentum_teacher"):
        if _dinov2_value(ARCH_FILE[arch], key) is not None:  # every arch-config override the recipe covers is cited from it
            assert any(c.source == f"dinov2 {ARCH_FILE[arch]} {key}" for c in recipe(arch).values()), key


def test_the_papers_batches_patch_sizes_and_dinov2_decay_and_drop_path():
    s, g = recipe_config("pluto_4s"), recipe_config("pluto_4g")
    assert (s.ssl.patch_sizes, s.global_batch, s.batch_per_gpu) == ((8, 16, 32), 1536, 32)
    assert (g.ssl.patch_sizes, g.global_batch, g.ssl.local_crop_px) == ((14,), 1024, 98)
    assert (s.ssl.layer_decay, g.ssl.layer_decay) == (0.9, 1.0)  # vitg14.yaml layerwise_decay: 1.0
    assert (s.drop_path_rate, g.drop_path_rate, s.drop_path_uniform) == (0.3, 0.4, True)
    assert s.ssl.weight_decay_end is None and g.ssl.weight_decay_end is None  # PLUTO-4: fixed weight decay over dinov2's cosine
    assert (g.ssl.head_bottleneck_dim, g.ssl.ibot_head_bottleneck_dim, g.ssl.ibot_separate_head) == (384, 256, True)
    assert check_config(g, world_size=32).accumulation_steps == 1  # PLUTO-4's 4 x 8 GPUs at 32 tiles each
    assert check_config(s, world_size=48).accumulation_steps == 1  # 1536 = 48 GPUs x 32 tiles
    assert check_config(recipe_config("pluto_tiny"), world_size=1).accumulation_steps == 1


def test_pluto_tiny_keeps_the_demo_preset():
    tiny = recipe_config("pluto_tiny")
    assert tiny.ssl == ssl_preset("demo") and (tiny.batch_per_gpu, tiny.global_batch, tiny.drop_path_rate) == (8, 8, 0.0)


def test_settings_bind_the_recipe_under_file_env_and_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("PLUTO_TRAIN__ARCH", "pluto_4s")
    s = load_settings().train
    assert (s.ssl.patch_sizes, s.global_batch, s.ssl.layer_decay, s.drop_path_rate, s.recipe_overrides) == ((8, 16, 32), 1536, 0.9, 0.3, ())
    monkeypatch.setenv("PLUTO_TRAIN__SSL__BASE_LR", "0.001")
    file = tmp_path / "run.yaml"
    file.write_text("train:\n  drop_path_rate: 0.1\n  ssl:\n    layer_decay: 0.9\n")  # 0.9 is the recipe's: not an override
    s = load_settings(file, train={"global_batch": 3072}).train
    assert (s.ssl.base_lr, s.drop_path_rate, s.global_batch, s.ssl.patch_sizes) == (0.001, 0.1, 3072, (8, 16, 32))
    assert set(s.recipe_overrides) == {"ssl.base_lr", "drop_path_rate", "global_batch"}
    monkeypatch.setenv("PLUTO_TRAIN__ARCH", "pluto_4g")
    g = load_settings(file).train
    assert (g.ssl.layer_decay, g.ssl.patch_sizes, g.global_batch, g.ssl.base_lr) == (0.9, (14,), 1024, 0.001)
    assert "ssl.layer_decay" in g.recipe_overrides  # 0.9 departs from vitg14's 1.0
    monkeypatch.setenv("PLUTO_TRAIN__ARCH", "vit_base_patch16_224")
    with pytest.raises(ConfigError, match=r"train.arch='vit_base_patch16_224' has no recipe"):
        load_settings()


def test_preflight_refuses_what_the_model_cannot_run_before_building_it(monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the preflight built a model")

    monkeypatch.setattr(timm, "create_model", no_model)
    wrong_patch = recipe_config("pluto_4g", ssl={"patch_sizes": (16,), "local_crop_px": 96})
    with pytest.raises(ConfigError) as err:
        check_config(wrong_patch, world_size=32)
    assert "ssl.patch_sizes=(16,): pluto_4g has no patch size 16 (its patch sizes: (14,))" in str(err.value)
    with pytest.raises(ConfigError) as err:
        check_config(recipe_config("pluto_4s", drop_path_rate=1.2, ssl={"layer_decay": 1.5}), world_size=48)
    assert "drop_path_rate=1.2 must be in [0, 1)" in str(err.value) and "ssl.layer_decay=1.5" in str(err.value)
    with pytest.raises(ConfigError, match="arch='vit_small_patch16_224' is not a PLUTO architecture"):
        check_config(TrainConfig(arch="vit_small_patch16_224"), world_size=1)


def test_pluto_config_shows_the_resolved_recipe_with_sources(monkeypatch, capsys):
    import sys

    from pluto.cli import main

    monkeypatch.setenv("PLUTO_TRAIN__ARCH", "pluto_4g")
    monkeypatch.setenv("PLUTO_TRAIN__SSL__BASE_LR", "0.0001")
    monkeypatch.setattr(sys, "argv", ["pluto", "config"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code in (0, None)
    train = json.loads(capsys.readouterr().out)["train"]
    assert (train["ssl"]["patch_sizes"], train["global_batch"], train["ssl"]["layer_decay"]) == ([14], 1024, 1.0)
    monkeypatch.setattr(sys, "argv", ["pluto", "config", "--recipe"])
    with pytest.raises(SystemExit):
        main()
    lines = capsys.readouterr().out.splitlines()
    assert any(re.match(r"ssl\.layer_decay\s+1\.0\s+dinov2 vitg14\.yaml optim\.layerwise_decay$", ln) for ln in lines)
    assert any(re.match(r"global_batch\s+1024\s+PLUTO-4 §3\.2", ln) for ln in lines)
    assert any(re.match(r"ssl\.base_lr\s+0\.0001\s+explicit \(recipe: 0\.0002, dinov2 vitg14\.yaml optim\.base_lr\)", ln) for ln in lines)


def test_the_student_gets_the_stochastic_depth_and_the_run_logs_the_overrides(tmp_path, tiles_manifest, tiny_config):
    import torch

    from pluto.train.trainer import build_objective, train

    cfg = tiny_config(tmp_path, tiles_manifest, steps=1, ckpt_every=1, drop_path_rate=0.2, recipe_overrides=("drop_path_rate",))
    obj = build_objective(cfg, torch.device("cpu"))
    assert [float(b.drop_path1.drop_prob) for b in obj.student["backbone"].blocks] == [0.2] * 4  # dinov2: uniform
    assert not any(hasattr(b.drop_path1, "drop_prob") for b in obj.teacher["backbone"].blocks)  # the teacher has none
    train(cfg)
    params: dict[str, str] = {}
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        params.update(json.loads(line).get("params", {}))
    assert (params["recipe_overrides"], params["drop_path_rate"], params["arch"]) == ("drop_path_rate", "0.2", "pluto_tiny")


def test_layerscale_is_dinov2s_initial_gamma_of_student_and_teacher_and_zero_is_refused():
    import torch

    from pluto.train.trainer import build_objective

    assert recipe_config("pluto_4s").layerscale == recipe_config("pluto_4g").layerscale == 1e-5  # student.layerscale
    obj = build_objective(recipe_config("pluto_tiny", layerscale=0.1, ssl={"n_prototypes": 64, "ibot_n_prototypes": 64}), torch.device("cpu"))
    for tower in (obj.student, obj.teacher):
        gammas = [g for b in tower["backbone"].blocks for g in (b.gamma_1, b.gamma_2)]  # timm EvaBlock LayerScale
        assert all(torch.all(g == 0.1) for g in gammas)
    with pytest.raises(ConfigError, match="layerscale=0"):
        check_config(recipe_config("pluto_tiny", layerscale=0.0), world_size=1)
