"""Which video writer a run gets, and how spoken captions reach its audio track.

* ``video.codec=h264`` (default): replay and realtime replay write one :class:`Recorder` file per drive; a
  live source with ``record.loop`` writes loop segments (:class:`SegmentRecorder`) under
  ``<out>/<name>.segments/``. ``mp4v`` keeps OpenCV's writer (one file, no audio or subtitle track).
* :class:`SpeechTrack` is what the speech worker hands utterance audio to: on the source clock (offline) it
  reserves each utterance at its file time and the recorder waits for the samples (deterministic); on the
  wall clock it maps the monotonic start time onto the video's timeline.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from drivecap.config import Config
from drivecap.outputs.audio import Pcm
from drivecap.outputs.recorder import H264Settings, Recorder
from drivecap.outputs.segments import SegmentRecorder
from drivecap.outputs.video import VideoSink

log = logging.getLogger(__name__)


def h264_settings(cfg: Config) -> H264Settings:
    v = cfg.video
    return H264Settings(preset=v.preset, crf=v.crf, keyint_s=v.keyint_s, threads=v.threads)


def speech_wanted(cfg: Config) -> bool:
    return cfg.video.audio and cfg.speech.backend not in ("none", "auto")


def open_video(cfg: Config, folder: Path, name: str, fps: float, *, live: bool, speech: bool) -> Any:
    """The run's video output (a context manager with write/write_at/filled; h264 ones also show/lock)."""
    v = cfg.video
    if v.codec == "mp4v":
        return VideoSink(folder / f"{name}.mp4", fps)
    audio = v.audio and speech
    if live and cfg.record.loop:
        r = cfg.record
        seg = SegmentRecorder(
            folder / f"{name}.segments",
            fps,
            h264_settings(cfg),
            segment_s=r.segment_s,
            max_bytes=r.max_bytes,
            min_free_bytes=r.min_free_bytes,
            lock_before=r.lock_before,
            audio=audio,
            subtitles=v.subtitles,
            run=dt.datetime.now(tz=dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ"),
        )
        for line in seg.report.lines():
            log.info("loop recording start-up: %s", line)
        return seg
    return Recorder(folder / f"{name}.mp4", fps, h264_settings(cfg), audio=audio, subtitles=v.subtitles)


class SpeechTrack:
    """Utterance audio to the recorder's track. ``offset`` (wall clock): monotonic time of video t = 0."""

    def __init__(self, video: Any, clock: str) -> None:
        self.video = video
        self.clock = clock
        self.offset = 0.0
        self.rate = 22050
        if isinstance(video, Recorder) and video.audio is not None:
            self.rate = video.audio.rate
        elif isinstance(video, SegmentRecorder):
            self.rate = video.audio_rate

    @staticmethod
    def for_video(video: Any, clock: str) -> SpeechTrack | None:
        if isinstance(video, Recorder) and video.audio is not None:
            return SpeechTrack(video, clock)
        if isinstance(video, SegmentRecorder) and video.audio:
            return SpeechTrack(video, clock)
        return None

    def _t(self, t: float) -> float:
        return t if self.clock == "source" else t - self.offset

    def reserve(self, t: float) -> int | None:
        if isinstance(self.video, Recorder) and self.video.audio is not None:
            return self.video.audio.reserve(self._t(t))
        return None

    def fill(self, key: int | None, pcm: Pcm | None) -> None:
        if key is not None and isinstance(self.video, Recorder) and self.video.audio is not None:
            self.video.audio.fill(key, pcm)

    def add(self, pcm: Pcm, t: float) -> None:
        vt = max(0.0, self._t(t))
        if isinstance(self.video, Recorder) and self.video.audio is not None:
            self.video.audio.add(pcm, vt)
        elif isinstance(self.video, SegmentRecorder):
            self.video.add_speech(pcm, vt)
