"""save_model -> load_model: safetensors + config.json, identical outputs, refusals that name the file."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from pluto.errors import CheckpointError
from pluto.models import load_model, read_config, save_model


def test_round_trip_gives_identical_outputs_at_every_patch_size(tiny, images, tmp_path):
    with torch.no_grad():
        for p in tiny.blocks[0].parameters():  # move off init so a silently re-initialised load would show
            p.add_(torch.randn_like(p) * 0.1)
    out = save_model(tiny, tmp_path / "m")
    assert sorted(f.name for f in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(out).eval()
    with torch.no_grad():
        for patch_size in tiny.patch_sizes:
            assert torch.equal(loaded.forward_features(images, patch_size), tiny.forward_features(images, patch_size))
    assert loaded.pretrained_cfg["input_size"] == (3, 112, 112)
    assert (loaded.patch_size, loaded.patch_sizes) == (tiny.patch_size, tiny.patch_sizes)


def test_config_records_arch_kwargs_cfg_patch_size_and_hash(tiny, tmp_path):
    save_model(tiny, tmp_path)
    cfg = read_config(tmp_path)
    assert cfg["arch"] == "pluto_tiny"
    assert cfg["kwargs"]["embed_dim"] == 96 and cfg["kwargs"]["patch_sizes"] == [16, 32]
    assert cfg["patch_size"] == 16 and cfg["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406]
    assert len(cfg["weights_sha256"]) == 64
    # RoPE periods and the resize matrices are derived state, not saved
    assert not any("rope" in k or "resampler" in k for k in load_file(tmp_path / "model.safetensors"))


def test_constructor_overrides_survive_the_round_trip(tmp_path):
    m = timm.create_model("pluto_tiny", num_reg_tokens=2, rope_rescale_coords=2.0)
    loaded = load_model(save_model(m, tmp_path))
    assert loaded.num_reg_tokens == 2 and loaded.rope.rescale_coords == 2.0


def test_unknown_arch_is_refused_naming_the_file(tiny, tmp_path):
    save_model(tiny, tmp_path)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["arch"] = "vit_base_patch16_224"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown arch 'vit_base_patch16_224'"):
        load_model(tmp_path)


def test_tampered_weights_are_refused(tiny, tmp_path):
    save_model(tiny, tmp_path)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(weights)
    tensors["cls_token"] = tensors["cls_token"] + 1
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 .* does not match"):
        load_model(tmp_path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json: not found"):
        load_model(tmp_path)


def test_save_refuses_a_model_that_is_not_a_pluto_arch(tmp_path):
    with pytest.raises(CheckpointError, match="vit_tiny_patch16_224"):
        save_model(timm.create_model("vit_tiny_patch16_224", num_classes=0), tmp_path)


def test_a_model_saved_before_the_32px_flexivit_kernel_loads_as_saved_and_warm_starts_today(tmp_path):
    """Older configs say base_patch_size null (the kernel was the patch size); timm drops None kwargs,
    so rebuilding them naively gave today's 32 x 32 kernel and refused the saved 16 x 16 weights."""
    from pluto.models import checkpoint_filter_fn

    old = timm.create_model("pluto_tiny", base_patch_size=16, flexi_interpolation="bicubic").eval()
    out = save_model(old, tmp_path / "old")
    cfg = json.loads((out / "config.json").read_text())
    cfg["kwargs"]["base_patch_size"] = None  # as models saved before the change recorded it
    del cfg["kwargs"]["flexi_interpolation"]
    (out / "config.json").write_text(json.dumps(cfg))
    loaded = load_model(out).eval()
    assert loaded.patch_embed.proj.weight.shape[-2:] == (16, 16)
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(x, 16), old.forward_features(x, 16))
    today = timm.create_model("pluto_tiny").eval()  # the warm start's target: a 32 x 32 kernel fitted to the 16 x 16 one
    today.load_state_dict(checkpoint_filter_fn(loaded.state_dict(), today))
    assert today.patch_embed.proj.weight.shape[-2:] == (32, 32)
    with torch.no_grad():  # the parent's function at p = 16 carries over (a PI-resize up to 32 and back would not)
        torch.testing.assert_close(today.forward_features(x, 16), old.forward_features(x, 16), atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # every other weight carries over unchanged
        assert all(torch.equal(v, today.state_dict()[k]) for k, v in loaded.state_dict().items() if k != "patch_embed.proj.weight")
