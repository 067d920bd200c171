"""Foundation contracts: settings precedence and errors, and the import boundaries of DESIGN.md."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pluto.config import load_settings
from pluto.errors import ConfigError, QuarantineReason, SlideError

REPO = Path(__file__).resolve().parent.parent
TORCH_ONLY = ["models", "ssl", "train", "eval"]
EDGE_LIBS = {"mlflow", "prefect", "openslide", "boto3", "pydantic", "pydantic_settings", "dvc", "great_expectations",
             "sklearn", "torchmetrics", "lightning", "eva", "monai"}  # the GPU machine has torch + timm, not these


def test_settings_precedence_defaults_file_env_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("seed: 3\nslides:\n  handle_pool_size: 7\n  mpp_rel_tol: 0.01\n")
    assert load_settings().seed == 0
    s = load_settings(cfg)
    assert (s.seed, s.slides.handle_pool_size, s.slides.mpp_rel_tol) == (3, 7, 0.01)
    monkeypatch.setenv("PLUTO_SLIDES__HANDLE_POOL_SIZE", "9")
    s = load_settings(cfg)
    assert s.slides.handle_pool_size == 9 and s.seed == 3  # env beats file, file still fills the rest
    s = load_settings(cfg, seed=11, slides={"handle_pool_size": 4})
    assert s.seed == 11 and s.slides.handle_pool_size == 4  # flags beat env


def test_malformed_settings_name_the_file_and_field(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("slides: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_settings(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("slides:\n  handle_pool_size: -1\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml.*slides.handle_pool_size"):
        load_settings(wrong)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")
    monkeypatch.setenv("PLUTO_SEED", "not-a-number")
    with pytest.raises(ConfigError, match="seed"):
        load_settings()


def test_unknown_setting_is_refused(tmp_path):
    f = tmp_path / "typo.toml"
    f.write_text("[slides]\nhandle_pool_sz = 3\n")
    with pytest.raises(ConfigError, match="handle_pool_sz"):
        load_settings(f)


def test_config_hash_is_stable_and_section_scoped():
    a, b = load_settings(), load_settings(seed=5)
    assert a.config_hash("slides") == b.config_hash("slides")
    assert a.config_hash() != b.config_hash()


def test_slide_error_names_file_and_reason():
    err = SlideError("/data/x.svs", QuarantineReason.truncated, "file ends at byte 100")
    assert err.reason is QuarantineReason.truncated
    assert str(err) == "/data/x.svs: truncated (file ends at byte 100)"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_never_imports_prefect():
    offenders = [str(p) for p in (REPO / "pluto").rglob("*.py") if "prefect" in _imports(p)]
    assert offenders == []


@pytest.mark.parametrize("pkg", TORCH_ONLY)
def test_torch_only_packages_import_no_edge_libraries_at_module_level(pkg):
    files = list((REPO / "pluto" / pkg).rglob("*.py"))
    offenders = {str(p.relative_to(REPO)): sorted(_module_level_imports(p) & EDGE_LIBS) for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_torch_only_packages_import_with_edge_libraries_blocked():
    """Import every torch-only module in a fresh interpreter where the edge libraries cannot load."""
    files = [p for pkg in TORCH_ONLY for p in (REPO / "pluto" / pkg).rglob("*.py")]
    files += list((REPO / "bench").glob("*.py"))
    mods = sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in files)
    code = (
        "import sys\n"
        f"for m in {sorted(EDGE_LIBS)!r}: sys.modules[m] = None\n"
        "import importlib\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]


def test_git_sha_inside_a_checkout_and_in_an_image_without_git(tmp_path, monkeypatch):
    from pluto.registry.provenance import git_sha

    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", git_sha())
    monkeypatch.delenv("PLUTO_GIT_SHA", raising=False)
    assert git_sha(tmp_path) == "unknown"
    monkeypatch.setenv("PLUTO_GIT_SHA", "0123abc")  # set by deploy/docker/Dockerfile from its GIT_SHA build arg
    assert git_sha(tmp_path) == "0123abc"
