"""The soak command, short: a real 30 fps MJPEG camera on 127.0.0.1 through the full pipeline (speech in
wav mode) for ~20 s; the report's figures are checked against each other and against the files written.
The 10-minute soak is a command (``drivecap soak``), measured and reported in docs/reliability.md."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import cv2
import pytest

from drivecap.bench.soak import SLOT_DEPTHS, SoakReport
from drivecap.config import Config

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO, assert_one_line_error, run_cli


@pytest.mark.slow
def test_short_soak_keeps_memory_threads_queues_and_frames_in_check(tmp_path: Path, real_cfg: Config) -> None:
    from drivecap.decoder.bundle import write_random_bundle

    bundle = write_random_bundle(tmp_path / "bundle", seed=7)
    out = tmp_path / "soak"
    proc = run_cli(
        "--config",
        str(REPO / "config.yaml"),
        "--set",
        "encoder.precision=int8",
        "--set",
        "encoder.threads=1",
        "--set",
        f"decoder.bundle={bundle}",
        "--set",
        "speech.min_gap_s=0.5",
        "soak",
        "--minutes",
        "0.33",
        "--warmup-s",
        "6",
        "--out",
        str(out),
        "--json",
        timeout=240,
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    r = json.loads(proc.stdout)
    assert r["ok"] is True and all(r["checks"].values()), r["checks"]
    # Memory: measured after the warm-up and at the end, under 5% growth.
    assert 0 < r["rss_warm_mb"] <= r["rss_max_mb"] and r["rss_end_mb"] <= r["rss_max_mb"]
    assert r["growth_pct"] < 5.0
    # Every worker alive in every sample; the slots never deeper than built.
    assert r["workers_alive_all_samples"] == {"capture": True, "inference": True, "speech": True}
    assert set(r["slot_max"]) == set(SLOT_DEPTHS)
    assert all(r["slot_max"][k] <= SLOT_DEPTHS[k] for k in SLOT_DEPTHS)
    assert r["samples"] >= 15 and r["fds_end"] <= r["fds_warm"] + 2 and r["threads_end"] == r["threads_warm"]
    # Frames: everything read was output or counted as dropped, and nothing was read that was not sent.
    assert r["frames_in"] == r["frames_out"] + r["dropped"] and 0 < r["frames_in"] <= r["frames_sent"]
    assert r["encoded"] + r["pregate_skipped"] + r["not_encoded"] + r["encode_errors"] <= r["frames_in"]
    assert r["not_encoded"] > 0, "a CPU encoder is slower than 30 fps: the newest frame wins"
    # What the report says was written is on disk.
    cap = cv2.VideoCapture(str(out / "soak.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == r["video_frames_written"] >= r["frames_out"]
    wavs = sorted(out.glob("soak.speech*.wav"))
    assert len(wavs) == r["utterances"] == r["wav_files"] > 0
    with wave.open(str(wavs[0])) as w:
        assert w.getnframes() > 1000
    events = [json.loads(line) for line in (out / "soak.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "end" and events[-1]["frames_out"] == r["frames_out"]
    assert len([e for e in events if e["event"] == "caption"]) == r["captions"]


def test_report_fails_when_a_check_fails() -> None:
    r = SoakReport(seconds=10, warmup_s=3, camera_fps=30, source="x")
    r.checks = {"workers_alive": True, "memory_growth_below_5pct": False}
    assert not r.ok and "memory_growth_below_5pct FAILED" in "\n".join(r.lines())
    r.checks["memory_growth_below_5pct"] = True
    assert r.ok and r.as_dict()["ok"] is True


def test_rss_is_this_process() -> None:
    # In a fresh process: inside pytest, pages freed by earlier tests may be reused without growing RSS.
    code = (
        "from drivecap.bench.soak import rss_bytes\n"
        "before = rss_bytes()\n"
        "block = bytearray(64 * 2**20)\n"
        "for i in range(0, len(block), 4096):\n"
        "    block[i] = 1\n"
        "print(rss_bytes() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert int(out.stdout) > 48 * 2**20


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--minutes", "0"), "--minutes 0"),
        (("--fps", "500"), "--fps 500"),
        (("--clip", "no_such_clip"), "no_such_clip"),
        (("--minutes", "0.1", "--warmup-s", "30"), "--warmup-s 30"),
    ],
)
def test_bad_soak_options_are_one_line_errors(args: tuple[str, ...], needle: str) -> None:
    proc = run_cli("--set", "encoder.precision=int8", "soak", *args)
    assert_one_line_error(proc, needle)
