"""Embedded defaults that keep data: file stores under the work dir, fixed service ports (issue 14)."""

from __future__ import annotations

import socket

import pytest

from pluto.config import load_settings
from pluto.data_version import checkout_data, commit_data, table_hash
from pluto.errors import CheckpointError, PlutoError
from pluto.registry.checkpoint_store import CheckpointRef, download_checkpoint, upload_checkpoint
from pluto.services import start_services

from tests.chain.test_data_version import _tables


def test_unset_stores_are_file_folders_under_the_work_dir(tmp_path):
    s = load_settings(paths={"work_dir": str(tmp_path / "w")})
    assert s.chain.dvc_remote == (tmp_path / "w" / "stores" / "dvc").as_uri()
    assert s.chain.checkpoint_store == (tmp_path / "w" / "stores" / "checkpoints").as_uri()
    team = load_settings(paths={"work_dir": str(tmp_path)}, chain={"dvc_remote": "s3://team/dvc"})
    assert team.chain.dvc_remote == "s3://team/dvc"  # a configured store is kept as given


def test_file_checkpoint_store_is_content_addressed_and_verified(tmp_path):
    ckpt = tmp_path / "ckpt-000060.pt"
    ckpt.write_bytes(b"weights" * 1000)
    store = (tmp_path / "stores" / "checkpoints").as_uri()
    ref = upload_checkpoint(ckpt, store)
    assert ref.uri.startswith("file://") and ref.bytes == 7000
    assert upload_checkpoint(ckpt, store) == ref  # same bytes, same place: nothing copied twice
    back = download_checkpoint(CheckpointRef.from_dict(ref.to_dict()), tmp_path / "back.pt")
    assert back.read_bytes() == ckpt.read_bytes()
    with pytest.raises(CheckpointError, match="does not match"):
        download_checkpoint(CheckpointRef(ref.uri, "0" * 64, ref.bytes), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not found"):
        download_checkpoint(CheckpointRef(ref.uri + ".gone", ref.sha256, ref.bytes), tmp_path / "gone.pt")


def test_data_version_in_the_file_remote_outlives_the_work_tables(tmp_path):
    remote = load_settings(paths={"work_dir": str(tmp_path / "work")}).chain.dvc_remote
    work = tmp_path / "work"
    _tables(work, ["2026-01-01T00:00:00", "2026-01-01T00:00:01"])
    v1 = commit_data(work, remote)
    fresh = tmp_path / "fresh"
    assert checkout_data(fresh, work / "data.dvc", remote).md5 == v1.md5
    assert table_hash(fresh / "catalog.parquet") == table_hash(work / "catalog.parquet")
    elsewhere = tmp_path / "elsewhere"  # a real version, pushed to another remote only
    _tables(elsewhere, ["2026-02-02", "2026-02-03"])
    (elsewhere / "tiles" / "spec.json").write_text('{"mode": "random"}')
    v2 = commit_data(elsewhere, (tmp_path / "other-store").as_uri())
    with pytest.raises(PlutoError, match=f"{v2.md5}: the DVC remote .* does not have it"):
        checkout_data(tmp_path / "other", elsewhere / "data.dvc", remote)


def test_services_refuse_a_busy_port_before_starting_anything(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PlutoError, match=f"127.0.0.1:{port} is already in use.*PLUTO_MLFLOW__TRACKING_URI"):
            start_services(tmp_path, f"http://127.0.0.1:{port}")
    assert not (tmp_path / "mlflow").exists()
    with pytest.raises(PlutoError, match="embedded servers run at http://127.0.0.1:PORT"):
        start_services(tmp_path, "https://mlflow.example.org")


def test_checkout_restores_the_versions_own_dvc_file_and_refuses_another(tmp_path):
    work, remote = tmp_path / "work", (tmp_path / "stores" / "dvc").as_uri()
    _tables(work, ["2026-01-01", "2026-01-02"])
    v1 = commit_data(work, remote)
    kept = tmp_path / "kept.dvc"
    kept.write_bytes((work / "data.dvc").read_bytes())
    fresh = tmp_path / "fresh"
    assert checkout_data(fresh, kept, remote, md5=v1.md5).md5 == v1.md5
    assert (fresh / "data.dvc").read_bytes() == kept.read_bytes()
    with pytest.raises(PlutoError, match="names data .* but the model version records"):
        checkout_data(tmp_path / "other", kept, remote, md5="0" * 32)
    assert not (tmp_path / "other").exists()  # refused before anything was written
