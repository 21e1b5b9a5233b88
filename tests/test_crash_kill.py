"""SIGKILL at random moments, for real: a subprocess `drivecap replay` and a live `drivecap run` on an MJPEG
camera on 127.0.0.1. What they leave must decode / parse (see drivecap.bench.crash); three kills per kind
here, the 10-of-10 figure comes from `python scripts/crash_kill.py --kills 10`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from drivecap.assets import AssetStore
from drivecap.bench.crash import MAX_LOSS_S, kill_live, kill_replay, random_delays
from tests.conftest import REPO, write_short_clip

sys.path.insert(0, str(Path(__file__).parent))
from mjpeg_server import MjpegServer, jpeg_frames_from_video

pytestmark = pytest.mark.slow

FPS = 25.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from drivecap.decoder.bundle import write_random_bundle

    return write_random_bundle(tmp_path_factory.mktemp("bundle") / "random", seed=5)


def _sets(bundle: Path, *extra: str) -> list[str]:
    sets = [
        "encoder.backend=onnxruntime",
        "encoder.precision=int8",
        "encoder.threads=1",
        "encoder.warmup_runs=0",
        f"decoder.bundle={bundle}",
        "decoder.max_tokens=6",
        "gate.min_interval_s=0.0",
        "gate.max_age_s=0.5",
        "speech.backend=wav",
        "video.preset=ultrafast",
        *extra,
    ]
    return ["--config", str(REPO / "config.yaml"), *[a for s in sets for a in ("--set", s)]]


def test_replay_killed_at_random_moments_leaves_files_that_decode(
    bundle: Path, store: AssetStore, tmp_path: Path
) -> None:
    clip = write_short_clip(store, tmp_path / "drive.mp4", 400, 1, FPS, size=(320, 180))
    for i, delay in enumerate(random_delays(3, 1.0, 4.0, seed=11)):
        # Killed 1-4 s after 2 s of the drive were output: the file has complete fragments to check.
        res = kill_replay(_sets(bundle), str(clip), tmp_path / f"out{i}", delay, FPS, after_frames=50)
        assert res.ok, res.line()
        assert res.logged_s >= 2.0 and res.decoded_s > 0
        assert res.lost_s <= MAX_LOSS_S
        assert res.jsonl_lines > 0


def test_live_run_killed_at_random_moments_keeps_segments_and_index_in_step(
    bundle: Path, store: AssetStore, tmp_path: Path
) -> None:
    frames = jpeg_frames_from_video(store.clip("challenge02"), limit=100, step=2, width=320)
    out = tmp_path / "live"
    with MjpegServer(frames, fps=FPS) as cam:
        sets = _sets(bundle, "record.segment_s=1.5", "capture.read_timeout_s=2.0")
        results = [kill_live(sets, cam.url, out, d) for d in random_delays(3, 2.0, 5.0, seed=12)]
        name = next(out.glob("*.segments")).name
    for res in results:
        assert res.ok, res.line()
        assert res.segments >= 1 and res.index_matches
    # Three runs in one folder: each restart repaired what the kill before it left, so the index lists
    # every segment of every run.
    import json

    runs = {s["run"] for s in json.loads((out / name / "index.json").read_text())["segments"]}
    assert len(runs) == 3
