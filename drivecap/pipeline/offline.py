"""The offline loop: every frame in one thread, file timestamps as the only clock, so the same input,
model and config give byte-identical SRT and JSONL."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from drivecap.metrics import RateMeter, now
from drivecap.outputs.overlay import Overlay
from drivecap.pipeline.core import PipelineCore
from drivecap.pipeline.inference import CaptionEvent, Inference
from drivecap.pipeline.sources import Source, iter_frames
from drivecap.pipeline.summary import RunSummary

log = logging.getLogger(__name__)


class OfflineLoop(PipelineCore):
    def _run_offline(self, source: Source, stack: contextlib.ExitStack, summary: RunSummary) -> None:
        inf = Inference(self.cfg, self.encoder, self.captioner, self.metrics)
        frames = iter_frames(source, loop=self.cfg.capture.loop)
        first = next(frames, None)  # opens the source: its fps is needed before the video is opened
        if first is None:
            return
        fps = source.fps or 25.0
        summary.source_fps = fps
        sinks = self._open_sinks(stack, fps)
        overlay = Overlay(self.cfg.overlay)
        speech = stack.enter_context(self._make_speech("source", now()))
        self._start_event(source, summary)
        rate = RateMeter()
        t_start = now()
        current: CaptionEvent | None = None
        t_last = 0.0

        def all_frames() -> Any:
            yield first
            yield from frames

        try:
            for frame in all_frames():
                if self._stop.is_set() or self._limits_hit(summary.frames_out, t_start):
                    break
                summary.frames_in += 1
                t = frame.t_source
                if frame.index % self.stride == 0:
                    gate_ev, cap = inf.process(frame)
                    self._event(gate_ev)
                    if cap is not None:
                        current = cap
                        cap.t_shown = now()
                        self.metrics.record("glass_to_caption", (cap.t_shown - cap.t_capture) * 1e3)
                        self.captions.append(cap)
                        self._event(cap.to_event())
                        self._thumbnail(sinks, cap.id, frame.image)
                        overlay.set_caption(cap.text, cap.urgent, t)
                        speech.submit(cap.text, cap.urgent, cap.id, t, cap.t_capture)
                        if self.on_caption:
                            self.on_caption(cap)
                speech.tick(t)
                self._emit_frame(frame, current, overlay, inf, rate, sinks, write_at=None)
                summary.frames_out += 1
                t_last = t
                if self.on_frame:
                    self.on_frame(1)
        finally:
            frames.close()
            self._finish_subtitles(sinks, t_last + 1.0 / fps)
            speech.close()
            summary.encoded = inf.encoded
            summary.pregate_skipped = inf.pregate_skipped
            summary.encode_errors = inf.encode_errors
            summary.captions = inf.n_captions
            summary.utterances = speech.rendered  # what was really said, also when TTS broke mid-run
            summary.source_s = (t_last + 1.0 / fps) if summary.frames_out else 0.0
            self._end_event(summary)
