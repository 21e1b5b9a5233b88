"""Real faults, each made for real: a live MJPEG camera on 127.0.0.1 that stalls, closes mid-frame and comes
back; a real clip cut in the middle; a file that is no video; paths that cannot be read; a camera that is
not there; a TTS that is missing or breaks mid-run; an output folder that cannot be made; SIGINT and SIGTERM
to a real ``drivecap`` process during replay and during a live run; an encoder that raises on one frame.

For each, the pipeline either goes on (counting and logging the fault) or stops with one ``drivecap: error:``
line, and what was already written stays usable: the mp4 reopens in OpenCV with its frames, the SRT/WebVTT
parse, every JSONL line is JSON and the log ends with the ``end`` event.

Tests run as root here, where permission bits do not stop reads or writes: an "unreadable path" is a path
inside a folder that does not exist (or a folder given as a video), and an "unwritable output folder" is
one whose parent is a regular file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from drivecap.assets import AssetStore
from drivecap.config import Config, load_config
from drivecap.errors import DrivecapError
from drivecap.outputs.base import SinkError
from drivecap.outputs.speech import SpeechWorker
from drivecap.outputs.subtitles import parse_srt
from drivecap.outputs.tts import Backend
from drivecap.pipeline.capture import wait_until
from drivecap.pipeline.core import Outputs
from drivecap.pipeline.inference import load_models
from drivecap.pipeline.runner import Pipeline, safe_name
from drivecap.pipeline.sources import open_source
from drivecap.pipeline.summary import RunSummary
from tests.conftest import write_short_clip

sys.path.insert(0, str(Path(__file__).parent))
import contextlib

from conftest import REPO, assert_one_line_error, run_cli
from mjpeg_server import MjpegServer, jpeg_frames_from_video

pytestmark = pytest.mark.slow

N_FRAMES = 40
FPS = 30.0


def _overrides(bundle: Path) -> list[str]:
    return [
        "encoder.backend=onnxruntime",
        "encoder.precision=int8",
        "encoder.threads=1",
        "encoder.warmup_runs=0",
        f"decoder.bundle={bundle}",
        "decoder.max_tokens=6",
        "gate.min_interval_s=0.0",
        "gate.max_age_s=0.5",
        "gate.pixel_threshold=0.002",
        "speech.backend=none",
        "capture.reconnect_initial_s=0.1",
        "capture.reconnect_max_s=0.5",
        "capture.read_timeout_s=1.0",
    ]


def _cli_sets(bundle: Path, *extra: str) -> list[str]:
    return [a for o in (*_overrides(bundle), *extra) for a in ("--set", o)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from drivecap.decoder.bundle import write_random_bundle

    # An empty encoder hash accepts the INT8 encoder: these tests are about the mechanics, not the words.
    return write_random_bundle(tmp_path_factory.mktemp("bundle") / "random", seed=3)


@pytest.fixture(scope="module")
def cfg(bundle: Path, real_cfg: Config) -> Config:
    return load_config(REPO / "config.yaml", _overrides(bundle))


@pytest.fixture(scope="module")
def models(cfg: Config):  # type: ignore[no-untyped-def]
    enc, cap = load_models(cfg)
    yield enc, cap
    enc.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, store: AssetStore) -> Path:
    """40 real frames of a training drive (every 3rd frame, 480x270) as a 30 fps mp4v file."""
    path = tmp_path_factory.mktemp("clip") / "drive.mp4"
    return write_short_clip(store, path, N_FRAMES, 3, FPS)


@pytest.fixture(scope="module")
def jpegs(store: AssetStore) -> list[bytes]:
    return jpeg_frames_from_video(store.clip("challenge02"), limit=40, step=5, width=320)


# --------------------------------------------------------------------------------------------- checks


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} does not reopen"
    n = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        assert img is not None and img.size > 0
        n += 1
    cap.release()
    return n


def read_events(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), "the event log ends with a whole line"
    return [json.loads(line) for line in text.splitlines()]  # every line is one JSON object


def parse_vtt(text: str) -> int:
    assert text.startswith("WEBVTT\n\n")
    body = text[len("WEBVTT\n\n") :]
    if not body:
        return 0
    # The same block structure as SRT, with '.' before the milliseconds.
    srt_like = "\n\n".join(
        "\n".join([b.split("\n")[0], b.split("\n")[1].replace(".", ","), *b.split("\n")[2:]])
        for b in body.split("\n\n")
        if b
    )
    return len(parse_srt(srt_like + "\n\n"))


def check_outputs(
    folder: Path, name: str
) -> tuple[int, list[tuple[float, float, str]], list[dict[str, Any]]]:
    """(video frames, SRT cues, events) after checking every output is complete and valid."""
    n = count_frames(folder / f"{name}.mp4")
    cues = parse_srt((folder / f"{name}.srt").read_text(encoding="utf-8"))
    assert parse_vtt((folder / f"{name}.vtt").read_text(encoding="utf-8")) == len(cues)
    events = read_events(folder / f"{name}.jsonl")
    assert events[0]["event"] == "start" and events[-1]["event"] == "end"
    return n, cues, events


def _pipeline(cfg: Config, models: tuple[Any, Any], out: Path, name: str, mode: str, **kw: Any) -> Pipeline:
    enc, cap = models
    return Pipeline(cfg, enc, cap, Outputs(out, name, window=False), mode=mode, **kw)


# --------------------------------------------------------------------------------------------- live faults


class FaultyMjpegServer:
    """A raw-socket HTTP MJPEG camera on 127.0.0.1 whose first connections misbehave as planned.

    ``plan[i] = (fault, k)``: connection i sends k frames, then ``stall`` (keeps the socket open and
    silent for ``stall_s``), ``midframe`` (sends half of a JPEG part and closes) or ``garbage`` (sends
    well-framed parts whose bytes are not a JPEG, then closes). Later connections stream normally until
    the server stops, with ``later_frames`` when given (a camera that comes back in another resolution).
    """

    def __init__(
        self,
        frames: list[bytes],
        fps: float,
        plan: list[tuple[str, int]],
        stall_s: float = 4.0,
        later_frames: list[bytes] | None = None,
    ) -> None:
        self.frames = frames
        self.later_frames = later_frames or frames
        self.period = 1.0 / fps
        self.plan = plan
        self.stall_s = stall_s
        self.connections = 0
        self.faults_done: list[str] = []
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, name="faulty-mjpeg", daemon=True)

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}/stream"

    def __enter__(self) -> FaultyMjpegServer:
        self._accept.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._accept.join(5)
        for t in self._threads:
            t.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            n = self.connections
            self.connections += 1
            t = threading.Thread(target=self._handle, args=(conn, n), daemon=True)
            self._threads.append(t)
            t.start()

    def _part(self, jpg: bytes) -> tuple[bytes, bytes]:
        head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpg)}\r\n\r\n".encode()
        return head, jpg + b"\r\n"

    def _handle(self, conn: socket.socket, n: int) -> None:
        fault, k = self.plan[n] if n < len(self.plan) else ("none", -1)
        frames = self.frames if n < len(self.plan) else self.later_frames
        try:
            conn.settimeout(5)
            req = b""
            while b"\r\n\r\n" not in req:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                req += chunk
            conn.sendall(
                b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n"
                b"Cache-Control: no-cache\r\n\r\n"
            )
            i = 0
            while not self._stop.is_set():
                head, body = self._part(frames[i % len(frames)])
                if i == k and fault == "stall":
                    self.faults_done.append("stall")
                    self._stop.wait(self.stall_s)  # connected, silent: a camera whose encoder hung
                    return
                if i == k and fault == "garbage":
                    self.faults_done.append("garbage")
                    junk = bytes((i * 37 + j) % 256 for j in range(4000))
                    for _ in range(10):  # the client may hang up at the first one
                        conn.sendall(b"".join(self._part(junk)))
                        self._stop.wait(self.period)
                    return
                if i == k and fault == "midframe":
                    conn.sendall(head + body[: len(body) // 2])
                    self.faults_done.append("midframe")
                    return  # the finally closes the socket in the middle of the JPEG
                conn.sendall(head + body)
                i += 1
                self._stop.wait(self.period)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


def test_live_camera_that_stalls_closes_mid_frame_and_comes_back(
    cfg: Config, models: tuple[Any, Any], jpegs: list[bytes], store: AssetStore, tmp_path: Path
) -> None:
    plan = [("stall", 45), ("midframe", 45), ("garbage", 45)]
    bigger = jpeg_frames_from_video(store.clip("challenge02"), limit=10, step=5, width=480)
    with FaultyMjpegServer(jpegs, fps=15, plan=plan, later_frames=bigger) as server:
        pipe = _pipeline(cfg, models, tmp_path, "cam", "live")
        result: list[RunSummary] = []
        errors: list[BaseException] = []

        def target() -> None:
            try:
                result.append(pipe.run(open_source(server.url(), cfg.capture)))
            except BaseException as exc:
                errors.append(exc)

        th = threading.Thread(target=target)
        th.start()
        log = tmp_path / "cam.jsonl"

        def events() -> list[dict[str, Any]]:
            return read_events(log) if log.is_file() and log.stat().st_size else []

        def kinds(kind: str) -> list[dict[str, Any]]:
            return [e for e in events() if e["event"] == kind]

        try:
            assert wait_until(lambda: len(kinds("source_back")) >= 3, 90), events()[-5:]
            t_back = float(kinds("source_back")[-1]["t"])
            assert wait_until(lambda: any(float(e["t"]) > t_back for e in kinds("caption")), 60), (
                "captioning resumes after the camera is back, without a restart"
            )
        finally:
            pipe.stop()
            th.join(60)
    assert not errors, errors
    assert server.faults_done == ["stall", "midframe", "garbage"] and server.connections >= 4
    s = result[0]
    assert s.reconnects >= 3
    assert s.frames_out + s.dropped == s.frames_in, "every frame read is output or counted as dropped"
    n, cues, evs = check_outputs(tmp_path, "cam")
    assert n == s.frames_out + s.video_filled  # the gaps are filled so video and subtitles stay in step
    assert len([e for e in evs if e["event"] == "source_lost"]) == s.reconnects
    assert evs[-1]["reconnects"] == s.reconnects and cues


def test_live_camera_that_never_sends_a_frame_is_a_one_line_error(
    bundle: Path, jpegs: list[bytes], tmp_path: Path
) -> None:
    with FaultyMjpegServer(jpegs, fps=15, plan=[("stall", 0)], stall_s=30) as server:
        proc = run_cli(*_cli_sets(bundle), "run", "--source", server.url(), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "cannot open stream", f"127.0.0.1:{server.port}")


# --------------------------------------------------------------------------------------------- bad files


def test_real_clip_cut_in_the_middle_replays_up_to_the_cut(
    bundle: Path, store: AssetStore, tmp_path: Path
) -> None:
    src = store.clip("project_video02")
    data = src.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat"), "this clip keeps its index in front"
    cut = tmp_path / "cut drive.mp4"
    cut.write_bytes(data[: len(data) // 8])  # a copy interrupted mid-way, in the middle of a frame
    readable = count_frames(cut)
    declared = int(cv2.VideoCapture(str(cut)).get(cv2.CAP_PROP_FRAME_COUNT))
    assert 0 < readable < declared
    out = tmp_path / "out"
    proc = run_cli(
        *_cli_sets(bundle), "replay", str(cut), "--out", str(out), "--stride", "15", "--no-progress"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"ended after {readable} of the {declared} frames" in proc.stderr  # the fault is logged
    n, cues, events = check_outputs(out, "cut_drive")
    assert n == readable == events[-1]["frames_out"]
    assert cues and cues[-1][1] <= readable / 25.0 + 1e-3


def test_video_whose_index_was_cut_off_is_a_one_line_error(bundle: Path, clip: Path, tmp_path: Path) -> None:
    data = clip.read_bytes()
    assert data.find(b"moov") > data.find(b"mdat"), "OpenCV writes the mp4 index at the end"
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    proc = run_cli(*_cli_sets(bundle), "replay", str(cut), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "cannot open video file", str(cut))


@pytest.mark.parametrize(
    ("content", "suffix"),
    [(b"this is a shopping list, not a video\n", ".mp4"), (bytes(range(256)) * 64, ".avi"), (b"", ".mkv")],
    ids=["text", "random-bytes", "empty"],
)
def test_file_that_is_not_a_video_is_a_one_line_error(
    bundle: Path, tmp_path: Path, content: bytes, suffix: str
) -> None:
    f = tmp_path / f"notes{suffix}"
    f.write_bytes(content)
    proc = run_cli(*_cli_sets(bundle), "replay", str(f), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, str(f))
    assert not (tmp_path / "o" / "notes.mp4").exists()


def test_unreadable_paths_are_one_line_errors(bundle: Path, tmp_path: Path) -> None:
    # As root, chmod 000 does not stop a read: a path under a missing folder and a folder holding no
    # images are the unreadable inputs that stay unreadable for root too.
    missing = tmp_path / "no such folder" / "drive.mp4"
    proc = run_cli(*_cli_sets(bundle), "replay", str(missing), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, str(missing), "not a camera index, URL")
    empty = tmp_path / "empty folder"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    proc = run_cli(*_cli_sets(bundle), "replay", str(empty), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, str(empty), "has no")


def test_camera_index_that_does_not_exist_is_a_one_line_error(bundle: Path, tmp_path: Path) -> None:
    index = next(i for i in range(9, 64) if not Path(f"/dev/video{i}").exists())
    proc = run_cli(*_cli_sets(bundle), "run", "--source", str(index), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, f"camera {index}")


def test_output_folder_that_cannot_be_made_is_a_one_line_error(
    bundle: Path, clip: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a file"
    blocker.write_text("I am a file, not a folder")
    out = blocker / "out"  # as root, a parent that is a regular file is what stops mkdir
    proc = run_cli(*_cli_sets(bundle), "replay", str(clip), "--out", str(out), "--no-progress")
    assert_one_line_error(proc, "cannot create output folder", str(out))
    assert blocker.read_text() == "I am a file, not a folder"


@pytest.mark.parametrize("which", ["srt", "vtt", "jsonl", "summary.json"])
def test_disk_full_on_one_output_stops_with_one_line_and_the_others_stay_valid(
    bundle: Path, clip: Path, tmp_path: Path, which: str
) -> None:
    if not Path("/dev/full").exists():
        pytest.fail("/dev/full is part of every Linux system this runs on")
    out = tmp_path / "out"
    out.mkdir()
    (out / f"drive.{which}").symlink_to("/dev/full")  # every write there fails with ENOSPC, a real full disk
    proc = run_cli(
        *_cli_sets(bundle), "replay", str(clip), "--out", str(out), "--stride", "4", "--no-progress"
    )
    assert_one_line_error(proc, f"drive.{which}", "No space left on device")
    if which != "jsonl":
        # The frames output before the stop are in a video that reopens, and the event log is complete.
        events = read_events(out / "drive.jsonl")
        assert events[-1]["event"] == "end"
        n = count_frames(out / "drive.mp4")
        # The frame being output when a subtitle write failed is already in the video.
        assert events[-1]["frames_out"] <= n <= events[-1]["frames_out"] + 1 and n > 0
        if which == "summary.json":
            assert n == events[-1]["frames_out"] == N_FRAMES  # the run itself was complete
    if which != "srt":
        parse_srt((out / "drive.srt").read_text(encoding="utf-8"))  # raises on a malformed or cut file
    if which != "vtt":
        parse_vtt((out / "drive.vtt").read_text(encoding="utf-8"))


@pytest.mark.parametrize(("which", "mode"), [("srt", "offline"), ("vtt", "offline"), ("vtt", "realtime")])
def test_disk_full_that_surfaces_only_at_close_still_ends_the_event_log(
    cfg: Config, models: tuple[Any, Any], clip: Path, tmp_path: Path, which: str, mode: str
) -> None:
    """The gate opens once (the first frame) and never again, so the one caption stays on screen to the end:
    its cue is the subtitle file's first write, at close. The ENOSPC there still stops the run with the one
    error, after the event log got its end event."""
    c = load_config(
        REPO / "config.yaml",
        [*_overrides(Path(cfg.decoder.bundle)), "gate.open_threshold=2.0", "gate.max_age_s=600"],
    )
    (tmp_path / f"drive.{which}").symlink_to("/dev/full")
    with pytest.raises(SinkError, match=rf"drive\.{which} \(No space left on device\)"):
        _pipeline(c, models, tmp_path, "drive", mode, stride=4).run(open_source(str(clip), c.capture))
    events = read_events(tmp_path / "drive.jsonl")
    assert events[0]["event"] == "start" and events[-1]["event"] == "end"
    end = events[-1]
    captions = [e for e in events if e["event"] == "caption"]
    n = count_frames(tmp_path / "drive.mp4")
    if mode == "offline":
        # Every frame went out before the close: the whole drive is in the video and the log.
        assert len(captions) == end["captions"] == 1
        assert n == end["frames_out"] == N_FRAMES
    else:
        # Live timing decides whether the caption reached the screen before the clip ended; either way
        # the WebVTT header or the cue is first written at close.
        assert len(captions) == end["captions"] <= 1
        assert n >= end["frames_out"] > 0  # the video fills frames the output loop dropped
    other = "vtt" if which == "srt" else "srt"
    text = (tmp_path / f"drive.{other}").read_text(encoding="utf-8")
    cues = parse_srt(text) if other == "srt" else parse_vtt(text)
    assert (len(cues) if isinstance(cues, list) else cues) == len(captions)


# --------------------------------------------------------------------------------------------- speech


def test_missing_tts_goes_silent_with_one_warning_and_the_replay_completes(
    cfg: Config,
    models: tuple[Any, Any],
    clip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))  # no espeak-ng anywhere
    c = load_config(REPO / "config.yaml", [*_overrides(Path(cfg.decoder.bundle)), "speech.backend=espeak"])
    with caplog.at_level(logging.WARNING):
        s = _pipeline(c, models, tmp_path, "drive", "offline", stride=4).run(
            open_source(str(clip), c.capture)
        )
    warnings = [r for r in caplog.records if "speech off" in r.getMessage()]
    assert len(warnings) == 1 and "espeak-ng" in warnings[0].getMessage()
    assert s.frames_out == N_FRAMES and s.captions >= 2 and s.utterances == 0
    n, _, events = check_outputs(tmp_path, "drive")
    assert n == N_FRAMES and not [e for e in events if e["event"] == "speech"]


def test_tts_that_breaks_mid_run_keeps_what_it_said_and_the_replay_completes(
    cfg: Config,
    models: tuple[Any, Any],
    clip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real = shutil.which("espeak-ng")
    assert real, "espeak-ng is part of the set-up (scripts/setup.sh)"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    counter = tmp_path / "calls"
    # The real espeak-ng for the first utterance, then the audio device "vanishes".
    (fake_bin / "espeak-ng").write_text(
        "#!/bin/sh\n"
        f'n=$(cat "{counter}" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "{counter}"\n'
        f'if [ "$n" -le 1 ]; then exec "{real}" "$@"; fi\n'
        'echo "error: audio device vanished" >&2; exit 1\n'
    )
    (fake_bin / "espeak-ng").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    c = load_config(
        REPO / "config.yaml",
        [
            *_overrides(Path(cfg.decoder.bundle)),
            "speech.backend=wav",
            "speech.min_gap_s=0.0",
            "speech.repeat_window_s=0.0",
            "speech.rate_wpm=500",
            "capture.loop=true",  # 5 s of drive: room for several utterances
        ],
    )
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        s = _pipeline(c, models, out, "drive", "offline", stride=10, max_frames=150).run(
            open_source(str(clip), c.capture)
        )
    assert int(counter.read_text()) >= 2, "the TTS was asked again after the first utterance"
    warnings = [r for r in caplog.records if "speech off" in r.getMessage()]
    assert len(warnings) == 1 and "audio device vanished" in warnings[0].getMessage()
    assert s.frames_out == 150 and s.captions >= 2
    assert s.utterances == 1, "the summary counts what was really said"
    first = out / "drive.speech0001.wav"
    with wave.open(str(first)) as w:  # what was said before the fault is a whole WAV file
        assert w.getnframes() > 1000
    n, _, _ = check_outputs(out, "drive")
    assert n == 150


class _RaisingBackend(Backend):
    """A TTS driver that speaks once and then raises something no backend is meant to raise."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0

    def speak(self, text: str, wav_path: Path | None, on_start: Any) -> None:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("driver segfaulted politely")
        on_start()


def test_tts_driver_raising_anything_does_not_kill_the_speech_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from drivecap.config import SpeechConfig

    hook_errors: list[Any] = []
    old_hook = threading.excepthook
    threading.excepthook = hook_errors.append
    backend = _RaisingBackend()
    events: list[dict[str, Any]] = []
    try:
        with (
            caplog.at_level(logging.WARNING),
            SpeechWorker(
                SpeechConfig(backend="wav", min_gap_s=0.0, repeat_window_s=0.0),
                backend=backend,
                on_event=events.append,
            ) as sw,
        ):
            sw.submit("car ahead", False, 1, 0.0)
            assert wait_until(lambda: len(events) == 1, 20)
            sw.submit("truck ahead", False, 2, 0.0)
            assert wait_until(lambda: backend.calls == 2, 20)
            assert wait_until(lambda: sw.silent, 20)
            sw.submit("person ahead", False, 3, 0.0)  # ignored quietly once silent
            thread = sw._thread
            assert thread is not None and thread.is_alive()
    finally:
        threading.excepthook = old_hook
    assert not hook_errors, "no exception escaped the speech thread"
    assert [e["text"] for e in events] == ["car ahead"] and backend.calls == 2
    assert len([r for r in caplog.records if "speech off" in r.getMessage()]) == 1


# --------------------------------------------------------------------------------------------- encoder


class OnceFailingEncoder:
    """Wraps the real encoder; raises on the ``fail_on``-th call (every call from then on if ``forever``)."""

    def __init__(self, inner: Any, fail_on: int = 3, forever: bool = False) -> None:
        self.inner = inner
        self.fail_on = fail_on
        self.forever = forever
        self.calls = 0
        self.onnx_sha256 = inner.onnx_sha256

    def encode(self, frame_bgr: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_on or (self.forever and self.calls >= self.fail_on):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.inner.encode(frame_bgr)

    def describe(self) -> str:
        return "flaky(" + self.inner.describe() + ")"


@pytest.mark.parametrize("mode", ["offline", "realtime"])
def test_encoder_failing_on_one_frame_is_skipped_counted_and_logged(
    cfg: Config,
    models: tuple[Any, Any],
    clip: Path,
    tmp_path: Path,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    enc, cap = models
    flaky = OnceFailingEncoder(enc, fail_on=2)
    # Frame encodes only (the mirror view's extra encodes are tested below).
    c = load_config(
        REPO / "config.yaml",
        [*_overrides(Path(cfg.decoder.bundle)), "gate.pixel_threshold=0.0", "decoder.mirror_view=false"],
    )
    pipe = Pipeline(c, flaky, cap, Outputs(tmp_path, "drive", window=False), mode=mode, stride=4)
    with caplog.at_level(logging.WARNING):
        s = pipe.run(open_source(str(clip), c.capture))
    assert s.encode_errors == 1 and flaky.calls > 2, "the run went on after the failing frame"
    assert len([r for r in caplog.records if "encoder failed on frame" in r.getMessage()]) == 1
    n, _, events = check_outputs(tmp_path, "drive")
    bad = [e for e in events if e["event"] == "gate" and e.get("reason") == "encoder_error"]
    assert len(bad) == 1 and "illegal memory access" in bad[0]["error"]
    assert events[-1]["encode_errors"] == 1
    assert any(e["event"] == "caption" and e["frame"] > bad[0]["frame"] for e in events), (
        "captions go on after the failing frame"
    )
    if mode == "offline":
        assert n == s.frames_out == N_FRAMES
    else:
        assert s.frames_out + s.dropped == s.frames_in == N_FRAMES
        assert n == s.frames_out + s.video_filled


def test_mirror_view_encode_failing_still_captions_the_frame(
    cfg: Config, models: tuple[Any, Any], clip: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The 2nd encode is frame 0's mirror (the first frame is always captioned): its failure costs the mirror
    view of that caption only, not the caption and not an encoder error."""
    enc, cap = models
    assert cap.mirror_view
    flaky = OnceFailingEncoder(enc, fail_on=2)
    c = load_config(REPO / "config.yaml", [*_overrides(Path(cfg.decoder.bundle)), "gate.pixel_threshold=0.0"])
    pipe = Pipeline(c, flaky, cap, Outputs(tmp_path, "drive", window=False), mode="offline", stride=4)
    with caplog.at_level(logging.WARNING):
        s = pipe.run(open_source(str(clip), c.capture))
    assert s.encode_errors == 0
    assert len([r for r in caplog.records if "mirror-view encode of frame 0 failed" in r.getMessage()]) == 1
    _, _, events = check_outputs(tmp_path, "drive")
    caps = [e for e in events if e["event"] == "caption"]
    assert caps and caps[0]["frame"] == 0


def test_encoder_that_keeps_failing_stops_with_one_line_and_complete_files(
    cfg: Config, models: tuple[Any, Any], clip: Path, tmp_path: Path
) -> None:
    enc, cap = models
    broken = OnceFailingEncoder(enc, fail_on=3, forever=True)
    c = load_config(
        REPO / "config.yaml",
        [*_overrides(Path(cfg.decoder.bundle)), "gate.pixel_threshold=0.0", "decoder.mirror_view=false"],
    )
    pipe = Pipeline(c, broken, cap, Outputs(tmp_path, "drive", window=False), mode="offline")
    with pytest.raises(DrivecapError, match="encoder failed on 10 frames in a row") as info:
        pipe.run(open_source(str(clip), c.capture))
    assert "\n" not in str(info.value)
    n, cues, events = check_outputs(tmp_path, "drive")
    assert n == events[-1]["frames_out"] > 0 and cues  # what was captioned before the stop is kept
    assert events[-1]["encode_errors"] == 10


# --------------------------------------------------------------------------------------------- signals


def _start(args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "drivecap", "--config", str(REPO / "config.yaml"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", ["replay", "run"])
def test_signal_mid_run_leaves_complete_outputs(
    bundle: Path, clip: Path, jpegs: list[bytes], tmp_path: Path, command: str, sig: signal.Signals
) -> None:
    server = MjpegServer(jpegs, fps=15).start()
    try:
        if command == "replay":
            name = "drive"
            args = [
                *_cli_sets(bundle),
                "replay",
                str(clip),
                "--out",
                str(tmp_path),
                "--loop",
                "--no-progress",
            ]
        else:
            name = safe_name(f"127.0.0.1:{server.port}_stream")
            args = [*_cli_sets(bundle), "run", "--source", server.url, "--out", str(tmp_path)]
        proc = _start(args)
        log = tmp_path / f"{name}.jsonl"
        try:
            ok = wait_until(lambda: log.is_file() and log.read_text().count('"event":"caption"') >= 2, 120)
            assert ok, proc.communicate(timeout=30)[1][-2000:] if proc.poll() is not None else "no captions"
            time.sleep(0.3)  # land the signal in the middle of writing, not right at a caption
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        server.stop()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert f"interrupted ({sig.name})" in err and "interrupted" in out
    n, cues, events = check_outputs(tmp_path, name)
    end = events[-1]
    assert end["interrupted"] is True and cues
    summary = json.loads((tmp_path / f"{name}.summary.json").read_text())
    assert summary["frames_out"] == end["frames_out"] > 0
    # Every frame output before the signal is in the video (live gaps filled to keep it in step).
    assert n == end["frames_out"] + summary["video_filled"]
    assert cues[-1][1] <= n / summary["source_fps"] + 0.05


def test_sigterm_handler_stops_the_pipeline_and_is_restored() -> None:
    """SIGTERM asks for the same orderly stop as Ctrl-C; the caller's handlers are back afterwards."""
    from drivecap.pipeline.runner import sigint_stops

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))

    class _P:
        stopping = False

        def stop(self) -> None:
            self.stopping = True

    p = _P()
    with sigint_stops(p):  # type: ignore[arg-type]
        assert signal.getsignal(signal.SIGTERM) not in (before[1], signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_until(lambda: p.stopping, 5)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_frames_are_real(clip: Path) -> None:
    """Guard for the fixtures above: the clip holds 40 distinct real frames, not a still."""
    cap = cv2.VideoCapture(str(clip))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img.astype(np.int16))
    cap.release()
    assert len(frames) == N_FRAMES
    assert np.abs(frames[0] - frames[-1]).mean() > 2.0
