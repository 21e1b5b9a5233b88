"""The runtime path (replay, caption) never imports torch: it must run where only the runtime extras exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from drivecap.assets import AssetStore
from tests.conftest import REPO

PROBE = """
import sys
from drivecap.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "torchvision", "tensorflow", "keras", "h5py", "matplotlib") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
sys.exit(rc)
"""


@pytest.mark.slow
def test_replay_and_caption_do_not_import_torch(tmp_path: Path, store: AssetStore) -> None:
    images = [str(p) for p in store.test_images()[:2]]
    for args in (
        [
            "-q",
            "replay",
            "project_video01",
            "--out",
            str(tmp_path),
            "--stride",
            "20",
            "--max-frames",
            "40",
            "--no-progress",
        ],
        ["-q", "caption", *images],
    ):
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "HEAVY=\n" in proc.stdout, proc.stdout
    assert (tmp_path / "project_video01.srt").is_file()
