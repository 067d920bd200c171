"""Collapse monitors read the two DINO failure modes off the teacher's outputs, and the verdict names them."""

from __future__ import annotations

import math

import pytest
import torch

from pluto.ssl.collapse import collapse_monitors, collapse_verdict

K, D, B = 256, 32, 16


def test_monitors_tell_uniform_from_one_prototype_from_healthy():
    g = torch.Generator().manual_seed(0)
    cls = torch.randn(B, D, generator=g)
    healthy = torch.nn.functional.one_hot(torch.arange(B) * 7 % K, K).float()  # cosine 1 to a distinct prototype each
    uniform = torch.zeros(B, K)  # every prototype equally similar
    one = torch.nn.functional.one_hot(torch.zeros(B, dtype=torch.long), K).float()
    h, u, o = (collapse_monitors(cls, logits, 0.04) for logits in (healthy, uniform, one))
    assert u["teacher_kl_uniform"].item() < 1e-5 and h["teacher_kl_uniform"].item() > 3
    assert o["teacher_entropy"].item() < 0.5 < math.log(B) - 0.5 < h["teacher_entropy"].item()
    assert u["teacher_entropy"].item() == pytest.approx(math.log(K), rel=1e-5)
    # effective rank: B random directions in D > B dims span ~B; one repeated direction spans 1
    assert h["cls_rank"].item() > B / 2
    assert collapse_monitors(cls[:1].repeat(B, 1), healthy, 0.04)["cls_rank"].item() < 1.01
    assert "center_norm" not in h and collapse_monitors(cls, healthy, 0.04, torch.ones(1, K))["center_norm"].item() == 16.0


def _history(n, **values):
    return [dict(teacher_entropy=5.0, teacher_kl_uniform=2.0, cls_std=0.1, cls_rank=6.0) | values for _ in range(n)]


def test_verdict_needs_a_window_and_names_the_mode():
    assert collapse_verdict(_history(5, teacher_kl_uniform=0.0), D) is None  # too few steps to say
    assert collapse_verdict(_history(50), D) is None
    assert collapse_verdict(_history(50, teacher_kl_uniform=0.05), D) == "uniform"
    assert collapse_verdict(_history(50, teacher_entropy=0.3), D) == "one-prototype"
    assert collapse_verdict(_history(50, cls_std=0.001), D) == "cls-spread"
    # only the recent window counts: a run that collapsed early and recovered is not flagged
    assert collapse_verdict(_history(50, teacher_kl_uniform=0.0) + _history(50), D) is None


def test_trainer_warns_and_tags_the_run_when_the_verdict_changes(tmp_path, caplog):
    import json

    from pluto.tracking import Tracker
    from pluto.train.trainer import _watch_collapse

    tracker = Tracker(tmp_path / "metrics.jsonl")
    verdict = _watch_collapse(_history(50, teacher_kl_uniform=0.01), D, None, tracker, step=50)
    assert verdict == "uniform" and "uniform collapse" in caplog.text
    assert _watch_collapse(_history(50, teacher_kl_uniform=0.01), D, verdict, tracker, step=60) == "uniform"  # no repeat
    assert _watch_collapse(_history(50), D, verdict, tracker, step=70) is None
    tracker.close()
    tags = [r["tags"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "tags" in r]
    assert tags == [{"pluto.collapse": "uniform", "pluto.collapse_step": "50"}, {"pluto.collapse": "none", "pluto.collapse_step": "70"}]
