"""Schedules' endpoints, deterministic patch-size draws, layer-wise lr decay groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm

from pluto.errors import ConfigError
from pluto.ssl import SSLConfig, build_schedules, param_groups, sample_patch_size


def test_schedules_have_the_recipe_endpoints():
    cfg = SSLConfig(base_lr=4e-3, min_lr=1e-6, warmup_frac=0.1, teacher_temp_warmup_frac=0.3)
    s = build_schedules(cfg, total_iters=1000, global_batch=256)
    peak = 4e-3 * math.sqrt(256 / 1024)
    assert len(s) == 1000 and s.lr[0] == 0.0
    assert s.lr[100] == pytest.approx(peak) and s.lr.max() == pytest.approx(peak)  # warmup ends at the peak
    assert np.all(np.diff(s.lr[:101]) > 0) and np.all(np.diff(s.lr[100:]) <= 0)
    assert s.lr[-1] == pytest.approx(1e-6)
    assert s.teacher_temp[0] == pytest.approx(0.04) and s.teacher_temp[299] == pytest.approx(0.07)
    assert np.all(s.teacher_temp[300:] == 0.07)
    assert s.momentum[0] == pytest.approx(0.992) and s.momentum[-1] == pytest.approx(1.0)
    assert np.all(np.diff(s.momentum) >= 0)
    assert np.all(s.weight_decay == 0.04)  # fixed, as PLUTO-4
    assert s.freeze_last_layer_iters == 10


def test_weight_decay_cosine_option_and_bad_lengths():
    s = build_schedules(SSLConfig(weight_decay_end=0.4), total_iters=50, global_batch=1024)
    assert s.weight_decay[0] == pytest.approx(0.04) and s.weight_decay[-1] == pytest.approx(0.4)
    with pytest.raises(ConfigError, match="total_iters"):
        build_schedules(SSLConfig(), total_iters=0, global_batch=32)


def test_patch_size_is_a_pure_function_of_step_and_seed():
    sizes = (8, 16, 32)
    draws = [sample_patch_size(i, 3, sizes) for i in range(300)]
    assert draws == [sample_patch_size(i, 3, sizes) for i in range(300)]  # every rank draws the same
    assert {8, 16, 32} == set(draws) and max(draws.count(p) for p in sizes) < 140
    assert draws != [sample_patch_size(i, 4, sizes) for i in range(300)]


def test_param_groups_decay_lr_by_depth_and_skip_weight_decay_on_norms_biases_tokens(make_objective, small_cfg):
    obj = make_objective(small_cfg)
    groups = param_groups(obj.student, lr=1.0, wd=0.1, layer_decay=0.5, patch_embed_lr_mult=0.2)
    by_name = {n: g for g in groups for n in g["param_names"]}
    trainable = [n for n, p in obj.student.named_parameters() if p.requires_grad]
    assert sorted(by_name) == sorted(trainable) and sum(len(g["params"]) for g in groups) == len(trainable)
    depth = len(obj.student["backbone"].blocks)  # 4 blocks -> ids 1..4, head/norm id 5
    assert by_name["dino_head.mlp.0.weight"]["lr"] == 1.0
    assert by_name["backbone.blocks.3.attn.qkv.weight"]["lr"] == pytest.approx(0.5)
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["lr"] == pytest.approx(0.5**depth)
    assert by_name["backbone.patch_embed.proj.weight"]["lr"] == pytest.approx(0.2 * 0.5 ** (depth + 1))
    assert by_name["backbone.cls_token"]["weight_decay"] == 0.0
    assert by_name["backbone.blocks.0.norm1.weight"]["weight_decay"] == 0.0
    assert by_name["backbone.blocks.0.gamma_1"]["weight_decay"] == 0.0
    assert by_name["backbone.blocks.0.attn.q_bias"]["weight_decay"] == 0.0
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["weight_decay"] == pytest.approx(0.1)
    assert by_name["dino_head.last_layer.weight"]["is_last_layer"]
    # plain timm ViTs work too (the benchmark's baseline)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    vit_groups = param_groups(vit, lr=1.0, wd=0.1, layer_decay=0.9)
    assert sum(len(g["params"]) for g in vit_groups) == len(list(vit.parameters()))
