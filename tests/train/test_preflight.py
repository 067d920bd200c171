"""Guard rails: refused settings name the problem; the memory model against known deployments."""

from __future__ import annotations

import pytest

from pluto.errors import ConfigError
from pluto.ssl.config import SSLConfig
from pluto.train.config import TrainConfig
from pluto.train.memory import GB, arch_shape, estimate_memory
from pluto.train.preflight import check_config
from pluto.train.recipes import recipe_config

H200_BYTES = 141e9
H100_BYTES = 80e9


def test_train_config_round_trips_through_json_dict():
    cfg = recipe_config("pluto_4s")
    import json

    again = TrainConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg and again.ssl.patch_sizes == (8, 16, 32)
    assert cfg.resolved_bucket_cap_mb == 25 and recipe_config("pluto_4g").resolved_bucket_cap_mb == 360


def test_accumulation_reaches_the_paper_global_batch_on_fewer_gpus():
    cfg = recipe_config("pluto_4g")  # 32 tiles per GPU, global batch 1024
    assert check_config(cfg, world_size=32).accumulation_steps == 1  # 4 x 8 H200, PLUTO-4 §3.2
    assert check_config(cfg, world_size=8).accumulation_steps == 4


def test_refuses_indivisible_global_batch_and_small_koleo_batch_together():
    cfg = TrainConfig(batch_per_gpu=2, global_batch=10, ssl=SSLConfig(koleo_weight=0.1))
    with pytest.raises(ConfigError) as err:
        check_config(cfg, world_size=3)
    msg = str(err.value)
    assert "global_batch=10 is not divisible by batch_per_gpu x world_size = 2 x 3" in msg
    assert "KoLeo" in msg and "batch_per_gpu=2" in msg
    check_config(TrainConfig(batch_per_gpu=2, global_batch=12, ssl=SSLConfig(koleo_weight=0.0, kde_weight=0.1)), 3)


def test_refuses_fp16_and_knn_without_data():
    with pytest.raises(ConfigError, match="precision='fp16'.*overflows"):
        check_config(TrainConfig(precision="fp16"), 1)
    with pytest.raises(ConfigError, match="knn_data"):
        check_config(TrainConfig(knn_every=10), 1)


def test_vit_g_at_32_tiles_needs_activation_checkpointing_on_h200():
    g = recipe_config("pluto_4g")
    with pytest.raises(ConfigError, match="pluto_4g at batch_per_gpu=32.*enable activation_checkpointing"):
        check_config(g, 32, gpu_memory_bytes=H200_BYTES)
    from dataclasses import replace

    plan = check_config(replace(g, activation_checkpointing=True), 32, gpu_memory_bytes=H200_BYTES)
    assert plan.memory.total < 0.5 * H200_BYTES
    # static state alone: ~1.2B params x (4 weights + 4 grads + 8 AdamW + 4 teacher) bytes
    static = plan.memory.weights + plan.memory.grads + plan.memory.optimizer + plan.memory.teacher
    assert 22 * GB < static < 26 * GB


def test_midnight_vit_g_at_12_tiles_fits_an_80gb_h100():
    """Midnight trained ViT-g/14 at 12 tiles/GPU on 80 GB H100s (Karasikov et al. 2025)."""
    est = estimate_memory(arch_shape("pluto_4g"), 12, recipe_config("pluto_4g").ssl)
    assert 0.5 * H100_BYTES < est.total < 0.9 * H100_BYTES


def test_activations_scale_with_batch_and_bucket_view_saves_a_gradient_copy():
    shape, ssl = arch_shape("pluto_4s"), recipe_config("pluto_4s").ssl
    a16, a32 = (estimate_memory(shape, b, ssl).activations for b in (16, 32))
    assert a32 == pytest.approx(2 * a16)
    no_view = estimate_memory(shape, 32, ssl, gradient_as_bucket_view=False)
    assert no_view.ddp_buckets == no_view.grads > 0
    assert estimate_memory(shape, 32, ssl, precision="fp32").activations > a32
