"""Checkpoints: round trip, corrupt-newest fallback, no pickle code execution, disk-full safety."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from pluto.errors import CheckpointError
from pluto.train.checkpoint import (
    CheckpointMeta,
    capture_rng,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    restore_rng,
    save_checkpoint,
)


def _meta(step: int) -> CheckpointMeta:
    return CheckpointMeta(step=step, global_sample_index=step * 8, world_size=2, arch="pluto_tiny",
                          config_json=json.dumps({"lr": 1e-3}), git_sha="abc", created_at=1.0)


def _state(seed: int, n: int = 16) -> dict:
    model = torch.nn.Linear(n, n)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, n)).sum().backward()
    opt.step()
    return {"student": model.state_dict(), "optimizer": opt.state_dict(), "rng": capture_rng()}


def test_meta_round_trip():
    m = _meta(5)
    assert CheckpointMeta.from_dict(m.to_dict()) == m and m.config == {"lr": 1e-3}


def test_round_trip_restores_tensors_optimizer_and_rng(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = _state(0)
    path = save_checkpoint(tmp_path, _meta(7), state)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    meta, loaded = load_checkpoint(path)
    assert meta == _meta(7)
    for k, v in state["student"].items():
        assert torch.equal(v, loaded["student"][k])
    assert loaded["optimizer"]["param_groups"][0]["lr"] == 1e-3
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    restore_rng(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_keeps_last_k_and_skips_truncated_newest(tmp_path, caplog):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, _meta(step), _state(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-000000004.pt", "ckpt-000000003.pt"]
    newest = list_checkpoints(tmp_path)[0]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    meta, _, path = load_latest(tmp_path)
    assert meta.step == 3 and path.name == "ckpt-000000003.pt"
    assert "ckpt-000000004.pt" in caplog.text and "skipping" in caplog.text


def test_empty_dir_is_fresh_start_but_all_corrupt_is_an_error(tmp_path):
    assert load_latest(tmp_path / "none") is None
    (tmp_path / "ckpt-000000001.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="none of 1 checkpoints"):
        load_latest(tmp_path)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_foreign_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "ckpt-000000009.pt"
    torch.save({"format": "pluto-train-ckpt/1", "payload": _Evil(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_non_plain_state_is_refused_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match="ndarray"):
        save_checkpoint(tmp_path, _meta(1), {"extra": np.zeros(3)})
    assert list_checkpoints(tmp_path) == []


def test_disk_full_leaves_previous_checkpoint_intact(tmp_path):
    first = save_checkpoint(tmp_path, _meta(1), {"w": torch.zeros(1000)})
    before = first.read_bytes()
    limit = first.stat().st_size + 4096
    code = textwrap.dedent(f"""
        import resource, signal, json, torch
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from pluto.errors import CheckpointError
        from pluto.train.checkpoint import CheckpointMeta, save_checkpoint
        meta = CheckpointMeta(2, 16, 1, "pluto_tiny", "{{}}", "abc", 1.0)
        try:
            save_checkpoint({str(tmp_path)!r}, meta, {{"w": torch.zeros(1_000_000)}})
        except CheckpointError as exc:
            print("REFUSED", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "REFUSED" in out.stdout and "previous checkpoints kept" in out.stdout, out.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    assert first.read_bytes() == before
    meta, state, _ = load_latest(tmp_path)
    assert meta.step == 1 and state["w"].shape == (1000,)
