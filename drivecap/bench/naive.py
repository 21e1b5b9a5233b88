"""The seed design's naive capture loop, kept as the benchmark's baseline.

One thread does everything for every frame, in order: read a frame, encode it, decode a caption, draw it,
write it. Fed by a camera that does not wait for it (a file paced by its timestamps, or a live stream), the
loop falls behind as soon as one frame costs more than one frame interval, and because it never skips a
frame its lag keeps growing: the picture and its caption show the road as it was seconds ago. That is what
users of such loops report, and what drivecap's pipeline (newest frame wins, encoder off the display path)
is measured against by ``drivecap bench --compare loop``.

Glass time of a paced file frame is when a live camera would have captured it (first frame's read time plus
its file position), not when this loop got round to reading it: a frame the loop reads late sat in the
camera's buffer meanwhile. For a live stream the glass time is when ``read`` returned, which hides whatever
the stream buffered before: the lag reported there is a lower bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivecap.captions.grammar import for_people
from drivecap.config import OverlayConfig
from drivecap.metrics import LatencyRecorder, RateMeter, now
from drivecap.outputs.overlay import HudInfo, Overlay
from drivecap.outputs.video import VideoSink
from drivecap.pipeline.sources import Source

log = logging.getLogger(__name__)


@dataclass
class NaiveSummary:
    """What the naive loop did. Every frame read is processed, so nothing is dropped: it lags instead."""

    source_fps: float = 0.0
    frames_in: int = 0
    frames_out: int = 0
    captions: int = 0
    wall_s: float = 0.0
    source_s: float = 0.0
    lag_first_ms: float = 0.0  # glass-to-caption of the first and the last frame
    lag_last_ms: float = 0.0
    interrupted: bool = False


class NaiveLoop:
    """``read -> encode -> decode -> draw -> write``, one thread, every frame.

    Stages go to ``metrics`` under the pipeline's names (``capture``, ``preprocess``, ``infer``,
    ``encode``, ``decode``, ``overlay``, ``write``, ``glass_to_caption``) so both are reported alike.
    """

    def __init__(
        self,
        encoder: Any,
        captioner: Any,
        overlay_cfg: OverlayConfig,
        *,
        video_path: Path | None = None,
        pace: bool = True,
        max_seconds: float | None = None,
        metrics: LatencyRecorder | None = None,
        on_frame: Callable[[int], object] | None = None,
    ) -> None:
        self.encoder = encoder
        self.captioner = captioner
        self.overlay_cfg = overlay_cfg
        self.video_path = video_path
        self.pace = pace
        self.max_seconds = max_seconds
        self.metrics = metrics or LatencyRecorder()
        self.on_frame = on_frame
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self, source: Source) -> NaiveSummary:
        summary = NaiveSummary()
        m = self.metrics
        overlay = Overlay(self.overlay_cfg)
        rate = RateMeter()
        source.open()
        summary.source_fps = source.fps or 25.0
        sink = VideoSink(self.video_path, summary.source_fps) if self.video_path is not None else None
        t_start = now()
        origin: float | None = None  # glass time of file position 0
        t_first = t_last = 0.0
        try:
            while not self._stop.is_set():
                if self.max_seconds is not None and now() - t_start >= self.max_seconds:
                    break
                t_read = now()
                item = source.read()
                if item is None:
                    break
                img, t = item
                t_got = now()
                m.record("capture", (t_got - t_read) * 1e3)
                if source.live or not self.pace:
                    glass = t_got
                else:
                    if origin is None:
                        origin = t_got - t
                    glass = origin + t
                    if glass > now():
                        # Ahead of the camera: the frame does not exist yet, so the read would block.
                        time.sleep(glass - now())
                if summary.frames_in == 0:
                    t_first = t
                t_last = t
                summary.frames_in += 1
                res = self.encoder.encode(img)
                m.record("preprocess", res.preprocess_ms)
                m.record("infer", res.infer_ms)
                m.record("encode", res.preprocess_ms + res.infer_ms)
                cap = self.captioner.caption(res.features)
                m.record("decode", float(cap.decode_ms))
                summary.captions += 1
                rate.tick()
                t_draw = now()
                overlay.set_caption(for_people(cap.text), False, t)
                overlay.draw(
                    img,
                    t,
                    HudInfo(fps=rate.rate or None, encoder_ms=res.infer_ms, decoder_ms=float(cap.decode_ms)),
                )
                t_sink = now()
                m.record("overlay", (t_sink - t_draw) * 1e3)
                if sink is not None:
                    sink.write(img)
                t_done = now()
                m.record("write", (t_done - t_sink) * 1e3)
                lag = (t_done - glass) * 1e3
                m.record("glass_to_caption", lag)
                if summary.frames_out == 0:
                    summary.lag_first_ms = lag
                summary.lag_last_ms = lag
                summary.frames_out += 1
                if self.on_frame is not None:
                    self.on_frame(1)
        finally:
            source.close()
            if sink is not None:
                sink.close()
        summary.interrupted = self._stop.is_set()
        summary.wall_s = now() - t_start
        if summary.frames_in:
            summary.source_s = t_last - t_first + 1.0 / summary.source_fps
        log.info(
            "naive loop: %d frames in %.1f s wall for %.1f s of source; lag %.0f -> %.0f ms",
            summary.frames_out,
            summary.wall_s,
            summary.source_s,
            summary.lag_first_ms,
            summary.lag_last_ms,
        )
        return summary
