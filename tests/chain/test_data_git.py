"""Opt-in git history for data versions: commits and tags pushed to a bare repository, and DVC's own
`dvc get` / `dvc import` reading a tagged version back through git and the DVC remote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pluto.data_git import commit_version, data_tag, model_tag, tag_model_version
from pluto.data_version import commit_data, table_hash
from pluto.errors import PlutoError
from tests.chain.test_data_version import _tables

DVC = str(Path(sys.executable).with_name("dvc"))


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture()
def versioned(tmp_path):
    """Two data versions of one work dir, committed and tagged, tags pushed to a bare repository."""
    bare = tmp_path / "data.git"
    _git("init", "-q", "--bare", str(bare))
    work, remote = tmp_path / "work", (tmp_path / "stores" / "dvc").as_uri()
    _tables(work, ["2026-01-01", "2026-01-02"])
    v1 = commit_data(work, remote)
    tables_v1 = table_hash(work / "catalog.parquet")
    assert commit_version(work, v1.md5, str(bare)) == data_tag(v1.md5)
    import pandas as pd

    pd.DataFrame({"slide_id": ["a1", "b2", "c3"], "status": ["ok", "ok", "ok"]}).to_parquet(work / "catalog.parquet")
    v2 = commit_data(work, remote)
    assert v2.md5 != v1.md5
    commit_version(work, v2.md5, str(bare))
    return work, bare, v1, v2, tables_v1


def test_each_version_is_a_commit_with_its_tag_pushed_and_reruns_add_nothing(versioned):
    work, bare, v1, v2, _ = versioned
    tags = _git("ls-remote", "--tags", str(bare))
    assert f"refs/tags/{data_tag(v1.md5)}" in tags and f"refs/tags/{data_tag(v2.md5)}" in tags
    assert _git("log", "--format=%s", cwd=work).splitlines() == [f"data {v2.md5}", f"data {v1.md5}"]
    # only DVC's metadata is in git: never the tables
    assert set(_git("ls-files", cwd=work).splitlines()) == {".gitignore", ".dvcignore", "data.dvc", ".dvc/config"}
    commit_version(work, v2.md5, str(bare))
    assert len(_git("log", "--format=%s", cwd=work).splitlines()) == 2


def test_promotion_tags_the_commit_of_the_models_data(versioned):
    work, bare, v1, _, _ = versioned
    assert tag_model_version(work, "pluto-tiny", 1, v1.md5, str(bare)) == model_tag("pluto-tiny", 1)
    refs = dict(reversed(line.split("\t")) for line in _git("ls-remote", "--tags", str(bare)).splitlines())
    assert refs["refs/tags/model/pluto-tiny/v1"] == refs[f"refs/tags/{data_tag(v1.md5)}"]
    with pytest.raises(PlutoError, match="no git tag data/00000000"):
        tag_model_version(work, "pluto-tiny", 2, "0" * 32, str(bare))


def test_dvc_get_and_import_read_a_tagged_version(versioned, tmp_path):
    _, bare, v1, v2, tables_v1 = versioned
    out = tmp_path / "got"
    subprocess.run([DVC, "get", str(bare), "data", "--rev", data_tag(v1.md5), "-o", str(out)], check=True, capture_output=True)
    assert table_hash(out / "catalog.parquet") == tables_v1
    consumer = tmp_path / "consumer"
    consumer.mkdir()
    _git("init", "-q", cwd=consumer)
    subprocess.run([DVC, "init", "-q"], cwd=consumer, check=True)
    subprocess.run([DVC, "import", str(bare), "data", "--rev", data_tag(v2.md5), "-o", "cohort"], cwd=consumer, check=True,
                   capture_output=True)
    import yaml

    lock = yaml.safe_load((consumer / "cohort.dvc").read_text())
    assert lock["deps"][0]["repo"]["rev"] == data_tag(v2.md5) and lock["outs"][0]["md5"] == v2.md5
    assert sorted(p.name for p in (consumer / "cohort").iterdir()) == sorted(p.name for p in (out).iterdir())
