"""The DVC project at the repository root, as a DVC user meets it: each table stored once (DVC's
hard-link cache), a promotion pointing the committed `data.dvc` at the champion's data, and a fresh
`git clone` whose `dvc pull` restores those tables (or says plainly that the remote lacks them)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pluto.config import REPO_ROOT, load_settings
from pluto.data_version import checkout_data, commit_data, publish, table_hash
from pluto.errors import PlutoError
from tests.chain.test_data_version import _tables
from tests.conftest import SHARED, dvc_project_like_the_repository

DVC = str(Path(sys.executable).with_name("dvc"))


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def _cached(work: Path, table: Path) -> Path:
    md5 = hashlib.md5(table.read_bytes()).hexdigest()
    return work / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def test_unset_dvc_project_is_the_repository_root_for_a_work_dir_inside_it(monkeypatch, tmp_path):
    monkeypatch.delenv("PLUTO_CHAIN__DVC_PROJECT", raising=False)  # the test session points it at a scratch project
    assert load_settings(paths={"work_dir": str(REPO_ROOT / "work")}).chain.dvc_project == REPO_ROOT  # `make demo`'s work/
    assert load_settings(paths={"work_dir": str(tmp_path / "work")}).chain.dvc_project is None  # elsewhere: never the checkout
    assert (REPO_ROOT / ".dvc" / "config").is_file() and (REPO_ROOT / "data.dvc").is_file()


def test_each_table_is_one_file_stage_tracked_and_cached_alike(tmp_path):
    work, remote = tmp_path / "work", (tmp_path / "stores" / "dvc").as_uri()
    _tables(work, ["2026-01-01", "2026-01-02"])
    commit_data(work, remote)
    for rel in ("qc/a1/qc.parquet", "tiles/part-00000.parquet", "tiles/spec.json"):
        stage, tracked = work / rel, work / "data" / rel
        assert os.path.samefile(stage, tracked) and os.path.samefile(stage, _cached(work, stage)), rel
    assert not os.path.samefile(work / "catalog.parquet", work / "data" / "catalog.parquet")  # rewritten without ingested_at

    _tables(work, ["2027-01-01", "2027-01-02"])  # a stage rewrites identical tables: new files, cache untouched
    assert not os.path.samefile(work / "qc/a1/qc.parquet", work / "data/qc/a1/qc.parquet")
    commit_data(work, remote)
    assert os.path.samefile(work / "qc/a1/qc.parquet", _cached(work, work / "qc/a1/qc.parquet"))  # relinked: one file again

    fresh = tmp_path / "fresh"  # checkout links the stage tables to what DVC pulled
    checkout_data(fresh, work / "data.dvc", remote)
    assert os.path.samefile(fresh / "tiles/part-00000.parquet", fresh / "data/tiles/part-00000.parquet")
    assert table_hash(fresh / "catalog.parquet") == table_hash(work / "data" / "catalog.parquet")


def test_promotion_points_the_projects_data_dvc_at_the_champion_and_a_clone_pulls_it(tmp_path):
    project = dvc_project_like_the_repository(tmp_path / "project")
    committed_config = (project / ".dvc" / "config").read_bytes()
    work, store = tmp_path / "work", tmp_path / "stores" / "dvc"
    _tables(work, ["2026-01-01", "2026-01-02"])
    v1 = commit_data(work, store.as_uri())
    assert publish(project, work / "data.dvc", store.as_uri(), cache_dir=work / ".dvc" / "cache").md5 == v1.md5
    assert (project / "data.dvc").read_bytes() == (work / "data.dvc").read_bytes()  # DVC's own file, not a rewrite
    assert os.path.samefile(project / "data/qc/a1/qc.parquet", work / "qc/a1/qc.parquet")  # shared cache: linked, not copied
    assert (project / ".dvc" / "config").read_bytes() == committed_config  # machine settings went to config.local
    assert _git("status", "--porcelain", cwd=project).split() == ["M", "data.dvc"]  # data/ and config.local are ignored

    elsewhere = tmp_path / "elsewhere"  # a version the remote lacks: the project keeps naming v1
    _tables(elsewhere, ["2026-01-01", "2026-01-02"])
    (elsewhere / "tiles" / "spec.json").write_text('{"mode": "random"}')
    commit_data(elsewhere, (tmp_path / "other-store").as_uri())
    with pytest.raises(PlutoError, match="lacks its data"):
        publish(project, elsewhere / "data.dvc", store.as_uri())
    assert (project / "data.dvc").read_bytes() == (work / "data.dvc").read_bytes()
    with pytest.raises(PlutoError, match="not a DVC project"):
        publish(tmp_path / "nowhere", work / "data.dvc", store.as_uri())

    _git("commit", "-q", "-m", "champion data", "data.dvc", cwd=project)
    clone = tmp_path / "clone"
    _git("clone", "-q", str(project), str(clone), cwd=tmp_path)
    lost = subprocess.run([DVC, "pull"], cwd=clone, capture_output=True, text=True)  # the default remote: not on this machine
    assert lost.returncode != 0 and v1.md5 in lost.stdout + lost.stderr and not (clone / "data").exists()
    subprocess.run([DVC, "remote", "modify", "--local", "store", "url", str(store)], cwd=clone, check=True)
    subprocess.run([DVC, "pull"], cwd=clone, check=True, capture_output=True)
    assert table_hash(clone / "data" / "catalog.parquet") == table_hash(work / "data" / "catalog.parquet")
    assert (clone / "data/tiles/part-00000.parquet").read_bytes() == (work / "tiles/part-00000.parquet").read_bytes()


def test_the_same_slides_under_another_checkouts_data_root_give_the_same_data_version(cmu_svs, tmp_path):
    """A fresh clone (CI's, a colleague's) keeps the slides elsewhere; its data version must still match."""
    import pandas as pd
    from typer.testing import CliRunner

    from pluto.cli import app

    store = (tmp_path / "stores" / "dvc").as_uri()
    versions, dirs = [], {}
    for clone in ("here", "there"):
        root, work = tmp_path / clone / "shared" / "data", tmp_path / clone / "work"
        (root / "wsi").mkdir(parents=True)
        shutil.copyfile(cmu_svs, root / "wsi" / cmu_svs.name)
        env = {"PLUTO_PATHS__DATA_ROOT": str(root), "PLUTO_PATHS__WORK_DIR": str(work)}
        for args in (["ingest", str(root / "wsi"), "--out", str(work)], ["qc", "--work", str(work)], ["tile", "--work", str(work)]):
            done = CliRunner().invoke(app, args, env=env)
            assert done.exit_code == 0, done.output[-2000:] + repr(done.exception)
        versions.append(commit_data(work, store, data_root=root))
        dirs[clone] = root, work
    assert versions[0].md5 == versions[1].md5  # the version names the data, not where this clone keeps it

    root, work = dirs["there"]
    stage, tracked = (pd.read_parquet(work / p / "tiles" / "part-00000.parquet")["path"].unique().tolist() for p in ("", "data"))
    assert stage == [str(root / "wsi" / cmu_svs.name)] and tracked == [f"wsi/{cmu_svs.name}"]  # stages keep this machine's paths
    assert pd.read_parquet(work / "data" / "catalog.parquet")["uri"].tolist() == [f"wsi/{cmu_svs.name}"]

    elsewhere_root, fresh = tmp_path / "third" / "data", tmp_path / "third" / "work"  # a restore anchors them to its own root
    assert checkout_data(fresh, work / "data.dvc", store, data_root=elsewhere_root).md5 == versions[0].md5
    for table in ("catalog.parquet", "tiles/part-00000.parquet", "tiles/tiling_summary.parquet"):
        assert pd.read_parquet(fresh / table)["path"].unique().tolist() == [str(elsewhere_root / "wsi" / cmu_svs.name)], table
    assert table_hash(fresh / "catalog.parquet", drop_columns=("uri", "path")) == table_hash(work / "catalog.parquet",
                                                                                              drop_columns=("ingested_at", "uri", "path"))


def test_a_versioned_location_that_climbs_out_of_the_data_root_is_refused(tmp_path):
    from pluto.data_version import anchored, portable

    root = tmp_path / "data"
    assert portable(str(root / "wsi" / "a.svs"), root) == "wsi/a.svs"
    assert portable("s3://bucket/a.svs", root) == "s3://bucket/a.svs" and portable("/elsewhere/a.svs", root) == "/elsewhere/a.svs"
    assert anchored("wsi/a.svs", root) == str(root / "wsi" / "a.svs")
    with pytest.raises(PlutoError, match="leaves the data root"):
        anchored("../../etc/passwd", root)


@pytest.mark.integration
@pytest.mark.slow
def test_a_fresh_clone_pulls_the_committed_data_dvc_after_the_demos_data_stages(tmp_path):
    """What the README promises a new user: clone, run the demo's data stages on the bundled slides
    (`make demo` starts with them), and `dvc pull` restores exactly the tables the committed
    `data.dvc` names, from the embedded store the stages pushed to. This fails whenever a change to
    ingest, QC or tiling alters the demo's tables without re-pointing the committed `data.dvc`."""
    from flows.demo import demo_overrides
    from pluto.data_version import dvc_file_md5
    from pluto.services import start_prefect
    from tests.chain.test_slide_cache import RUN_STAGES, _snapshot

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True)
    work = clone / "work"  # the demo's work dir and, through the committed .dvc/config, the default DVC store
    data_root = SHARED / "data"  # where `make demo` finds the bundled slides (the settings' default data root)
    config = demo_overrides(work, "")
    config["paths"]["data_root"] = str(data_root)
    config["chain"] = {"task_retries": 0}
    code = _snapshot(tmp_path / "src")
    svc = start_prefect(tmp_path / "prefect")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PLUTO_"))}
        env.update({"PREFECT_HOME": str(tmp_path / "home"), "PREFECT_API_URL": f"{svc.url}/api",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
        import json

        out = subprocess.run([sys.executable, "-c", RUN_STAGES, json.dumps(config), "ingest,qc,tile"], cwd=code, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    finally:
        svc.stop()
    version = commit_data(work, (work / "stores" / "dvc").as_uri(), data_root=data_root)
    committed = dvc_file_md5(clone / "data.dvc")
    assert version.md5 == committed, (f"the demo's data stages now write {version.md5}, the committed data.dvc names "
                                      f"{committed}: re-point it (README, 'Data versions')")
    pulled = subprocess.run([DVC, "pull"], cwd=clone, capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    for table in sorted(p.relative_to(work / "data") for p in (work / "data").rglob("*") if p.is_file()):
        assert (clone / "data" / table).read_bytes() == (work / "data" / table).read_bytes(), table
