"""Where captioned frames and captions go: window, mp4v video, SRT and WebVTT subtitles, JSONL event log.

Each sink is a context manager whose ``close`` always runs (end of input, an error, Ctrl-C), and each writes
incrementally so that even a killed process leaves a usable file: subtitle cues are written and flushed as
soon as they end, events as they happen, and the video writer is released on close (an mp4 needs its index
written at the end, which is why the pipeline turns SIGINT into an orderly stop instead of dying).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

import numpy as np
import numpy.typing as npt

from drivecap.errors import DrivecapError
from drivecap.security import subtitle_text, video_file_plays

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]


class SinkError(DrivecapError):
    """An output file cannot be written."""


class Sink:
    """Base: context manager that closes on every exit path."""

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- window


def display_available() -> tuple[bool, str]:
    """(can we open a window, why not). Headless OpenCV wheels have no GUI backend at all, and a Qt build
    aborts the whole process when there is no display, so both are checked before any imshow."""
    import cv2

    gui = "NONE"
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            gui = line.split(":", 1)[1].strip()
            break
    if gui.upper() == "NONE":
        return False, f"this OpenCV {cv2.__version__} has no GUI backend (opencv-python-headless)"
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False, "no display (DISPLAY / WAYLAND_DISPLAY not set)"
    return True, gui


class WindowSink(Sink):
    """Shows frames in a window where a display exists; otherwise logs once and does nothing.

    Keys: q or Esc asks the pipeline to stop, h toggles the HUD.
    """

    def __init__(self, title: str = "drivecap", enabled: bool = True) -> None:
        self.title = title
        self.quit_requested = False
        self.toggle_hud_requested = False
        ok, why = display_available() if enabled else (False, "output.window=false")
        self.active = ok
        self._opened = False
        if not ok and enabled:
            log.info("window skipped: %s", why)

    def write(self, frame: Image) -> None:
        if not self.active:
            return
        import cv2

        try:
            if not self._opened:
                cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
                self._opened = True
            cv2.imshow(self.title, frame)
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as exc:
            log.warning("window disabled: %s", str(exc).strip().splitlines()[-1])
            self.active = False
            return
        if key in (ord("q"), 27):
            self.quit_requested = True
        elif key == ord("h"):
            self.toggle_hud_requested = True

    def close(self) -> None:
        if self._opened:
            import cv2

            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass
            self._opened = False


# --------------------------------------------------------------------------------------------- video


class VideoSink(Sink):
    """An mp4v video file; opened on the first frame (its size decides the video's)."""

    FOURCC = "mp4v"

    def __init__(self, path: str | os.PathLike[str], fps: float) -> None:
        self.path = Path(path)
        self.fps = fps if fps > 0 else 25.0
        self.frames = 0
        self.filled = 0  # repeats written by write_at for dropped live frames
        self._writer: Any = None
        self._size: tuple[int, int] | None = None

    def write(self, frame: Image) -> None:
        import cv2

        h, w = frame.shape[:2]
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter.fourcc(*self.FOURCC)
            writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (w, h))
            if not writer.isOpened():
                raise SinkError(f"cannot write video {self.path} with {self.FOURCC}; is the folder writable?")
            self._writer = writer
            self._size = (w, h)
        elif (w, h) != self._size:
            # A stream that changes size mid-way (a reconnect to another resolution) is scaled to the first.
            frame = np.asarray(cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        self._writer.write(frame)
        self.frames += 1

    def write_at(self, frame: Image, t: float) -> int:
        """Writes ``frame`` as the picture at time ``t`` (s from the start): when live frames were dropped it
        is repeated to fill the gap, so the video stays in step with the subtitles. Returns frames written."""
        target = max(self.frames + 1, round(t * self.fps) + 1)
        n = 0
        while self.frames < target:
            self.write(frame)
            n += 1
        self.filled += n - 1
        return n

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            log.info("wrote %s (%d frames)", self.path, self.frames)
            # OpenCV reports no write error: a full disk shows only as an mp4 without its index.
            if not video_file_plays(self.path):
                raise SinkError(f"video {self.path} could not be completed (disk full or file removed?)")


# --------------------------------------------------------------------------------------------- subtitles


def srt_time(t: float) -> str:
    ms = max(0, round(t * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def vtt_time(t: float) -> str:
    return srt_time(t).replace(",", ".")


class SubtitleSink(Sink):
    """SRT or WebVTT: one cue per caption, from when it was first shown until the next one replaced it.

    A cue is written and flushed as soon as it ends, so the file is complete up to the last finished
    caption even if the process is killed; ``close`` ends the open cue at the last frame's time.
    """

    def __init__(self, path: str | os.PathLike[str], fmt: str | None = None) -> None:
        self.path = Path(path)
        self.fmt = fmt or self.path.suffix.lstrip(".").lower()
        if self.fmt not in ("srt", "vtt"):
            raise SinkError(f"subtitle file {self.path}: format must be srt or vtt")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._f: TextIO | None = open(self.path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        except OSError as exc:
            raise SinkError(f"cannot write subtitles {self.path} ({exc.strerror})") from None
        if self.fmt == "vtt":
            self._f.write("WEBVTT\n\n")
        self.cues = 0
        self._open: tuple[str, float] | None = None
        self._t_last = 0.0

    def show(self, text: str | None, t: float) -> None:
        """The caption on screen at time ``t`` (seconds from the start of the output)."""
        text = subtitle_text(text)  # one safe line: a blank line or "-->" would end or fake a cue
        self._t_last = max(self._t_last, t)
        cur = self._open[0] if self._open else None
        if text == cur:
            return
        if self._open is not None:
            self._write_cue(self._open[0], self._open[1], t)
        self._open = (text, t) if text else None

    def _write_cue(self, text: str, start: float, end: float) -> None:
        if self._f is None:
            return
        end = max(end, start + 0.001)
        self.cues += 1
        if self.fmt == "srt":
            block = f"{self.cues}\n{srt_time(start)} --> {srt_time(end)}\n{text}\n\n"
        else:
            safe = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            block = f"{self.cues}\n{vtt_time(start)} --> {vtt_time(end)}\n{safe}\n\n"
        try:
            self._f.write(block)
            self._f.flush()
        except OSError as exc:  # disk full, device gone: one line, and the other sinks still close
            _drop_file(self._f)
            self._f = None
            raise SinkError(f"cannot write subtitles {self.path} ({exc.strerror or exc})") from None

    def close(self, t_end: float | None = None) -> None:
        if self._f is None:
            return
        if self._open is not None:
            self._write_cue(self._open[0], self._open[1], self._t_last if t_end is None else t_end)
            self._open = None
        if self._f is not None:
            f, self._f = self._f, None
            try:
                f.close()
            except OSError as exc:
                raise SinkError(f"cannot write subtitles {self.path} ({exc.strerror or exc})") from None

    def finish(self, t_end: float) -> None:
        """Closes with the open cue ending at ``t_end`` (end of the last frame)."""
        self.close(t_end)


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """Parses SRT text strictly: (start, end, text) per cue. Raises ValueError on any malformed block."""
    import re

    def secs(s: str) -> float:
        m = re.fullmatch(r"(\d\d):(\d\d):(\d\d),(\d\d\d)", s)
        if not m:
            raise ValueError(f"bad SRT time {s!r}")
        h, mi, se, ms = map(int, m.groups())
        return h * 3600 + mi * 60 + se + ms / 1000

    cues = []
    blocks = [b for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()]
    for n, block in enumerate(blocks, 1):
        lines = block.strip("\n").split("\n")
        if len(lines) < 3 or lines[0] != str(n) or " --> " not in lines[1]:
            raise ValueError(f"SRT block {n} malformed: {block!r}")
        a, b = lines[1].split(" --> ")
        start, end = secs(a), secs(b)
        if end <= start:
            raise ValueError(f"SRT block {n} ends before it starts")
        cues.append((start, end, "\n".join(lines[2:])))
    if not text.endswith("\n\n") and blocks:
        raise ValueError("SRT does not end with a blank line (truncated?)")
    return cues


# --------------------------------------------------------------------------------------------- events


class EventLog(Sink):
    """JSON Lines, one event per line, flushed per line.

    Events may carry a ``wall`` sub-object (wall-clock latencies, monotonic stamps). With
    ``deterministic=True`` (offline replay) it is left out, so the same input, model and config give a
    byte-identical file.
    """

    def __init__(self, path: str | os.PathLike[str], deterministic: bool = False) -> None:
        self.path = Path(path)
        self.deterministic = deterministic
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._f: TextIO | None = open(self.path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        except OSError as exc:
            raise SinkError(f"cannot write events {self.path} ({exc.strerror})") from None
        self.count = 0
        self._lock = threading.Lock()  # the inference, output and speech threads all log events

    def write(self, event: dict[str, Any]) -> None:
        if self.deterministic and "wall" in event:
            event = {k: v for k, v in event.items() if k != "wall"}
        # ASCII-only: a raw U+2028/U+0085 in a caption would split the line for many JSONL readers, and a
        # lone surrogate cannot be written as UTF-8 at all; escaped, both round-trip through json.loads.
        line = json.dumps(event, ensure_ascii=True, separators=(",", ":"), default=_json_default) + "\n"
        with self._lock:
            if self._f is None:
                return
            try:
                self._f.write(line)
                self._f.flush()
            except OSError as exc:  # disk full, device gone: one line, and the other sinks still close
                _drop_file(self._f)
                self._f = None
                raise SinkError(f"cannot write events {self.path} ({exc.strerror or exc})") from None
            self.count += 1

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                f, self._f = self._f, None
                try:
                    f.close()
                except OSError as exc:
                    raise SinkError(f"cannot write events {self.path} ({exc.strerror or exc})") from None


def _drop_file(f: TextIO) -> None:
    """Closes a file that can no longer be written (its buffered tail is lost, the descriptor is not)."""
    with contextlib.suppress(OSError):
        f.close()


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
