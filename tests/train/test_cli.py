"""`pluto pretrain` end to end: settings file + flags -> local torchrun job -> checkpoint and export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pluto.models import load_model
from pluto.train.checkpoint import load_latest


@pytest.mark.slow
def test_pluto_pretrain_local_on_an_image_folder(tmp_path, crc_patches, tiny_config):
    cfg = tiny_config(tmp_path / "unused", crc_patches / "images")
    train = {k: v for k, v in cfg.to_dict().items() if k not in ("run_dir", "data", "cluster")}
    settings = tmp_path / "s.yaml"
    settings.write_text(yaml.safe_dump({"train": {**train, "tracking_uri": "", "cluster": {"job_name": "cli", "max_restarts": 0}}}))
    cli = Path(sys.executable).parent / "pluto"
    out = subprocess.run([str(cli), "-c", str(settings), "pretrain", "--work", str(tmp_path / "w"), "--steps", "2",
                          "--data", str(crc_patches / "images"), "--data-kind", "images"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "local job" in out.stdout and "succeeded" in out.stdout
    run = tmp_path / "w" / "train"
    meta, _, _ = load_latest(run / "checkpoints")
    assert meta.step == 2 and meta.config["data_kind"] == "images"
    assert load_model(run / "export").embed_dim == 96
