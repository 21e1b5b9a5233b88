"""Where captioned frames and captions go: window, mp4v video, SRT and WebVTT subtitles, JSONL event log.

Each sink is a context manager whose ``close`` always runs (end of input, an error, Ctrl-C), and each writes
incrementally so that even a killed process leaves a usable file: subtitle cues are written and flushed as
soon as they end, events as they happen, and the video writer is released on close (an mp4 needs its index
written at the end, which is why the pipeline turns SIGINT into an orderly stop instead of dying).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from drivecap.outputs.base import Sink, SinkError
from drivecap.security import video_file_plays

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]


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
