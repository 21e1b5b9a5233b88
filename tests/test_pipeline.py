"""The pipeline end to end on real frames with the real encoder (a random-weight caption bundle does the
decoding: these tests are about the mechanics): offline determinism, realtime accounting, a live MJPEG
camera that restarts, and Ctrl-C (a real SIGINT to a real subprocess) leaving complete files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import pytest

from drivecap.assets import AssetStore
from drivecap.config import Config, load_config
from drivecap.outputs.subtitles import parse_srt
from drivecap.pipeline.capture import wait_until
from drivecap.pipeline.core import Outputs
from drivecap.pipeline.inference import load_models
from drivecap.pipeline.runner import Pipeline, safe_name
from drivecap.pipeline.sources import open_source
from drivecap.pipeline.summary import RunSummary
from tests.conftest import write_short_clip

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO, assert_one_line_error, run_cli
from mjpeg_server import MjpegServer, jpeg_frames_from_video

pytestmark = pytest.mark.slow

N_FRAMES = 30
LONG_FRAMES = 120
FPS = 30.0


def _overrides(bundle: Path) -> list[str]:
    return [
        "encoder.backend=onnxruntime",
        "encoder.precision=fp32",
        "encoder.threads=1",
        "encoder.warmup_runs=0",
        f"decoder.bundle={bundle}",
        "decoder.max_tokens=6",
        "gate.min_interval_s=0.0",
        "gate.max_age_s=0.6",
        "gate.pixel_threshold=0.002",
        "speech.backend=none",
    ]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, real_cfg: Config) -> Path:
    from drivecap.decoder.bundle import write_random_bundle
    from drivecap.encoders.factory import make_encoder

    cfg = load_config(REPO / "config.yaml", ["encoder.precision=fp32", "encoder.warmup_runs=0"])
    with make_encoder(cfg) as enc:
        sha = enc.onnx_sha256
    return write_random_bundle(tmp_path_factory.mktemp("bundle") / "random", encoder_sha256=sha, seed=1)


@pytest.fixture(scope="module")
def cfg(bundle: Path) -> Config:
    return load_config(REPO / "config.yaml", _overrides(bundle))


@pytest.fixture(scope="module")
def models(cfg: Config):  # type: ignore[no-untyped-def]
    enc, cap = load_models(cfg)
    yield enc, cap
    enc.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, store: AssetStore) -> Path:
    """30 real frames of a training drive (every 4th frame, 480x270) as a 30 fps mp4."""
    path = tmp_path_factory.mktemp("clip") / "drive clip.mp4"
    return write_short_clip(store, path, N_FRAMES, 4, FPS)


def _count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _replay(
    cfg: Config, models: tuple[Any, Any], clip: Path, out: Path, mode: str, stride: int = 1
) -> RunSummary:
    enc, cap = models
    pipe = Pipeline(
        cfg,
        enc,
        cap,
        Outputs(out, "drive_clip", window=False),
        mode=mode,
        stride=stride,
    )
    return pipe.run(open_source(str(clip), cfg.capture))


def test_offline_replay_is_deterministic_and_keeps_every_frame(
    cfg: Config, models: tuple[Any, Any], clip: Path, tmp_path: Path
) -> None:
    a = _replay(cfg, models, clip, tmp_path / "a", "offline", stride=3)
    b = _replay(cfg, models, clip, tmp_path / "b", "offline", stride=3)
    for s in (a, b):
        assert s.frames_in == s.frames_out == N_FRAMES and s.dropped == 0
        assert s.encoded + s.pregate_skipped == N_FRAMES // 3
    for ext in ("srt", "vtt", "jsonl"):
        assert (tmp_path / "a" / f"drive_clip.{ext}").read_bytes() == (
            tmp_path / "b" / f"drive_clip.{ext}"
        ).read_bytes()
    assert _count_frames(tmp_path / "a" / "drive_clip.mp4") == N_FRAMES
    events = _events(tmp_path / "a" / "drive_clip.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert all("wall" not in e for e in events), "no wall-clock values in the offline event log"
    gates = [e for e in events if e["event"] == "gate"]
    assert [e["frame"] for e in gates] == list(range(0, N_FRAMES, 3))
    caps = [e for e in events if e["event"] == "caption"]
    assert len(caps) == a.captions >= 2  # the first frame, then at least one max-age re-caption
    assert {e["frame"] for e in caps} <= {e["frame"] for e in gates if e["open"]}
    # one SRT cue per caption change, starting at the captioned frame's own time
    cues = parse_srt((tmp_path / "a" / "drive_clip.srt").read_text(encoding="utf-8"))
    changes: list[tuple[Any, Any]] = []
    for e in caps:
        if e["text"] and (not changes or changes[-1][1] != e["text"]):
            changes.append((e["t"], e["text"]))
    assert [(c[0], c[2]) for c in cues] == changes
    assert cues[-1][1] == pytest.approx(N_FRAMES / FPS)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory, store: AssetStore) -> Path:
    """The same drive, LONG_FRAMES long: realtime playback must outlast a first caption (frame + mirror
    encodes), which on a CPU without VNNI or on a loaded machine takes well over one second."""
    path = tmp_path_factory.mktemp("long") / "drive clip.mp4"
    return write_short_clip(store, path, LONG_FRAMES, 2, FPS)


def test_realtime_replay_accounts_for_every_frame(
    cfg: Config, models: tuple[Any, Any], long_clip: Path, tmp_path: Path
) -> None:
    s = _replay(cfg, models, long_clip, tmp_path, "realtime")
    assert s.frames_in == LONG_FRAMES
    assert s.frames_out + s.dropped == s.frames_in
    assert s.encoded + s.pregate_skipped + s.not_encoded <= LONG_FRAMES
    assert s.not_encoded > 0, "a CPU encoder is slower than 30 fps, so the newest frame wins"
    assert _count_frames(tmp_path / "drive_clip.mp4") == s.frames_out + s.video_filled
    caps = [e for e in _events(tmp_path / "drive_clip.jsonl") if e["event"] == "caption"]
    assert caps and len(caps) == s.captions
    for e in caps:
        wall = e["wall"]
        assert isinstance(wall, dict)
        assert wall["glass_to_caption_ms"] >= wall["infer_ms"] > 0
        assert e["t_shown"] >= e["t"]  # type: ignore[operator]
    assert len(s.stages["glass_to_caption"]) and s.stages["encode"]["count"] == s.encoded


def test_live_mjpeg_is_captioned_and_resumes_after_the_server_restarts(
    cfg: Config, models: tuple[Any, Any], store: AssetStore, tmp_path: Path
) -> None:
    live_cfg = load_config(
        REPO / "config.yaml",
        [
            *_overrides(Path(cfg.decoder.bundle)),
            "capture.reconnect_initial_s=0.1",
            "capture.reconnect_max_s=0.5",
            "capture.read_timeout_s=1.0",
        ],
    )
    frames = jpeg_frames_from_video(store.clip("challenge02"), limit=40, step=5, width=320)
    enc, cap = models
    with MjpegServer(frames, fps=15) as server:
        pipe = Pipeline(live_cfg, enc, cap, Outputs(tmp_path, "cam", window=False), mode="live")
        result: list[RunSummary] = []
        th = threading.Thread(
            target=lambda: result.append(pipe.run(open_source(server.url, live_cfg.capture)))
        )
        th.start()
        log = tmp_path / "cam.jsonl"

        def events() -> list[dict[str, Any]]:
            return _events(log) if log.is_file() else []

        try:
            assert wait_until(lambda: any(e["event"] == "caption" for e in events()), 60)
            server.stop()
            assert wait_until(lambda: any(e["event"] == "source_lost" for e in events()), 20)
            time.sleep(0.5)
            server.start()
            assert wait_until(lambda: any(e["event"] == "source_back" for e in events()), 20)
            t_back = next(float(e["t"]) for e in events() if e["event"] == "source_back")
            assert wait_until(
                lambda: any(e["event"] == "caption" and float(e["t"]) > t_back for e in events()),
                60,
            ), "captioning resumes after the camera comes back, without restarting the pipeline"
        finally:
            pipe.stop()
            th.join(60)
    s = result[0]
    assert s.reconnects >= 1 and s.captions >= 2 and s.frames_out > 0
    assert s.frames_out + s.dropped == s.frames_in
    assert _count_frames(tmp_path / "cam.mp4") >= s.frames_out


def test_sigint_during_replay_leaves_playable_video_and_complete_srt(
    bundle: Path, clip: Path, tmp_path: Path
) -> None:
    args = [sys.executable, "-m", "drivecap", "--config", str(REPO / "config.yaml")]
    for o in _overrides(bundle):
        args += ["--set", o]
    args += ["replay", str(clip), "--out", str(tmp_path), "--loop", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = tmp_path / "drive_clip.jsonl"
    try:
        ok = wait_until(lambda: log.is_file() and log.read_text().count('"event":"caption"') >= 3, 120)
        assert ok, proc.communicate()[1] if proc.poll() is not None else "no captions yet"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in out
    n = _count_frames(tmp_path / "drive_clip.mp4")
    assert n > 0
    cues = parse_srt((tmp_path / "drive_clip.srt").read_text(encoding="utf-8"))
    assert cues
    events = _events(log)
    assert events[-1]["event"] == "end" and events[-1]["interrupted"] is True
    assert events[-1]["frames_out"] == n


def test_output_names_cannot_escape_the_folder() -> None:
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert safe_name("..") == "capture"
    assert "/" not in safe_name("a/b\\c d") and safe_name("drive clip") == "drive_clip"


def test_replay_of_a_live_source_is_a_one_line_error(tmp_path: Path) -> None:
    proc = run_cli("replay", "http://127.0.0.1:9/stream", "--out", str(tmp_path))
    assert_one_line_error(proc, "live source", "drivecap run")


def test_percentiles_and_recorder() -> None:
    from drivecap.metrics import LatencyRecorder, percentile

    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([5.0], 95) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 100) == 5.0
    rec = LatencyRecorder()
    for ms in (10.0, 20.0, 30.0):
        rec.record("encode", ms)
    rec.count("dropped", 2)
    st = rec.stats("encode")
    assert st is not None and (st.count, st.p50, st.max) == (3, 20.0, 30.0)
    summary = rec.summary()
    assert summary["counters"] == {"dropped": 2} and rec.stats("decode") is None


def test_run_command_on_a_live_stream_headless(bundle: Path, store: AssetStore, tmp_path: Path) -> None:
    frames = jpeg_frames_from_video(store.clip("project_video03"), limit=20, step=3, width=320)
    sets = [a for o in _overrides(bundle) for a in ("--set", o)]
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["OMP_NUM_THREADS"] = "1"
    with MjpegServer(frames, fps=15) as server:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "drivecap",
                "--config",
                str(REPO / "config.yaml"),
                *sets,
                "run",
                "--source",
                server.url,
                "--out",
                str(tmp_path),
                "--max-frames",
                "30",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "window skipped" in proc.stderr  # headless: said once, no crash
    name = safe_name(f"127.0.0.1:{server.port}_stream")
    events = _events(tmp_path / f"{name}.jsonl")
    caps = [e for e in events if e["event"] == "caption"]
    assert caps and events[-1]["event"] == "end" and events[-1]["frames_out"] == 30
    assert f"] {caps[0]['text']}" in proc.stdout  # captions printed as they appear
    assert "frames in" in proc.stdout and "glass-to-caption" in proc.stdout


class _CountingEncoder:
    """The real encoder, counting its calls (the mirror view adds one per caption)."""

    def __init__(self, enc: Any) -> None:
        self.enc = enc
        self.calls = 0

    def encode(self, frame_bgr: Any) -> Any:
        self.calls += 1
        return self.enc.encode(frame_bgr)

    def describe(self) -> str:
        return str(self.enc.describe())


def test_mirror_view_gives_a_mirrored_drive_the_mirrored_captions(
    cfg: Config, models: tuple[Any, Any], clip: Path, tmp_path: Path
) -> None:
    """The same frames as lossless PNG folders, as recorded and mirrored: with the mirror view on (the
    default) every frame captioned in both replays gets exactly the mirrored caption, and each caption cost
    one extra encode."""
    from drivecap.captions.grammar import mirror_caption

    enc, cap = models
    assert cap.mirror_view, "config.yaml should turn the mirror view on by default"
    folders = {"plain": tmp_path / "plain", "mirror": tmp_path / "mirror"}
    for f in folders.values():
        f.mkdir()
    reader = cv2.VideoCapture(str(clip))
    i = 0
    while True:
        ok, img = reader.read()
        if not ok:
            break
        cv2.imwrite(str(folders["plain"] / f"{i:04d}.png"), img)
        cv2.imwrite(str(folders["mirror"] / f"{i:04d}.png"), cv2.flip(img, 1))
        i += 1
    reader.release()
    captions: dict[str, dict[int, str]] = {}
    for name, folder in folders.items():
        counting = _CountingEncoder(enc)
        out = tmp_path / f"out_{name}"
        s = Pipeline(cfg, counting, cap, Outputs(out, name, window=False), mode="offline", stride=3).run(
            open_source(str(folder), cfg.capture)
        )
        assert s.captions >= 2
        assert counting.calls == s.encoded + s.captions
        captions[name] = {
            e["frame"]: e["tokens"] for e in _events(out / f"{name}.jsonl") if e["event"] == "caption"
        }
    both = sorted(set(captions["plain"]) & set(captions["mirror"]))
    assert 0 in both
    for fr in both:
        assert captions["mirror"][fr] == mirror_caption(captions["plain"][fr]), fr
