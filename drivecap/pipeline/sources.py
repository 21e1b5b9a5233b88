"""Frame sources: camera index, video file, HTTP/RTSP URL, GStreamer pipeline, image folder; parsed from one string."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from drivecap.config import CaptureConfig
from drivecap.errors import DrivecapError
from drivecap.frames import Frame
from drivecap.metrics import now
from drivecap.security import mask_url

log = logging.getLogger(__name__)
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
