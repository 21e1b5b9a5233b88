"""`drivecap doctor` reports what this machine has and exits 1, naming the fix, when the default replay cannot run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import REPO, run_cli


def _doctor(*sets: str) -> tuple[int, dict]:
    proc = run_cli(*[a for s in sets for a in ("--set", s)], "doctor", "--json")
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    return proc.returncode, json.loads(proc.stdout)


def _by_area(report: dict) -> dict[str, dict]:
    return {c["area"]: c for c in report["checks"]}


def test_doctor_on_this_machine_is_ready_without_a_gpu() -> None:
    rc, report = _doctor()
    checks = _by_area(report)
    assert rc == 0 and report["replay_ready"] is True
    assert checks["gpu"]["found"].startswith("none")  # no GPU here: said, not failed
    assert checks["espeak-ng"]["status"] == ("ok" if shutil.which("espeak-ng") else "warn")
    assert {checks[a]["status"] for a in ("assets", "encoder", "int8", "bundle")} == {"ok"}
    assert "GStreamer" in checks["opencv"]["found"]


def test_doctor_without_the_int8_model_names_calibrate_and_exits_1(tmp_path: Path) -> None:
    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / "vgg16_conv5.onnx").symlink_to(REPO / "engines" / "vgg16_conv5.onnx")
    rc, report = _doctor(f"paths.engines_dir={engines}")
    int8 = _by_area(report)["int8"]
    assert rc == 1 and report["replay_ready"] is False
    assert (
        int8["status"] == "fail" and int8["fix"] == "drivecap calibrate" and "does not exist" in int8["found"]
    )
    # With fp32 as the precision the same machine is ready again: INT8 is then only a warning.
    rc, report = _doctor(f"paths.engines_dir={engines}", "encoder.precision=fp32")
    assert rc == 0 and _by_area(report)["int8"]["status"] == "warn"


def test_doctor_text_screen_has_one_line_per_check() -> None:
    proc = run_cli("doctor")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(ln.split()[:2] == ["ok", "encoder"] for ln in lines)
    assert lines[-1].startswith("ready:")
