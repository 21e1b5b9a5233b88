"""The threaded loop of live and ``realtime`` runs: capture thread, inference worker on the newest frame,
and the output loop at the source's rate."""

from __future__ import annotations

import contextlib
import logging
import threading

from drivecap.frames import Frame
from drivecap.metrics import RateMeter, now
from drivecap.outputs.overlay import Overlay
from drivecap.pipeline.capture import CaptureThread, LatestSlot
from drivecap.pipeline.core import PipelineCore
from drivecap.pipeline.inference import CaptionEvent, Inference
from drivecap.pipeline.sources import Source
from drivecap.pipeline.summary import RunSummary

log = logging.getLogger(__name__)


class ThreadedLoop(PipelineCore):
    def _wait_for_next(self, frame: Frame, period_s: float) -> bool:
        """Whether to skip ``frame`` (waiting in the slot) and encode the next one instead.

        Glass-to-caption = time the frame waited + encode + decode + wait for the next output frame. The
        last term is up to one period whatever the worker does, so the worker keeps the first one near
        zero: when the encoder is slower than the source, a frame that already waited more than a quarter
        period is skipped for the next one. The caption then describes a scene up to a period fresher and
        reaches the screen on the same or the next output frame. A fast encoder (GPU) finds the slot empty
        and waits for the next frame anyway, so this never triggers there.
        """
        if period_s <= 0 or self._busy_ema_s is None or self._busy_ema_s < period_s:
            return False
        return now() - frame.t_capture > period_s / 4

    def _inference_worker(self, slot: LatestSlot[Frame], inf: Inference, period_s: float) -> None:
        try:
            while not self._stop.is_set():
                frame = slot.get(timeout=0.1)
                if frame is None:
                    if slot.closed:
                        return
                    continue
                if self._wait_for_next(frame, period_s):
                    fresher = slot.get(timeout=2 * period_s)
                    if fresher is not None:
                        self.skipped_for_fresher += 1
                        frame = fresher
                t0 = now()
                gate_ev, cap = inf.process(frame)
                self._event(gate_ev)
                if cap is not None:
                    busy = now() - t0
                    self._busy_ema_s = (
                        busy if self._busy_ema_s is None else 0.7 * self._busy_ema_s + 0.3 * busy
                    )
                    with self._lock:
                        self._latest = cap
                elif gate_ev.get("encoded") and self._busy_ema_s is None and inf.last_encode_ms is not None:
                    # Until the first decode, estimate from the encoder (decode adds ~10 ms on a CPU).
                    self._busy_ema_s = (now() - t0) + 0.01
        except BaseException as exc:
            self._error = exc
            self._stop.set()
            log.debug("inference worker failed", exc_info=True)

    def _run_threaded(self, source: Source, stack: contextlib.ExitStack, summary: RunSummary) -> None:
        infer_slot: LatestSlot[Frame] = LatestSlot()
        # Two frames of slack for the output loop: a write that stalls for a moment (disk, a busy core)
        # costs a frame of delay instead of a dropped frame. Inference keeps only the newest frame.
        out_slot: LatestSlot[Frame] = LatestSlot(depth=2)
        self.slots = {"inference": infer_slot, "output": out_slot}  # read by drivecap.bench.soak
        cap_thread = CaptureThread(
            source,
            [infer_slot, out_slot],
            self.cfg.capture,
            pace=self.mode == "realtime",
            loop=self.cfg.capture.loop,
            metrics=self.metrics,
            on_event=self._event,
        )
        cap_thread.start_and_wait_open(timeout=max(10.0, self.cfg.capture.read_timeout_s * 2))
        try:
            self._threaded_loop(source, cap_thread, infer_slot, out_slot, stack, summary)
        finally:
            cap_thread.stop()
            infer_slot.close()
            out_slot.close()
            cap_thread.join(timeout=max(5.0, self.cfg.capture.read_timeout_s + 1))
            if cap_thread.error is not None and self._error is None:
                self._error = cap_thread.error

    def _threaded_loop(
        self,
        source: Source,
        cap_thread: CaptureThread,
        infer_slot: LatestSlot[Frame],
        out_slot: LatestSlot[Frame],
        stack: contextlib.ExitStack,
        summary: RunSummary,
    ) -> None:
        fps = source.fps or 25.0
        summary.source_fps = fps
        sinks = self._open_sinks(stack, fps)
        t0 = now()
        speech = stack.enter_context(self._make_speech("wall", t0))
        self._start_event(source, summary)
        inf = Inference(self.cfg, self.encoder, self.captioner, self.metrics)
        worker = threading.Thread(
            target=self._inference_worker, args=(infer_slot, inf, 1.0 / fps), name="inference", daemon=True
        )
        worker.start()
        overlay = Overlay(self.cfg.overlay)
        rate = RateMeter()
        shown: CaptionEvent | None = None
        t_first: float | None = None
        t_last = 0.0
        try:
            while not self._stop.is_set():
                if self._limits_hit(summary.frames_out, t0):
                    break
                frame = out_slot.get(timeout=0.1)
                if frame is None:
                    if out_slot.closed:
                        break
                    continue
                with self._lock:
                    latest = self._latest
                if latest is not None and latest is not shown:
                    shown = latest
                    self._thumbnail(sinks, latest.id, frame.image)  # the frame it first shows on
                    overlay.set_caption(latest.text, latest.urgent, frame.t_source)
                if t_first is None:
                    t_first = frame.t_source
                t_drawn = self._emit_frame(
                    frame, shown, overlay, inf, rate, sinks, write_at=frame.t_source - t_first
                )
                if shown is not None and shown.t_shown is None:
                    # Glass-to-caption ends when the first frame carrying the caption has been drawn (the
                    # sinks' own cost is the "write" stage).
                    shown.t_shown = t_drawn
                    self.metrics.record("glass_to_caption", (shown.t_shown - shown.t_capture) * 1e3)
                    self.captions.append(shown)
                    self._event(shown.to_event(t_shown_pos=frame.t_source), t_shown=shown.t_shown)
                    speech.submit(shown.text, shown.urgent, shown.id, now(), shown.t_capture)
                    if self.on_caption:
                        self.on_caption(shown)
                summary.frames_out += 1
                t_last = frame.t_source
                if self.on_frame:
                    self.on_frame(1)
        finally:
            self.stop_workers(cap_thread, worker)
            self._finish_subtitles(sinks, t_last - (t_first or 0.0) + 1.0 / fps)
            speech.close()
            if "video" in sinks:
                summary.video_filled = sinks["video"].filled
            summary.encoded = inf.encoded
            summary.pregate_skipped = inf.pregate_skipped
            summary.encode_errors = inf.encode_errors
            summary.captions = len(self.captions)
            summary.utterances = speech.rendered  # what was really said, also when TTS broke mid-run
            summary.source_s = (t_last - (t_first or 0.0) + 1.0 / fps) if summary.frames_out else 0.0
            summary.frames_in = cap_thread.frames_read
            # A frame still waiting in a slot at the stop was never output / never encoded.
            summary.dropped = out_slot.overwritten + out_slot.discard() + cap_thread.late_dropped
            summary.dropped_late = cap_thread.late_dropped
            summary.not_encoded = infer_slot.overwritten + infer_slot.discard() + self.skipped_for_fresher
            summary.reconnects = cap_thread.reconnects
            self._end_event(summary)

    def stop_workers(self, cap_thread: CaptureThread, worker: threading.Thread) -> None:
        """Stops capture first (no new frames), then lets the inference worker finish its frame."""
        cap_thread.stop()
        self._stop.set()
        cap_thread.join(timeout=max(5.0, self.cfg.capture.read_timeout_s + 1))
        worker.join(timeout=60)
