"""DinoV2Objective on the real pluto_tiny backbone: EMA teacher, gradients, fp32 losses, freeze."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pluto.errors import PlutoError
from pluto.ssl import build_schedules, param_groups, train_step


def test_teacher_gets_no_gradients_and_follows_the_ema_exactly(make_objective, make_batch, small_cfg, crc_tiles):
    obj = make_objective(small_cfg)
    assert list(obj.student.keys()) == list(obj.teacher.keys()) == ["backbone", "dino_head"]
    for (ns, ps), (nt, pt) in zip(obj.student.named_parameters(), obj.teacher.named_parameters()):
        assert ns == nt and torch.equal(ps, pt) and not pt.requires_grad  # starts as a copy
    batch = make_batch(small_cfg, crc_tiles[:4])
    losses = obj(batch, teacher_temp=0.04)
    losses["loss"].backward()
    assert all(p.grad is None for p in obj.teacher.parameters())
    assert all(p.grad is not None for p in obj.student.parameters())
    with torch.no_grad():
        for p in obj.student.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    teacher_before = [p.detach().clone() for p in obj.teacher.parameters()]
    student_now = [p.detach().clone() for p in obj.student.parameters()]
    obj.update_teacher(0.9)
    for t0, s, t1 in zip(teacher_before, student_now, obj.teacher.parameters()):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * s, atol=1e-6, rtol=0)
    obj.train()
    assert not obj.teacher.training and obj.student.training

MONITORS = {"teacher_entropy", "teacher_kl_uniform", "cls_std", "cls_rank"}


def test_losses_are_fp32_under_bf16_autocast(make_objective, make_batch, small_cfg, crc_tiles):
    cfg = dataclasses.replace(small_cfg, kde_weight=0.05, ibot_separate_head=True)
    obj = make_objective(cfg)
    head_dtypes = []
    obj.student["dino_head"].register_forward_hook(lambda m, i, o: head_dtypes.append(o.dtype))
    batch = make_batch(cfg, crc_tiles[:4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = obj(batch, teacher_temp=0.04)
    assert head_dtypes == [torch.bfloat16]  # the heads did run in bf16 ...
    assert set(losses) == {"loss", "dino", "ibot", "koleo", "kde"} | MONITORS
    for name, value in losses.items():  # ... and every loss came out in fp32
        assert value.dtype == torch.float32 and value.ndim == 0 and torch.isfinite(value), name
    expected = losses["dino"] + losses["ibot"] + 0.1 * losses["koleo"] + 0.05 * losses["kde"]
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    losses["loss"].backward()
    assert obj.student["ibot_head"].last_layer.weight.grad is not None


def test_ibot_gradient_reaches_only_masked_patch_tokens(make_objective, make_batch, small_cfg, crc_tiles):
    """With only the iBOT term on, d loss / d (student output tokens) is zero except at masked patches."""
    cfg = dataclasses.replace(small_cfg, dino_weight=0.0, koleo_weight=0.0)
    obj = make_objective(cfg)
    captured = []

    def keep(module, inputs, output):
        output.retain_grad()
        captured.append(output)

    obj.student["backbone"].norm.register_forward_hook(keep)
    batch = make_batch(cfg, crc_tiles[:4])
    masks = batch["masks_p16"]
    losses = obj(batch, teacher_temp=0.04)
    assert set(losses) == {"loss", "ibot"} | MONITORS and len(captured) == 1  # no local pass
    losses["loss"].backward()
    grad = captured[0].grad
    pfx = obj.num_prefix_tokens
    patch_grad = grad[:, pfx:].abs().sum(-1)
    assert masks.any() and (patch_grad[masks] > 0).all()
    assert (patch_grad[~masks] == 0).all() and (grad[:, :pfx] == 0).all()


def test_missing_masks_for_the_patch_size_are_named(make_objective, make_batch, small_cfg, crc_tiles):
    obj = make_objective(small_cfg)
    batch = make_batch(small_cfg, crc_tiles[:2])
    with pytest.raises(PlutoError, match="masks_p32"):
        obj(batch, teacher_temp=0.04, patch_size=32)


def test_softmax_centering_updates_its_centre(make_objective, make_batch, small_cfg, crc_tiles):
    cfg = dataclasses.replace(small_cfg, centering="softmax")
    obj = make_objective(cfg)
    obj(make_batch(cfg, crc_tiles[:2]), teacher_temp=0.04)
    obj.update_teacher(0.99)  # the centre moves with the teacher, once per optimizer step
    assert obj.dino_targets.softmax_center.center.abs().sum() > 0
    assert "dino_targets.softmax_center.center" in obj.state_dict()


def test_train_step_freezes_the_prototypes_then_trains_them(make_objective, make_batch, small_cfg, crc_tiles):
    obj = make_objective(small_cfg)
    opt = torch.optim.AdamW(param_groups(obj.student, 1e-3, 0.04))
    sched = build_schedules(small_cfg, total_iters=100, global_batch=4)
    sched = dataclasses.replace(sched, lr=sched.lr + 1e-3, freeze_last_layer_iters=1)
    batch = make_batch(small_cfg, crc_tiles[:4])
    proto = obj.student["dino_head"].last_layer.weight
    proto0, block0 = proto.detach().clone(), obj.student["backbone"].blocks[0].mlp.fc1.weight.detach().clone()
    teacher0 = obj.teacher["dino_head"].mlp[0].weight.detach().clone()
    out = train_step(obj, opt, batch, sched, it=0)
    assert torch.equal(proto, proto0)  # frozen at iteration 0
    assert not torch.equal(obj.student["backbone"].blocks[0].mlp.fc1.weight, block0)
    assert not torch.equal(obj.teacher["dino_head"].mlp[0].weight, teacher0)  # EMA moved the teacher
    assert out["it"] == 0 and out["patch_size"] == 16 and out["momentum"] == pytest.approx(sched.momentum[0])
    train_step(obj, opt, batch, sched, it=1)
    assert not torch.equal(proto, proto0)  # trained after the freeze
