"""config.yaml, typed loading, --set overrides, and one-line errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivecap.config import Config, load_config, render_yaml, to_dict
from drivecap.errors import ConfigError
from tests.conftest import REPO, assert_one_line_error, run_cli


def test_config_yaml_documents_every_default() -> None:
    """The committed config.yaml is exactly the rendered defaults: no knob undocumented, none stale."""
    assert (REPO / "config.yaml").read_text() == render_yaml(), (
        "config.yaml is out of date: regenerate it with "
        "python -c \"from drivecap.config import render_yaml; open('config.yaml','w').write(render_yaml())\""
    )
    assert to_dict(load_config(REPO / "config.yaml")) == to_dict(Config())


def test_every_knob_has_a_comment() -> None:
    for line in render_yaml().splitlines():
        if line.startswith("  ") and ":" in line:
            assert "  # " in line and len(line.split("  # ", 1)[1]) > 10, line


def test_overrides_are_typed_and_applied(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "gate.open_threshold=0.2",
            "encoder.backend=onnxruntime",
            "speech.backend=wav",
            "calibration.clips=[project_video02]",
            "output.window=false",
        ],
    )
    assert cfg.gate.open_threshold == 0.2 and isinstance(cfg.gate.open_threshold, float)
    assert cfg.encoder.backend == "onnxruntime"
    assert cfg.calibration.clips == ["project_video02"]
    assert cfg.output.window is False


def test_file_then_override_and_relative_paths(tmp_path: Path) -> None:
    f = tmp_path / "sub" / "my.yaml"
    f.parent.mkdir()
    f.write_text("paths:\n  engines_dir: built\ngate:\n  min_interval_s: 3\n")
    cfg = load_config(f, ["gate.min_interval_s=4.5"])
    assert cfg.engines_dir == f.parent / "built"
    assert cfg.gate.min_interval_s == 4.5


BAD = [
    (["gate.open_threshold=high"], "gate.open_threshold", "number"),
    (["gate.open_threshold=5"], "gate.open_threshold", "between"),
    (["encoder.backend=cuda"], "encoder.backend", "onnxruntime"),
    (["encoder.precision=int4"], "encoder.precision", "fp32"),
    (["encoder.threads=-1"], "encoder.threads", "between 0 and 256"),
    (["encoder.input_height=250"], "encoder.input_height", "multiple of 32"),
    (["gate.colour=red"], "gate.colour", "allowed here"),
    (["nosuchsection.key=1"], "nosuchsection", "allowed here"),
    (["output.video=maybe"], "output.video", "true or false"),
    (["decoder.beam_width=2.5"], "decoder.beam_width", "integer"),
    (["calibration.clips=[project_video01]"], "project_video01", "held-out"),
    (["calibration.clips=[nowhere]"], "nowhere", "known"),
    (["gate.close_threshold=0.5", "gate.open_threshold=0.1"], "gate.close_threshold", "re-arm"),
    (["encoder.backend=onnxruntime", "encoder.precision=fp16"], "encoder.precision=fp16", "tensorrt"),
    (["speech.min_gap_s=.nan"], "speech.min_gap_s", "finite"),
    (["gate"], "--set 'gate'", "KEY=VALUE"),
]


@pytest.mark.parametrize(("overrides", "key", "hint"), BAD)
def test_bad_values_raise_config_error(overrides: list[str], key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides)
    msg = str(exc.value)
    assert key in msg and hint in msg and "\n" not in msg


@pytest.mark.parametrize(("overrides", "key", "hint"), BAD[:8])
def test_bad_values_on_the_command_line(overrides: list[str], key: str, hint: str) -> None:
    args = [a for o in overrides for a in ("--set", o)]
    assert_one_line_error(run_cli(*args, "assets", "list"), key, hint)


def test_bad_config_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert_one_line_error(run_cli("--config", str(missing), "assets", "list"), str(missing), "does not exist")
    broken = tmp_path / "broken.yaml"
    broken.write_text("gate:\n  open_threshold: [1,\n")
    assert_one_line_error(run_cli("--config", str(broken), "assets", "list"), str(broken), "not valid YAML")
    typo = tmp_path / "typo.yaml"
    typo.write_text("gate:\n  open_treshold: 0.1\n")
    assert_one_line_error(run_cli("--config", str(typo), "assets", "list"), str(typo), "gate.open_treshold")
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- a\n- b\n")
    assert_one_line_error(run_cli("--config", str(notmap), "assets", "list"), str(notmap), "mapping")
