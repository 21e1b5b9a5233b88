"""Soak test: a live 30 fps MJPEG camera on 127.0.0.1 through the whole pipeline for a fixed time.

The camera is served by this process from a real clip (JPEG frames over HTTP multipart, as an IP dashcam
sends them), and read back through the real capture thread, encoder, gate, decoder, overlay, every file
sink and the speech worker in ``wav`` mode. A sampler thread records, once per ``interval_s``: resident
memory, open file descriptors, thread count, whether each worker thread (capture, inference, speech) is
alive, and the depth of the pipeline's frame slots. The report compares memory after the warm-up with
memory at the end, and checks that no worker died, the slots stayed within their depth, and every frame
read was either output or counted as dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from drivecap.config import Config

log = logging.getLogger(__name__)

WORKERS = ("capture", "inference", "speech")
SLOT_DEPTHS = {"inference": 1, "output": 2}  # what the pipeline builds its slots with
MAX_GROWTH_PCT = 5.0

# --------------------------------------------------------------------------------------------- camera


def clip_jpegs(
    path: str | Path, limit: int = 300, width: int = 640, quality: int = 85, step: int = 1
) -> list[bytes]:
    """The first ``limit`` frames (every ``step``-th) of a video, resized to ``width``, as JPEG bytes."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    out: list[bytes] = []
    i = 0
    try:
        while len(out) < limit:
            ok, img = cap.read()
            if not ok:
                break
            if i % step == 0:
                h = round(img.shape[0] * width / img.shape[1])
                img = cv2.resize(img, (width, h), interpolation=cv2.INTER_AREA)
                ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
                if ok:
                    out.append(buf.tobytes())
            i += 1
    finally:
        cap.release()
    if not out:
        from drivecap.errors import DrivecapError

        raise DrivecapError(f"no frames could be read from {path}; pick another --clip")
    return out


class _CameraServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, camera: MjpegCamera) -> None:
        self.camera = camera
        super().__init__(("127.0.0.1", 0), _CameraHandler)


class _CameraHandler(BaseHTTPRequestHandler):
    server: _CameraServer
    boundary = "drivecapsoak"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("camera: " + format, *args)

    def do_GET(self) -> None:
        cam = self.server.camera
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={self.boundary}")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        period = 1.0 / cam.fps
        t_next = time.monotonic()
        i = 0
        with contextlib.suppress(OSError):
            while not cam.stopping.is_set():
                jpg = cam.frames[i % len(cam.frames)]
                head = f"--{self.boundary}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpg)}\r\n\r\n"
                self.wfile.write(head.encode() + jpg + b"\r\n")
                self.wfile.flush()
                cam.frames_sent += 1
                i += 1
                t_next += period
                delay = t_next - time.monotonic()
                if delay > 0:
                    cam.stopping.wait(delay)
                else:  # fell behind (a busy core): a camera does not send a burst to catch up
                    cam.late += 1
                    t_next = time.monotonic()


class MjpegCamera:
    """An HTTP MJPEG camera on 127.0.0.1 sending ``frames`` in a loop at ``fps``."""

    def __init__(self, frames: Sequence[bytes], fps: float = 30.0) -> None:
        self.frames = list(frames)
        self.fps = fps
        self.frames_sent = 0
        self.late = 0
        self.stopping = threading.Event()
        self._server = _CameraServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="soak-camera", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/stream"

    def __enter__(self) -> MjpegCamera:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# --------------------------------------------------------------------------------------------- sampling


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; peak RSS elsewhere, as the nearest figure)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


@dataclass
class Sample:
    t: float  # seconds since the pipeline started
    rss_mb: float
    fds: int
    threads: int
    workers: dict[str, bool]
    slots: dict[str, int]


class Sampler(threading.Thread):
    """Samples the process and the pipeline every ``interval_s`` until stopped."""

    def __init__(self, pipeline: Any, interval_s: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.pipeline = pipeline
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self.slot_max: dict[str, int] = {}
        self.t_stopping: float | None = None  # when the pipeline began to shut down (limit or Ctrl-C)
        self._stop_evt = threading.Event()
        self._t0 = time.monotonic()

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(5)

    def sample(self) -> Sample:
        names = [t.name for t in threading.enumerate() if t.is_alive()]
        slots = {k: s.pending for k, s in dict(getattr(self.pipeline, "slots", {})).items()}
        for k, v in slots.items():
            self.slot_max[k] = max(self.slot_max.get(k, 0), v)
        s = Sample(
            t=round(time.monotonic() - self._t0, 2),
            rss_mb=round(rss_bytes() / 2**20, 2),
            fds=open_fds(),
            threads=len(names),
            workers={w: w in names for w in WORKERS},
            slots=slots,
        )
        self.samples.append(s)
        return s

    def run(self) -> None:
        # Slots are polled ten times per sample so a short burst above the depth would be seen.
        fine = self.interval_s / 10
        n = 0
        while not self._stop_evt.wait(fine):
            n += 1
            if self.t_stopping is None and getattr(self.pipeline, "stopping", False):
                self.t_stopping = time.monotonic() - self._t0
            if n % 10 == 0:
                self.sample()
            else:
                for k, slot in dict(getattr(self.pipeline, "slots", {})).items():
                    self.slot_max[k] = max(self.slot_max.get(k, 0), slot.pending)


# --------------------------------------------------------------------------------------------- report


@dataclass
class SoakReport:
    """Figures of one soak run; ``checks`` says which held."""

    seconds: float
    warmup_s: float
    camera_fps: float
    source: str
    frames_sent: int = 0
    camera_late: int = 0
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    not_encoded: int = 0
    encoded: int = 0
    pregate_skipped: int = 0
    encode_errors: int = 0
    captions: int = 0
    utterances: int = 0
    wav_files: int = 0
    reconnects: int = 0
    video_frames_written: int = 0
    output_fps: float = 0.0
    rss_start_mb: float = 0.0
    rss_warm_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_max_mb: float = 0.0
    growth_pct: float = 0.0
    fds_warm: int = 0
    fds_end: int = 0
    threads_warm: int = 0
    threads_end: int = 0
    workers_alive_all_samples: dict[str, bool] = field(default_factory=dict)
    slot_max: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    error: str = ""
    interrupted: bool = False
    encode_p50_ms: float = 0.0
    glass_to_caption_p50_ms: float = 0.0
    checks: dict[str, bool] = field(default_factory=dict)
    out_dir: str = ""

    @property
    def ok(self) -> bool:
        return all(self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def lines(self) -> list[str]:
        out = [
            f"soak: {self.seconds:.0f} s of a {self.camera_fps:.0f} fps MJPEG camera on 127.0.0.1 "
            f"(warm-up {self.warmup_s:.0f} s), {self.samples} samples",
            f"frames: sent {self.frames_sent} (camera late {self.camera_late}), in {self.frames_in}, "
            f"out {self.frames_out}, dropped {self.dropped}, not encoded {self.not_encoded}, "
            f"encoded {self.encoded}, pre-gate skipped {self.pregate_skipped}, encoder errors {self.encode_errors}",
            f"captions {self.captions}, utterances {self.utterances} ({self.wav_files} WAV files), "
            f"reconnects {self.reconnects}, video frames {self.video_frames_written}, "
            f"output {self.output_fps:.2f} fps",
            f"memory (RSS): start {self.rss_start_mb:.1f} MB, after warm-up {self.rss_warm_mb:.1f} MB, "
            f"end {self.rss_end_mb:.1f} MB, max {self.rss_max_mb:.1f} MB: growth {self.growth_pct:+.2f}% "
            f"(limit {MAX_GROWTH_PCT:.0f}%)",
            f"file descriptors {self.fds_warm} -> {self.fds_end}; threads {self.threads_warm} -> "
            f"{self.threads_end}; workers alive in every sample: "
            + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in self.workers_alive_all_samples.items()),
            "slot depth max: "
            + ", ".join(f"{k} {v} (of {SLOT_DEPTHS.get(k, '?')})" for k, v in self.slot_max.items()),
            f"latency p50: encode {self.encode_p50_ms:.1f} ms, glass-to-caption {self.glass_to_caption_p50_ms:.1f} ms",
            "checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in self.checks.items()),
        ]
        if self.interrupted:
            out.append("interrupted before the set time: figures cover the time run")
        if self.error:
            out.append(f"error: {self.error}")
        return out


def _count_video_frames(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    cap.release()
    return n


def run_soak(
    cfg: Config,
    *,
    seconds: float,
    warmup_s: float,
    clip: str | Path,
    fps: float = 30.0,
    width: int = 640,
    out_dir: Path | None = None,
    interval_s: float = 1.0,
    frames_limit: int = 300,
) -> SoakReport:
    """Runs the soak and returns its report (the outputs stay in ``out_dir``, a temporary folder if None)."""
    from drivecap.metrics import percentile
    from drivecap.pipeline.core import Outputs
    from drivecap.pipeline.inference import load_models
    from drivecap.pipeline.runner import Pipeline, sigint_stops
    from drivecap.pipeline.sources import open_source

    if warmup_s >= seconds:
        from drivecap.errors import ConfigError

        raise ConfigError(f"--warmup-s {warmup_s} must be shorter than the soak ({seconds:.0f} s)")
    cfg.speech.backend = "wav"
    cfg.output.window = False
    cfg.capture.loop = False
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="drivecap-soak-"))
    report = SoakReport(
        seconds=seconds, warmup_s=warmup_s, camera_fps=fps, source=str(clip), out_dir=str(folder)
    )
    rss_start = rss_bytes()
    frames = clip_jpegs(clip, limit=frames_limit, width=width)
    enc, captioner = load_models(cfg)
    with enc, MjpegCamera(frames, fps=fps) as camera:
        pipe = Pipeline(
            cfg, enc, captioner, Outputs(folder, "soak", window=False), mode="live", max_seconds=seconds
        )
        sampler = Sampler(pipe, interval_s)
        sampler.start()
        summary = None
        try:
            with sigint_stops(pipe):  # Ctrl-C / SIGTERM end the soak early, with its figures
                summary = pipe.run(open_source(camera.url, cfg.capture))
        except Exception as exc:  # reported as a failed check with its one-line reason
            report.error = f"{exc.__class__.__name__}: {exc}"
            log.exception("soak run failed")
        finally:
            sampler.stop()
        report.frames_sent = camera.frames_sent
        report.camera_late = camera.late
    samples = sampler.samples
    # The pipeline's workers exist from its first frame to its shutdown: judge the samples in between.
    t_end = min(seconds, sampler.t_stopping if sampler.t_stopping is not None else seconds) - interval_s
    running = [s for s in samples if 2 * interval_s <= s.t <= t_end]
    report.interrupted = pipe.interrupted
    report.seconds = round(min(seconds, sampler.t_stopping or seconds), 1)
    warm = [s for s in running if s.t >= warmup_s]
    report.samples = len(samples)
    report.rss_start_mb = round(rss_start / 2**20, 2)
    if warm:
        report.rss_warm_mb, report.rss_end_mb = warm[0].rss_mb, warm[-1].rss_mb
        report.rss_max_mb = max(s.rss_mb for s in warm)
        report.growth_pct = round((warm[-1].rss_mb - warm[0].rss_mb) / warm[0].rss_mb * 100.0, 2)
        report.fds_warm, report.fds_end = warm[0].fds, warm[-1].fds
        report.threads_warm, report.threads_end = warm[0].threads, warm[-1].threads
    report.workers_alive_all_samples = {
        w: bool(running) and all(s.workers[w] for s in running) for w in WORKERS
    }
    report.slot_max = dict(sampler.slot_max)
    if summary is not None:
        report.frames_in = summary.frames_in
        report.frames_out = summary.frames_out
        report.dropped = summary.dropped
        report.not_encoded = summary.not_encoded
        report.encoded = summary.encoded
        report.pregate_skipped = summary.pregate_skipped
        report.encode_errors = summary.encode_errors
        report.captions = summary.captions
        report.utterances = summary.utterances
        report.reconnects = summary.reconnects
        report.output_fps = round(summary.output_fps, 2)
        report.encode_p50_ms = round(summary.stage("encode"), 1)
        g = pipe.metrics.samples("glass_to_caption")
        report.glass_to_caption_p50_ms = round(percentile(g, 50), 1) if g else 0.0
    report.wav_files = len(list(folder.glob("soak.speech*.wav")))
    report.video_frames_written = _count_video_frames(folder / "soak.mp4")
    report.checks = {
        "no_error": not report.error,
        "memory_growth_below_5pct": bool(warm) and report.growth_pct < MAX_GROWTH_PCT,
        "workers_alive": bool(report.workers_alive_all_samples)
        and all(report.workers_alive_all_samples.values()),
        "slots_bounded": bool(report.slot_max)
        and all(v <= SLOT_DEPTHS.get(k, 1) for k, v in report.slot_max.items()),
        "every_frame_counted": summary is not None
        and summary.frames_in == summary.frames_out + summary.dropped
        and summary.frames_in <= report.frames_sent,
        "captions_and_speech": report.captions > 0
        and report.utterances > 0
        and report.wav_files == report.utterances,
    }
    return report
