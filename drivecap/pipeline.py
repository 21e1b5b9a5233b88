"""The real-time captioning pipeline: capture -> gate -> encoder -> decoder -> overlay, outputs and speech.

Live and ``realtime`` replay (threads, newest frame wins)::

    capture thread --> inference slot --> inference worker: pixel pre-gate, encode, semantic gate,
          |                                                 decode on gate open -> current caption
          +--------> output slot ----> output loop (this thread): overlay the current caption + HUD,
                                        window / video / SRT+VTT / JSONL; speech worker gets new captions

The output loop runs at the source's rate whatever the encoder costs; frames it could not take in time are
overwritten in its slot and counted as dropped. Frames the inference worker never saw are counted as
``not_encoded`` (they still reach the output).

``offline`` replay runs the same stages in one thread on every frame (the encoder on every ``stride``-th),
with file timestamps as the only clock, so the same input, model and config give byte-identical SRT and
JSONL: wall-clock figures go only to the ``wall`` fields of events, which the event log leaves out there,
and to the summary.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from drivecap.capture import CaptureThread, LatestSlot, Source, iter_frames
from drivecap.config import Config, to_dict
from drivecap.errors import DrivecapError
from drivecap.frames import Frame
from drivecap.gate import PixelPreGate, SemanticGate
from drivecap.metrics import LatencyRecorder, RateMeter, now, percentile
from drivecap.overlay import HudInfo, Overlay
from drivecap.security import ensure_output_dir
from drivecap.sinks import EventLog, SubtitleSink, VideoSink, WindowSink
from drivecap.speech import SpeechWorker

log = logging.getLogger(__name__)

MODES = ("live", "realtime", "offline")
MAX_ENCODE_ERRORS_IN_ROW = 10  # more in a row than this: the encoder is broken, not hiccuping


class CaptionerLike(Protocol):
    """``caption(fmap)``; a captioner with ``mirror_view`` true is also called as ``caption(fmap, mirror=...)``
    with the encoder's map of the mirrored frame."""

    def caption(self, fmap: Any, mirror: Any = None) -> Any: ...


class EncoderLike(Protocol):
    def encode(self, frame_bgr: Any) -> Any: ...

    def describe(self) -> str: ...


def caption_is_urgent(text: str) -> bool:
    """Person/vehicle close ahead or red light ahead, by the caption grammar (speech lets it go first)."""
    from drivecap.captions.grammar import parse

    try:
        return bool(parse(text).urgent)
    except Exception:  # a decoder may emit word salad; a caption the grammar rejects is not urgent
        log.debug("caption %r does not parse", text, exc_info=True)
        return False


def _r(x: float, nd: int = 4) -> float:
    return float(round(float(x), nd))


@dataclass
class CaptionEvent:
    """A caption and where it came from. Times: ``t`` file/stream position (s), ``t_capture`` monotonic."""

    id: int
    text: str
    tokens: tuple[str, ...]
    score: float
    urgent: bool
    frame: int
    t: float
    t_capture: float
    gate_distance: float
    gate_reason: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    t_shown: float | None = None

    def to_event(self, t_shown_pos: float | None = None) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "event": "caption",
            "id": self.id,
            "frame": self.frame,
            "t": _r(self.t, 3),
            "text": self.text,
            "urgent": self.urgent,
            "score": _r(self.score),
            "gate": _r(self.gate_distance),
            "reason": self.gate_reason,
        }
        if t_shown_pos is not None:
            ev["t_shown"] = _r(t_shown_pos, 3)
        wall = {k: _r(v, 2) for k, v in self.timings_ms.items()}
        if self.t_shown is not None:
            wall["glass_to_caption_ms"] = _r((self.t_shown - self.t_capture) * 1e3, 2)
        ev["wall"] = wall
        return ev


@dataclass
class RunSummary:
    """What a run did. Counts are exact; latencies (ms) come from the metrics recorder."""

    name: str
    mode: str
    source_fps: float
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    not_encoded: int = 0
    encoded: int = 0
    pregate_skipped: int = 0
    captions: int = 0
    utterances: int = 0
    reconnects: int = 0
    video_filled: int = 0
    dropped_late: int = 0  # of ``dropped``: paced file frames read too late to deliver
    encode_errors: int = 0  # frames the encoder raised on (skipped, logged; see Inference.process)
    interrupted: bool = False
    wall_s: float = 0.0
    source_s: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def output_fps(self) -> float:
        """Output frames per second of source time (what the written video keeps of the source rate)."""
        return self.frames_out / self.source_s if self.source_s > 0 else 0.0

    def stage(self, name: str, key: str = "p50_ms") -> float:
        return self.stages.get(name, {}).get(key, float("nan"))

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d["output_fps"] = self.output_fps
        return d

    def lines(self) -> list[str]:
        out = [
            f"{self.name} ({self.mode}): frames in {self.frames_in}, out {self.frames_out}, "
            f"dropped {self.dropped}, encoded {self.encoded}, pre-gate skipped {self.pregate_skipped}, "
            f"not encoded {self.not_encoded}",
            f"captions {self.captions}, utterances {self.utterances}, reconnects {self.reconnects}"
            + (", interrupted" if self.interrupted else ""),
            f"source {self.source_s:.2f} s at {self.source_fps:.2f} fps; wall {self.wall_s:.2f} s; "
            f"output {self.output_fps:.2f} fps of source time",
        ]
        g = self.stages.get("glass_to_caption")
        if g:
            # Offline, frames are decoded as fast as the model goes: there is no glass, only processing.
            what = "decode-to-caption (processing)" if self.mode == "offline" else "glass-to-caption"
            out.append(f"{what} p50 {g['p50_ms']:.0f} ms, p95 {g['p95_ms']:.0f} ms (n={int(g['count'])})")
        s = self.stages.get("glass_to_speech")
        if s:
            out.append(
                f"glass-to-speech p50 {s['p50_ms']:.0f} ms, p95 {s['p95_ms']:.0f} ms (n={int(s['count'])})"
            )
        per = ", ".join(
            f"{k} {v['p50_ms']:.1f}"
            for k, v in self.stages.items()
            if k
            in ("capture", "pregate", "preprocess", "infer", "encode", "decode", "overlay", "write", "wait")
        )
        if per:
            out.append(f"per-stage p50 ms: {per}")
        return out


class Inference:
    """Pre-gate, encoder, semantic gate and decoder for one frame at a time (one thread uses it)."""

    def __init__(
        self, cfg: Config, encoder: EncoderLike, captioner: CaptionerLike, metrics: LatencyRecorder
    ) -> None:
        self.cfg = cfg
        self.encoder = encoder
        self.captioner = captioner
        self.metrics = metrics
        self.pregate = PixelPreGate(cfg.gate.thumb_size, cfg.gate.pixel_threshold)
        self.gate = SemanticGate(cfg.gate)
        self.n_captions = 0
        self.encoded = 0
        self.pregate_skipped = 0
        self.encode_errors = 0
        self._errors_in_row = 0
        self.last_encode_ms: float | None = None
        self.last_decode_ms: float | None = None
        self.gate_text = "-"

    def _encode_failed(self, frame: Frame, exc: Exception, gate_ev: dict[str, Any]) -> dict[str, Any]:
        """One frame the encoder raised on is skipped (counted, logged, in the event log): a driver
        hiccup must not end a drive. ``MAX_ENCODE_ERRORS_IN_ROW`` in a row mean it is broken: stop."""
        self.encode_errors += 1
        self._errors_in_row += 1
        if isinstance(exc, DrivecapError) or self._errors_in_row >= MAX_ENCODE_ERRORS_IN_ROW:
            raise DrivecapError(
                f"encoder failed on {self._errors_in_row} frames in a row (last: {exc.__class__.__name__}: "
                f"{str(exc)[:200]}); check the encoder with `drivecap encoder`"
            ) from exc
        log.warning(
            "encoder failed on frame %d (%s: %s); frame skipped (%d so far)",
            frame.index,
            exc.__class__.__name__,
            exc,
            self.encode_errors,
        )
        gate_ev.update(
            encoded=False,
            open=False,
            reason="encoder_error",
            state=self.gate.state,
            error=f"{exc.__class__.__name__}: {str(exc)[:200]}",
        )
        return gate_ev

    def process(self, frame: Frame) -> tuple[dict[str, Any], CaptionEvent | None]:
        """(gate event, caption or None) for one frame."""
        from drivecap.encoders import global_pool

        cfg = self.cfg
        t0 = now()
        frame.stamps["infer_start"] = t0
        self.metrics.record("wait", (t0 - frame.t_capture) * 1e3)
        moved, pscore, thumb = self.pregate.check(frame.image)
        self.metrics.since("pregate", t0)
        gate_ev: dict[str, Any] = {
            "event": "gate",
            "frame": frame.index,
            "t": _r(frame.t_source, 3),
            "pixel": _r(pscore),
        }
        age = self.gate.caption_age(frame.t_source)
        if cfg.gate.enabled and not moved and age < cfg.gate.max_age_s:
            self.pregate_skipped += 1
            gate_ev.update(encoded=False, open=False, reason="static", state=self.gate.state)
            self.gate_text = f"{self.gate.state} static"
            return gate_ev, None
        try:
            res = self.encoder.encode(frame.image)
        except Exception as exc:
            return self._encode_failed(frame, exc, gate_ev), None
        self._errors_in_row = 0
        t_enc = now()
        self.pregate.accept(thumb)
        self.encoded += 1
        enc_ms = res.preprocess_ms + res.infer_ms
        self.last_encode_ms = enc_ms
        self.metrics.record("preprocess", res.preprocess_ms)
        self.metrics.record("infer", res.infer_ms)
        self.metrics.record("encode", enc_ms)
        t_gate = now()
        decision = self.gate.update(global_pool(np.asarray(res.features, dtype=np.float32)), frame.t_source)
        self.metrics.since("gate", t_gate)
        gate_ev.update(
            encoded=True,
            open=decision.open,
            reason=decision.reason,
            state=decision.state,
            semantic=_r(decision.distance),
        )
        self.gate_text = f"{decision.state} d={decision.distance:.3f}"
        if not decision.open:
            return gate_ev, None
        mirror_ms = 0.0
        # Both the run's config and the captioner (a bundle-backed one) must ask for the mirror view.
        use_mirror = self.cfg.decoder.mirror_view and getattr(self.captioner, "mirror_view", False)
        mirror = self._encode_mirror(frame) if use_mirror else None
        if mirror is not None:
            mirror_ms = mirror.preprocess_ms + mirror.infer_ms
            self.metrics.record("encode_mirror", mirror_ms)
            cap = self.captioner.caption(res.features, mirror=mirror.features)
        else:
            cap = self.captioner.caption(res.features)
        self.last_decode_ms = float(cap.decode_ms)
        self.metrics.record("decode", float(cap.decode_ms))
        # The encode times of the frames that became captions, to set against their glass-to-caption.
        self.metrics.record("encode_captioned", enc_ms)
        self.metrics.since("caption_ready", frame.t_capture)
        self.n_captions += 1
        ev = CaptionEvent(
            id=self.n_captions,
            text=cap.text,
            tokens=tuple(cap.tokens),
            score=float(cap.score),
            urgent=caption_is_urgent(cap.text),
            frame=frame.index,
            t=frame.t_source,
            t_capture=frame.t_capture,
            gate_distance=decision.distance,
            gate_reason=decision.reason,
            timings_ms={
                "pregate_ms": (t_enc - t0) * 1e3 - enc_ms,
                "preprocess_ms": res.preprocess_ms,
                "infer_ms": res.infer_ms,
                "decode_ms": float(cap.decode_ms),
                "mirror_encode_ms": mirror_ms,
                "wait_ms": (t0 - frame.t_capture) * 1e3,
            },
        )
        return gate_ev, ev

    def _encode_mirror(self, frame: Frame) -> Any:
        """The encoder's result on the mirrored frame (for the mirror view), or None if that encode fails:
        the caption is then made from the frame alone rather than lost."""
        import cv2

        try:
            return self.encoder.encode(cv2.flip(frame.image, 1))
        except Exception as exc:
            log.warning(
                "mirror-view encode of frame %d failed (%s); captioning the frame alone", frame.index, exc
            )
            return None


@dataclass
class Outputs:
    """Which outputs to write, and where. ``folder=None``: nothing written (live view only)."""

    folder: Path | None
    name: str
    window: bool = True


class Pipeline:
    """Runs a source through the stages to the sinks; ``stop()`` (a SIGINT handler) ends it cleanly."""

    def __init__(
        self,
        cfg: Config,
        encoder: EncoderLike,
        captioner: CaptionerLike,
        outputs: Outputs,
        *,
        mode: str = "live",
        stride: int | None = None,
        max_frames: int | None = None,
        max_seconds: float | None = None,
        on_frame: Callable[[int], object] | None = None,
        on_caption: Callable[[CaptionEvent], None] | None = None,
        metrics: LatencyRecorder | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} not in {MODES}")
        self.cfg = cfg
        self.encoder = encoder
        self.captioner = captioner
        self.outputs = outputs
        self.mode = mode
        self.stride = stride or cfg.replay.stride
        self.max_frames = max_frames
        self.max_seconds = max_seconds
        self.on_frame = on_frame
        self.on_caption = on_caption
        # A caller may pass its own recorder (the benchmark's also keeps when each sample was taken).
        self.metrics = metrics if metrics is not None else LatencyRecorder()
        self._stop = threading.Event()
        self.interrupted = False  # stop() was asked for (Ctrl-C, window closed), not end of input or a limit
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._latest: CaptionEvent | None = None
        self.captions: list[CaptionEvent] = []
        self.events: EventLog | None = None
        self.skipped_for_fresher = 0
        self.slots: dict[str, LatestSlot[Frame]] = {}
        self._busy_ema_s: float | None = None

    def stop(self) -> None:
        """Asks the pipeline to finish: safe from a signal handler or another thread."""
        self.interrupted = True
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------------------------------ set-up

    def _open_sinks(self, stack: contextlib.ExitStack, fps: float) -> dict[str, Any]:
        out = self.outputs
        o = self.cfg.output
        sinks: dict[str, Any] = {
            "window": stack.enter_context(
                WindowSink(f"drivecap: {out.name}", enabled=out.window and o.window)
            )
        }
        if out.folder is None:
            return sinks
        folder = out.folder
        ensure_output_dir(folder)
        if o.video:
            sinks["video"] = stack.enter_context(VideoSink(folder / f"{out.name}.mp4", fps))
        if o.srt:
            sinks["srt"] = stack.enter_context(SubtitleSink(folder / f"{out.name}.srt"))
        if o.vtt:
            sinks["vtt"] = stack.enter_context(SubtitleSink(folder / f"{out.name}.vtt"))
        if o.events:
            self.events = stack.enter_context(
                EventLog(folder / f"{out.name}.jsonl", deterministic=self.mode == "offline")
            )
        return sinks

    def _event(self, ev: dict[str, Any]) -> None:
        if self.events is not None:
            self.events.write(ev)

    def _start_event(self, source: Source, summary: RunSummary) -> None:
        ev: dict[str, Any] = {
            "event": "start",
            "source": self.outputs.name,
            "kind": source.spec.kind,
            "mode": self.mode,
            "fps": _r(summary.source_fps, 3),
            "stride": self.stride if self.mode == "offline" else 1,
            "frames": source.frame_count,
            "encoder": self.encoder.describe(),
            "bundle": str(getattr(getattr(self.captioner, "bundle", None), "name", "")),
            "config": {k: v for k, v in to_dict(self.cfg).items() if k not in ("paths",)},
        }
        self._event(ev)

    # ------------------------------------------------------------------------------------------ run

    def run(self, source: Source) -> RunSummary:
        """Runs to the end of the source, ``stop()``, or the limits; every sink is closed on every path."""
        t_wall0 = now()
        summary = RunSummary(self.outputs.name, self.mode, 0.0)
        with contextlib.ExitStack() as stack:
            if self.mode == "offline":
                self._run_offline(source, stack, summary)
            else:
                self._run_threaded(source, stack, summary)
        summary.wall_s = now() - t_wall0
        summary.interrupted = self.interrupted
        summary.stages = {k: v for k, v in self.metrics.summary()["stages"].items()}  # type: ignore[attr-defined]
        if self.outputs.folder is not None:
            summary.outputs = {
                k: str(self.outputs.folder / f"{self.outputs.name}.{ext}")
                for k, ext in (("video", "mp4"), ("srt", "srt"), ("vtt", "vtt"), ("events", "jsonl"))
                if getattr(self.cfg.output, k)
            }
        if self._error is not None:
            raise self._error
        return summary

    def _hud(self, inf: Inference, rate: RateMeter) -> HudInfo:
        return HudInfo(
            extra="offline" if self.mode == "offline" else None,
            fps=rate.rate or None,
            encoder_ms=inf.last_encode_ms,
            decoder_ms=inf.last_decode_ms,
            gate=inf.gate_text,
        )

    def _make_speech(self, clock: str, t0: float) -> SpeechWorker:
        folder = self.outputs.folder
        return SpeechWorker(
            self.cfg.speech,
            clock=clock,
            out_dir=folder,
            name=self.outputs.name,
            t0=t0,
            metrics=self.metrics,
            on_event=self._event,
        )

    def _limits_hit(self, n_out: int, t_start: float) -> bool:
        if self.max_frames is not None and n_out >= self.max_frames:
            return True
        return self.max_seconds is not None and now() - t_start >= self.max_seconds

    def _end_event(self, summary: RunSummary) -> None:
        ev: dict[str, Any] = {
            "event": "end",
            "frames_in": summary.frames_in,
            "frames_out": summary.frames_out,
            "encoded": summary.encoded,
            "pregate_skipped": summary.pregate_skipped,
            "encode_errors": summary.encode_errors,
            "captions": summary.captions,
            "utterances": summary.utterances,
            "interrupted": self.interrupted,
        }
        if self.mode != "offline":
            ev.update(dropped=summary.dropped, not_encoded=summary.not_encoded, reconnects=summary.reconnects)
        g = self.metrics.samples("glass_to_caption")
        ev["wall"] = {
            "glass_to_caption_p50_ms": _r(percentile(g, 50), 1) if g else None,
            "encode_p50_ms": _r(self.metrics.p50("encode"), 1) if self.metrics.samples("encode") else None,
        }
        self._event(ev)

    # -- offline: one thread, every frame, file time only

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

    def _finish_subtitles(self, sinks: dict[str, Any], t_end: float) -> None:
        for key in ("srt", "vtt"):
            if key in sinks:
                sinks[key].finish(t_end)

    def _emit_frame(
        self,
        frame: Frame,
        current: CaptionEvent | None,
        overlay: Overlay,
        inf: Inference,
        rate: RateMeter,
        sinks: dict[str, Any],
        write_at: float | None,
    ) -> float:
        """Draws and outputs one frame; returns when the overlay was drawn (monotonic)."""
        t = frame.t_source
        rate.tick()
        t0 = now()
        win = sinks["window"]
        if win.toggle_hud_requested:
            overlay.hud_visible = not overlay.hud_visible
            win.toggle_hud_requested = False
        overlay.draw(frame.image, t, self._hud(inf, rate))
        t1 = now()
        self.metrics.record("overlay", (t1 - t0) * 1e3)
        if "video" in sinks:
            if write_at is None:
                sinks["video"].write(frame.image)
            else:
                sinks["video"].write_at(frame.image, write_at)
        text = current.text if current is not None else None
        for key in ("srt", "vtt"):
            if key in sinks:
                # Subtitle times follow the video's own timeline (it starts at the first output frame).
                sinks[key].show(text, t if write_at is None else write_at)
        win.write(frame.image)
        if win.quit_requested:
            self.stop()
        self.metrics.since("write", t1)
        return t1

    # -- live / realtime: capture thread, inference worker, output loop here

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
        self.slots = {"inference": infer_slot, "output": out_slot}  # read by drivecap.soak
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
                    self._event(shown.to_event(t_shown_pos=frame.t_source))
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


# --------------------------------------------------------------------------------------------- helpers


def safe_name(name: str, fallback: str = "capture") -> str:
    """A file-name stem that cannot leave its folder: letters, digits, ``._-`` only, no leading dots."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return stem[:80] or fallback


def load_models(cfg: Config) -> tuple[Any, Any]:
    """The configured encoder and the caption bundle checked against it."""
    from drivecap.decoder import Captioner
    from drivecap.encoders import make_encoder

    enc = make_encoder(cfg)
    try:
        cap = Captioner.load(cfg, encoder_sha256=enc.onnx_sha256)
    except BaseException:
        enc.close()
        raise
    return enc, cap


@contextlib.contextmanager
def sigint_stops(pipeline: Pipeline) -> Any:
    """While inside: the first Ctrl-C (SIGINT) asks the pipeline to stop cleanly (sinks closed, files
    complete); a second one interrupts at once. The previous handler is restored on the way out."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # SIGTERM (systemd, docker stop, kill) gets the same orderly stop: dying at once would leave an mp4
    # without its index, which no player opens.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        if pipeline.stopping:
            raise KeyboardInterrupt
        log.warning(
            "interrupted (%s): finishing the outputs (Ctrl-C again to abort)", signal.Signals(signum).name
        )
        pipeline.stop()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
