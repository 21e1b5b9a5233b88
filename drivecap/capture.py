"""Frame sources (camera, file, RTSP/HTTP URL, GStreamer pipeline, image folder) and the capture thread.

A :class:`Source` opens, reads one BGR frame at a time with its position in the source, and closes.
The :class:`CaptureThread` owns one source: it stamps every frame (:class:`drivecap.frames.Frame`, with a
running index and the monotonic capture time), paces files by their timestamps when asked (``realtime``
replay), reopens a dropped live source with exponential backoff (logging the gap), ends cleanly at the end
of a file, and hands frames to :class:`LatestSlot` s that keep only the newest one, counting what they
overwrite.
"""

from __future__ import annotations

import collections
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from drivecap.config import CaptureConfig
from drivecap.errors import DrivecapError
from drivecap.frames import Frame
from drivecap.metrics import LatencyRecorder, now
from drivecap.security import mask_url

log = logging.getLogger(__name__)

T = TypeVar("T")
Image = npt.NDArray[np.uint8]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class CaptureError(DrivecapError):
    """A source cannot be opened or read (missing file, no camera, unsupported pipeline)."""


# --------------------------------------------------------------------------------------------- sources


def gstreamer_available() -> bool:
    """True when this OpenCV build has the GStreamer video backend."""
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


def looks_like_gstreamer(spec: str) -> bool:
    return (
        " ! " in spec or spec.rstrip().endswith("appsink") or spec.startswith(("nvarguscamerasrc", "v4l2src"))
    )


@dataclass(frozen=True)
class SourceSpec:
    """What the user asked for, classified: ``kind`` is camera, file, url, gstreamer or folder."""

    kind: str
    target: str
    name: str  # a short name for output files (not yet sanitised)

    @property
    def live(self) -> bool:
        return self.kind in ("camera", "url", "gstreamer")


def parse_source(spec: str) -> SourceSpec:
    """Classifies a --source / replay argument. Raises :class:`CaptureError` for something that is none."""
    s = spec.strip()
    if re.fullmatch(r"\d+", s):
        return SourceSpec("camera", s, f"camera{s}")
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s) and not s.lower().startswith("file://"):
        scheme = s.split("://", 1)[0].lower()
        if scheme not in ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp"):
            raise CaptureError(
                f"source {mask_url(s)!r}: scheme {scheme}:// is not supported; use rtsp://, http(s):// or a file"
            )
        rest = s.split("://", 1)[1]
        host = rest.split("/", 1)[0].split("@")[-1]
        tail = rest.split("/", 1)[1] if "/" in rest else ""
        return SourceSpec("url", s, f"{host}_{Path(tail.split('?')[0]).stem}".rstrip("_"))
    if looks_like_gstreamer(s):
        return SourceSpec("gstreamer", s, "gstreamer")
    p = Path(s.removeprefix("file://")).expanduser()
    if p.is_dir():
        return SourceSpec("folder", str(p), p.resolve().name or "folder")
    if p.is_file():
        return SourceSpec("file", str(p), p.stem)
    raise CaptureError(
        f"source {mask_url(s)!r} is not a camera index, URL, GStreamer pipeline, existing video file or image folder"
    )


class Source:
    """One frame source. ``read`` returns (image, position in seconds) or None at the end / on failure."""

    spec: SourceSpec
    fps: float = 0.0
    frame_count: int | None = None

    @property
    def live(self) -> bool:
        return self.spec.live

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> tuple[Image, float] | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoCaptureSource(Source):
    """A camera, video file, URL or GStreamer pipeline read through ``cv2.VideoCapture``."""

    def __init__(self, spec: SourceSpec, read_timeout_s: float = 5.0) -> None:
        self.spec = spec
        self.read_timeout_s = read_timeout_s
        self._cap: object | None = None
        self._count = 0

    def open(self) -> None:
        import cv2

        spec = self.spec
        timeout_ms = int(self.read_timeout_s * 1000)
        if spec.kind == "camera":
            api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
            cap = cv2.VideoCapture(int(spec.target), api)
            if cap.isOpened():
                # Without this V4L2 queues several frames and the model always sees the past.
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        elif spec.kind == "gstreamer":
            if not gstreamer_available():
                raise CaptureError(
                    f"source is a GStreamer pipeline but this OpenCV {cv2.__version__} was built without "
                    "GStreamer; use an OpenCV built with it (JetPack's on a Jetson) or a camera index/URL"
                )
            cap = cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER)
        elif spec.kind == "url":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
            cap = cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG, params)
        else:
            cap = cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            what = {
                "camera": f"camera {spec.target} (is /dev/video{spec.target} there and free?)",
                "url": f"stream {mask_url(spec.target)} (is the camera/server up?)",
                "gstreamer": f"GStreamer pipeline {spec.target!r}",
                "file": f"video file {spec.target} (not a video OpenCV/FFmpeg can decode?)",
            }[spec.kind]
            raise CaptureError(f"cannot open {what}")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.5 < fps < 1000 else 25.0
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = n if spec.kind == "file" and n > 0 else None
        self._cap = cap
        self._count = 0

    def read(self) -> tuple[Image, float] | None:
        import cv2

        cap = self._cap
        if cap is None:
            return None
        ok, img = cap.read()  # type: ignore[attr-defined]
        if not ok or img is None:
            return None
        if self.spec.kind == "file":
            pos = float(cap.get(cv2.CAP_PROP_POS_MSEC)) / 1e3  # type: ignore[attr-defined]
            # Some containers report no timestamps: fall back to the nominal frame rate.
            t = pos if pos > 0 or self._count == 0 else self._count / self.fps
        else:
            t = 0.0  # live: the capture thread uses time since start
        self._count += 1
        return img, t

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()  # type: ignore[attr-defined]
            self._cap = None


class ImageFolderSource(Source):
    """Images in a folder, in name order, as frames at a fixed rate (``capture.folder_fps``)."""

    def __init__(self, spec: SourceSpec, fps: float = 10.0) -> None:
        self.spec = spec
        self.fps = fps
        self._files: list[Path] = []
        self._i = 0

    def open(self) -> None:
        folder = Path(self.spec.target)
        self._files = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self._files:
            raise CaptureError(f"image folder {folder} has no {'/'.join(IMAGE_SUFFIXES)} files")
        self.frame_count = len(self._files)
        self._i = 0

    def read(self) -> tuple[Image, float] | None:
        import cv2

        while self._i < len(self._files):
            p = self._files[self._i]
            idx = self._i
            self._i += 1
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is not None:
                return np.asarray(img, dtype=np.uint8), idx / self.fps
            log.warning("skipping %s: not an image OpenCV can read", p)
        return None

    def close(self) -> None:
        self._files = []


def open_source(spec: str | SourceSpec, cfg: CaptureConfig) -> Source:
    """A ready-to-open source for a spec string (see :func:`parse_source`)."""
    s = parse_source(spec) if isinstance(spec, str) else spec
    if s.kind == "folder":
        return ImageFolderSource(s, fps=cfg.folder_fps)
    return VideoCaptureSource(s, read_timeout_s=cfg.read_timeout_s)


def warn_if_short(source: Source, frames_read: int) -> None:
    """Logs a file that ended well before the frame count its container declares (cut or damaged)."""
    declared = source.frame_count
    if declared and frames_read < 0.95 * declared:
        log.warning(
            "%s ended after %d of the %d frames its header declares: the file is truncated or damaged; "
            "the outputs cover the frames read",
            source.spec.name,
            frames_read,
            declared,
        )


def iter_frames(source: Source, loop: bool = False) -> Generator[Frame, None, None]:
    """Every frame of a file/folder source in order (offline replay): no thread, no pacing, no drops.

    With ``loop`` the source restarts at its end and positions keep increasing. ``t_capture`` is when the
    frame was decoded (monotonic), kept for latency figures only.
    """
    index = 0
    offset = 0.0
    while True:
        last_t = -1.0
        got_any = False
        source.open()
        try:
            while (item := source.read()) is not None:
                img, t = item
                got_any = True
                last_t = t
                yield Frame(index=index, image=img, t_capture=now(), t_source=offset + t)
                index += 1
        finally:
            source.close()
        warn_if_short(source, index)
        if not loop or not got_any:
            return
        offset += last_t + 1.0 / (source.fps or 25.0)


# --------------------------------------------------------------------------------------------- slots


class LatestSlot(Generic[T]):
    """A mailbox that keeps only the newest ``depth`` items (1 by default: newest frame wins).

    ``put`` into a full slot drops the oldest unread item (counted in ``overwritten``); ``get`` waits and
    returns the oldest unread one. ``close()`` marks the end of the stream: ``get`` then returns what is
    left, and None once empty. A depth of 2 lets a consumer that runs at the source rate ride out a
    late frame without dropping one, at the price of showing it up to a frame later.
    """

    def __init__(self, depth: int = 1) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self._cond = threading.Condition()
        self._items: collections.deque[T] = collections.deque()
        self._depth = depth
        self._closed = False
        self.overwritten = 0
        self.put_count = 0

    def put(self, item: T) -> bool:
        """Adds ``item``; True when an unread item had to be dropped for it."""
        with self._cond:
            replaced = len(self._items) >= self._depth
            if replaced:
                self._items.popleft()
                self.overwritten += 1
            self._items.append(item)
            self.put_count += 1
            self._cond.notify_all()
            return replaced

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest unread item, waiting up to ``timeout`` s; None on timeout or once closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if not self._items:
                return None
            return self._items.popleft()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def discard(self) -> int:
        """Drops the unread items (at shutdown); returns how many."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            return n

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed and not self._items

    @property
    def pending(self) -> int:
        """Unread items now (never more than the depth: the soak checks the queues stay bounded)."""
        with self._cond:
            return len(self._items)


# --------------------------------------------------------------------------------------------- thread


class CaptureThread(threading.Thread):
    """Reads a source in the background and hands every frame to ``slots`` (newest wins in each).

    ``pace=True`` plays a file at its own speed (realtime replay: frames the consumers miss are dropped,
    as with a camera). Live sources are reopened with backoff when they drop. When the source ends (or
    ``stop()`` is called) every slot is closed so consumers see the end.
    """

    def __init__(
        self,
        source: Source,
        slots: Sequence[LatestSlot[Frame]],
        cfg: CaptureConfig,
        *,
        pace: bool = False,
        loop: bool = False,
        metrics: LatencyRecorder | None = None,
        on_event: Callable[[dict[str, object]], None] | None = None,
    ) -> None:
        super().__init__(name="capture", daemon=True)
        self.source = source
        self.slots = list(slots)
        self.cfg = cfg
        self.pace = pace
        self.loop = loop
        self.metrics = metrics or LatencyRecorder()
        self.on_event = on_event
        self.frames_read = 0
        self.late_dropped = 0  # paced files: frames read too late to deliver
        self.reconnects = 0
        self.error: BaseException | None = None
        self._stop_evt = threading.Event()
        self._opened = threading.Event()
        self._t0 = 0.0

    def stop(self) -> None:
        self._stop_evt.set()

    @property
    def stopping(self) -> bool:
        return self._stop_evt.is_set()

    def start_and_wait_open(self, timeout: float | None = None) -> None:
        """Starts the thread and waits for the first open; re-raises its error (e.g. no such camera)."""
        self.start()
        while not self._opened.wait(0.05):
            if not self.is_alive():
                break
            if timeout is not None:
                timeout -= 0.05
                if timeout <= 0:
                    break
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # handed to the pipeline, which reports it
            self.error = exc
            log.debug("capture thread failed", exc_info=True)
        finally:
            self._opened.set()
            for s in self.slots:
                s.close()

    def _emit(self, **event: object) -> None:
        if self.on_event is not None:
            self.on_event(dict(event))

    def _run(self) -> None:
        src = self.source
        src.open()
        self._opened.set()
        self._t0 = now()
        index = 0
        offset = 0.0  # file position added on each loop
        pace_origin: float | None = None
        last_t = 0.0
        while not self._stop_evt.is_set():
            t_read = now()
            item = src.read()
            if item is None:
                if src.live:
                    if not self._reconnect():
                        return
                    continue
                if self.loop and self.frames_read > 0:
                    log.info("end of %s: starting again (loop)", src.spec.name)
                    offset += last_t + 1.0 / (src.fps or 25.0)
                    src.close()
                    src.open()
                    continue
                log.info("end of %s after %d frames", src.spec.name, self.frames_read)
                warn_if_short(src, self.frames_read)
                src.close()
                return
            img, t = item
            t_cap = now()
            self.metrics.record("capture", (t_cap - t_read) * 1e3)
            if src.live:
                t_source = t_cap - self._t0
            else:
                last_t = t
                t_source = offset + t
                if self.pace:
                    if pace_origin is None:
                        pace_origin = t_cap - t_source
                    delay = pace_origin + t_source - now()
                    if delay > 0 and self._stop_evt.wait(delay):
                        break
                    t_cap = now()
                    if delay < -1.5 / (src.fps or 25.0):
                        # Reading fell more than a frame behind the clock: a camera would have moved on,
                        # so this frame is dropped (counted) rather than delivered late.
                        index += 1
                        self.frames_read += 1
                        self.late_dropped += 1
                        continue
            frame = Frame(index=index, image=img, t_capture=t_cap, t_source=t_source)
            index += 1
            self.frames_read += 1
            for s in self.slots:
                s.put(frame)
        src.close()

    def _reconnect(self) -> bool:
        """Reopens a dropped live source with exponential backoff; False when stopped meanwhile."""
        src = self.source
        t_lost = now()
        log.warning("source %s dropped after frame %d; reconnecting", src.spec.name, self.frames_read)
        self._emit(event="source_lost", frame=self.frames_read, t=round(t_lost - self._t0, 3))
        src.close()
        wait = self.cfg.reconnect_initial_s
        attempt = 0
        while not self._stop_evt.is_set():
            if self._stop_evt.wait(wait):
                return False
            attempt += 1
            try:
                src.open()
            except CaptureError as exc:
                log.info(
                    "reconnect attempt %d failed (%s); next in %.1f s",
                    attempt,
                    exc,
                    min(wait * 2, self.cfg.reconnect_max_s),
                )
                wait = min(max(wait * 2, 0.05), self.cfg.reconnect_max_s)
                continue
            gap = now() - t_lost
            self.reconnects += 1
            self.metrics.record("reconnect_gap", gap * 1e3)
            log.warning("source %s back after a %.2f s gap (%d attempts)", src.spec.name, gap, attempt)
            self._emit(
                event="source_back", t=round(now() - self._t0, 3), gap_s=round(gap, 3), attempts=attempt
            )
            return True
        return False


def wait_until(cond: Callable[[], bool], timeout: float, poll: float = 0.02) -> bool:
    """Polls ``cond`` until true or ``timeout`` s pass (for shutdown paths and tests)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(poll)
    return cond()
