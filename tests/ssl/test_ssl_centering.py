"""Sinkhorn-Knopp and softmax centering: marginals, fp32 under autocast, same result across 2 processes."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pluto.services import free_port
from pluto.ssl import SoftmaxCenter, sinkhorn_knopp


def test_sinkhorn_rows_are_distributions_and_prototypes_get_equal_mass():
    torch.manual_seed(0)
    b, k = 64, 16
    logits = torch.randn(b, k)
    q = sinkhorn_knopp(logits, teacher_temp=0.1, n_iters=200)
    assert torch.allclose(q.sum(dim=1), torch.ones(b), atol=1e-5)  # each sample: a distribution
    assert torch.allclose(q.sum(dim=0), torch.full((k,), b / k), rtol=1e-3)  # each prototype: B/K
    # the recipe's 3 iterations: rows exact; columns approach B/K as iterations are added
    devs = []
    for n_iters in (1, 3, 10):
        q_n = sinkhorn_knopp(logits, teacher_temp=0.1, n_iters=n_iters)
        assert torch.allclose(q_n.sum(dim=1), torch.ones(b), atol=1e-5)
        devs.append((q_n.sum(dim=0) - b / k).abs().max().item())
    assert devs[0] > devs[1] > devs[2]


def test_sinkhorn_is_fp32_under_bf16_autocast_at_the_sharpest_teacher_temperature():
    """Head logits are cosine similarities; in bf16 at T = 0.04 they span 50 nats, still fine in fp32."""
    logits = (torch.rand(8, 32) * 2 - 1).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = sinkhorn_knopp(logits, teacher_temp=0.04)
    assert q.dtype == torch.float32 and torch.isfinite(q).all()


def test_softmax_center_is_an_ema_of_the_batch_mean():
    center = SoftmaxCenter(4, momentum=0.9)
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
    probs = center(logits, teacher_temp=0.5)
    assert torch.allclose(probs, torch.softmax(logits / 0.5, dim=-1))  # centre was 0 for this batch
    assert center.center.abs().sum() == 0  # moves only on update(), once per optimizer step
    center.update()
    assert torch.allclose(center.center, 0.1 * logits.mean(0, keepdim=True))
    probs2 = center(logits, teacher_temp=0.5)
    center.update()
    assert torch.allclose(probs2, torch.softmax((logits - 0.1 * logits.mean(0)) / 0.5, dim=-1))
    assert torch.allclose(center.center, 0.19 * logits.mean(0, keepdim=True))


def _worker(rank: int, world: int, port: int, logits: torch.Tensor, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        part = logits.chunk(world)[rank]
        center = SoftmaxCenter(logits.shape[1])
        center(part, teacher_temp=0.1)
        center.update()
        out[rank] = (sinkhorn_knopp(part, teacher_temp=0.1, n_iters=3), center.center.clone())
    finally:
        dist.destroy_process_group()


def test_centering_across_two_processes_equals_one_process_on_the_global_batch(monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # loopback only; no hostname lookup
    torch.manual_seed(0)
    logits = torch.randn(12, 10)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, free_port(), logits, out), nprocs=2, join=True)
        results = dict(out)
    single = sinkhorn_knopp(logits, teacher_temp=0.1, n_iters=3)
    assert torch.allclose(torch.cat([results[0][0], results[1][0]]), single, atol=1e-6)
    ref = SoftmaxCenter(10)
    ref(logits, teacher_temp=0.1)
    ref.update()
    for rank in (0, 1):
        assert torch.allclose(results[rank][1], ref.center, atol=1e-6)
    assert not torch.allclose(sinkhorn_knopp(logits[:6], teacher_temp=0.1, n_iters=3), single[:6], atol=1e-4)
