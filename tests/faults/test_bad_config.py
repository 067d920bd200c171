"""Malformed settings files and environment values stop the run with a ConfigError that names the
file or the PLUTO_ variable and the field; the CLI turns it into exit code 2 with that message."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pluto.config import load_settings
from pluto.errors import ConfigError

FILE_CASES = {
    "bad_yaml.yaml": ("slides: [unclosed\n", r"bad_yaml\.yaml: cannot parse settings"),
    "tab.yaml": ("seed:\t1\n", r"(?s)tab\.yaml: cannot parse settings.*line 1, column 6"),
    "list.yaml": ("- slides\n- qc\n", r"list\.yaml: settings file must hold a mapping"),
    "scalar.yml": ("just text\n", r"scalar\.yml: settings file must hold a mapping"),
    "binary.yaml": ("\x00\x01\x02", r"binary\.yaml: cannot parse settings"),
    "bad_toml.toml": ("[slides\nhandle_pool_size = 3\n", r"bad_toml\.toml: cannot parse settings"),
    "unknown_top.yaml": ("sildes:\n  handle_pool_size: 3\n", r"unknown_top\.yaml: invalid settings: sildes: Extra inputs"),
    "unknown_pydantic.toml": ("[tiling]\nmpp = [0.5]\n", r"unknown_pydantic\.toml: invalid settings: tiling\.mpp: Extra inputs"),
    "unknown_dataclass.yaml": ("train:\n  stepz: 5\n", r"unknown_dataclass\.yaml: invalid settings: train\.stepz: Unexpected keyword"),
    "wrong_type.yaml": ("train:\n  steps: many\n", r"wrong_type\.yaml: invalid settings: train\.steps: Input should be a valid integer"),
    "out_of_range.toml": ("[slides]\nmpp_rel_tol = 0.9\n", r"out_of_range\.toml: invalid settings: slides\.mpp_rel_tol: Input should be less than or equal to 0\.02"),
    "section_scalar.yaml": ("qc: 3\n", r"section_scalar\.yaml: invalid settings: qc"),
    "notes.txt": ("seed: 1\n", r"notes\.txt: settings file must be \.yaml, \.yml or \.toml"),
}


@pytest.mark.parametrize("name", sorted(FILE_CASES))
def test_malformed_settings_file(tmp_path: Path, name: str) -> None:
    text, message = FILE_CASES[name]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


ENV_CASES = {
    "PLUTO_TRAIN__STEPS": ("abc", r"^PLUTO_TRAIN__STEPS: invalid settings: train\.steps: Input should be a valid integer"),
    "PLUTO_SLIDES__HANDLE_POOL_SIZE": ("0", r"^PLUTO_SLIDES__HANDLE_POOL_SIZE: invalid settings: slides\.handle_pool_size"),
    "PLUTO_TILING__MPPS": ("[0.5,", r"^PLUTO_TILING__MPPS: cannot parse settings"),
    "PLUTO_TRAIN": ("not json", r"^PLUTO_TRAIN: cannot parse settings"),
    "PLUTO_TRAIN__STEPZ": ("3", r"^PLUTO_TRAIN__STEPZ: invalid settings: train\.stepz: Unexpected keyword"),
    "PLUTO_SEED": ("1.5", r"^PLUTO_SEED: invalid settings: seed: Input should be a valid integer"),
}


@pytest.mark.parametrize("var", sorted(ENV_CASES))
def test_malformed_environment_value_names_the_variable(monkeypatch, tmp_path: Path, var: str) -> None:
    value, message = ENV_CASES[var]
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()
    good = tmp_path / "good.yaml"
    good.write_text("seed: 2\n")
    with pytest.raises(ConfigError, match=message):  # the file is fine: the error must not blame it
        load_settings(good)


def test_errors_from_several_inputs_name_each(monkeypatch, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("slides:\n  handle_pool_size: -1\n")
    monkeypatch.setenv("PLUTO_TRAIN__STEPS", "abc")
    with pytest.raises(ConfigError) as exc:
        load_settings(path, seed="x")
    msg = str(exc.value)
    assert set(msg.split(": invalid settings")[0].split(", ")) == {"flags", "PLUTO_TRAIN__STEPS", str(path)}
    assert f"slides.handle_pool_size: Input should be greater than or equal to 1 ({path})" in msg
    assert "train.steps: Input should be a valid integer, unable to parse string as an integer (PLUTO_TRAIN__STEPS)" in msg
    assert "seed: Input should be a valid integer, unable to parse string as an integer (flags)" in msg


def test_unrelated_pluto_variables_are_not_settings(monkeypatch) -> None:
    monkeypatch.setenv("PLUTO_SHARED", "/somewhere")  # used by the test suite, not a field
    assert load_settings().seed == 0


def test_cli_exits_2_with_the_message(monkeypatch, tmp_path: Path, capsys) -> None:
    from pluto.cli import main

    path = tmp_path / "list.yaml"
    path.write_text("- a\n")
    monkeypatch.setattr(sys, "argv", ["pluto", "--config", str(path), "config"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert "settings file must hold a mapping" in capsys.readouterr().err.replace("\n", " ")
    monkeypatch.setattr(sys, "argv", ["pluto", "config"])
    monkeypatch.setenv("PLUTO_TRAIN__STEPS", "abc")
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert "PLUTO_TRAIN__STEPS" in capsys.readouterr().err
