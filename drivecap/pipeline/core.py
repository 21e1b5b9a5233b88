"""The pipeline's shared state and the steps both loops use: opening the outputs, events, the HUD, speech
and writing one captioned frame to every output."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from drivecap.config import Config, to_dict
from drivecap.frames import Frame
from drivecap.metrics import LatencyRecorder, RateMeter, now, percentile
from drivecap.outputs.base import SinkError
from drivecap.outputs.events import EventLog
from drivecap.outputs.overlay import HudInfo, Overlay
from drivecap.outputs.speech import SpeechWorker
from drivecap.outputs.subtitles import SubtitleSink
from drivecap.outputs.thumbnails import ThumbnailSink
from drivecap.outputs.video import VideoSink
from drivecap.outputs.window import WindowSink
from drivecap.pipeline.capture import LatestSlot
from drivecap.pipeline.inference import CaptionerLike, CaptionEvent, EncoderLike, Inference, rounded
from drivecap.pipeline.sources import Source
from drivecap.pipeline.summary import RunSummary
from drivecap.security import ensure_output_dir

log = logging.getLogger(__name__)


MODES = ("live", "realtime", "offline")


class LiveSink(Protocol):
    """Where a live view takes frames and events from (:class:`drivecap.web.feed.LiveFeed`): both calls
    return at once, from the output loop's thread."""

    def publish_frame(self, image: Any, index: int, t_capture: float, t_source: float) -> None: ...

    def publish_event(self, ev: dict[str, Any], t_shown: float | None = None) -> None: ...


@dataclass
class Outputs:
    """Which outputs to write, and where. ``folder=None``: nothing written (live view only)."""

    folder: Path | None
    name: str
    window: bool = True


class PipelineCore:
    """State and steps shared by the offline and threaded loops; :class:`~drivecap.pipeline.runner.Pipeline` is what callers use."""

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
        live: LiveSink | None = None,
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
        # The web server's newest-frame slot (drivecap.web.feed.LiveFeed): handed every output frame and
        # event; it never blocks (the server encodes and sends in its own thread).
        self.live = live
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
        if o.thumbnails:
            sinks["thumbs"] = stack.enter_context(ThumbnailSink(folder, out.name))
        if o.events:
            self.events = stack.enter_context(
                EventLog(folder / f"{out.name}.jsonl", deterministic=self.mode == "offline")
            )
        return sinks

    def _thumbnail(self, sinks: dict[str, Any], number: int, image: Any) -> None:
        """The caption's thumbnail, from the frame before anything is drawn on it (output.thumbnails)."""
        if "thumbs" in sinks:
            sinks["thumbs"].write(number, image)

    def _event(self, ev: dict[str, Any], t_shown: float | None = None) -> None:
        if self.events is not None:
            self.events.write(ev)
        if self.live is not None:
            self.live.publish_event(ev, t_shown)

    def _start_event(self, source: Source, summary: RunSummary) -> None:
        ev: dict[str, Any] = {
            "event": "start",
            "source": self.outputs.name,
            "kind": source.spec.kind,
            "mode": self.mode,
            "fps": rounded(summary.source_fps, 3),
            "stride": self.stride if self.mode == "offline" else 1,
            "frames": source.frame_count,
            "encoder": self.encoder.describe(),
            "bundle": str(getattr(getattr(self.captioner, "bundle", None), "name", "")),
            "config": {k: v for k, v in to_dict(self.cfg).items() if k not in ("paths",)},
        }
        self._event(ev)

    # ------------------------------------------------------------------------------------------ run

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
            "glass_to_caption_p50_ms": rounded(percentile(g, 50), 1) if g else None,
            "encode_p50_ms": rounded(self.metrics.p50("encode"), 1) if self.metrics.samples("encode") else None,
        }
        self._event(ev)

    # -- offline: one thread, every frame, file time only

    def _finish_subtitles(self, sinks: dict[str, Any], t_end: float) -> None:
        """Ends the open cues. A write error here is kept for ``run()`` to raise once the end event is logged:
        it is often the file's first write (a caption that stayed on screen to the end, or several captions
        with the same words, make a single cue), and raising it here would skip the end event."""
        for key in ("srt", "vtt"):
            if key in sinks:
                try:
                    sinks[key].finish(t_end)
                except SinkError as exc:
                    log.debug("%s failed at close", key, exc_info=True)
                    if self._error is None:  # an earlier error is the one to report
                        self._error = exc

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
        # Glass-to-output: capture to the frame written by every output (the web page's reference).
        self.metrics.since("glass_to_output", frame.t_capture)
        if self.live is not None:
            self.live.publish_frame(frame.image, frame.index, frame.t_capture, t)
        return t1

    # -- live / realtime: capture thread, inference worker, output loop here

