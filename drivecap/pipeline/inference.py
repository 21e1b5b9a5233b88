"""The inference stage: pixel pre-gate, encoder, semantic gate and decoder on one frame, and the caption event it makes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from drivecap.captions.grammar import for_people, parse, render, tokenize
from drivecap.captions.hold import FactHold
from drivecap.config import Config
from drivecap.errors import DrivecapError
from drivecap.frames import Frame
from drivecap.metrics import LatencyRecorder, now
from drivecap.pipeline.gate import PixelPreGate, SemanticGate

log = logging.getLogger(__name__)
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


def rounded(x: float, nd: int = 4) -> float:
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
    raw_text: str | None = None  # the decoder's own caption when the fact hold changed it

    def to_event(self, t_shown_pos: float | None = None) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "event": "caption",
            "id": self.id,
            "frame": self.frame,
            "t": rounded(self.t, 3),
            "text": self.text,
            "tokens": " ".join(self.tokens),
            "urgent": self.urgent,
            "score": rounded(self.score),
            "gate": rounded(self.gate_distance),
            "reason": self.gate_reason,
        }
        if self.raw_text is not None:
            ev["raw"] = self.raw_text
        if t_shown_pos is not None:
            ev["t_shown"] = rounded(t_shown_pos, 3)
        wall = {k: rounded(v, 2) for k, v in self.timings_ms.items()}
        if self.t_shown is not None:
            wall["glass_to_caption_ms"] = rounded((self.t_shown - self.t_capture) * 1e3, 2)
        ev["wall"] = wall
        return ev


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
        h = cfg.hold
        self.hold = FactHold(h.enter_s, h.leave_s, h.urgent_enter_s) if h.enabled else None
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
        from drivecap.encoders.base import global_pool

        cfg = self.cfg
        t0 = now()
        frame.stamps["infer_start"] = t0
        self.metrics.record("wait", (t0 - frame.t_capture) * 1e3)
        moved, pscore, thumb = self.pregate.check(frame.image)
        self.metrics.since("pregate", t0)
        gate_ev: dict[str, Any] = {
            "event": "gate",
            "frame": frame.index,
            "t": rounded(frame.t_source, 3),
            "pixel": rounded(pscore),
        }
        age = self.gate.caption_age(frame.t_source)
        if (
            cfg.gate.enabled
            and not moved
            and age < cfg.gate.max_age_s
            and not self.gate.is_due(frame.t_source)
        ):
            self.pregate_skipped += 1
            gate_ev.update(encoded=False, open=False, reason="static", state=self.gate.state)
            self.gate_text = f"{self.gate.state} static"
            return gate_ev, None
        # Both the run's config and the captioner (a bundle-backed one) must ask for the mirror view.
        use_mirror = self.cfg.decoder.mirror_view and getattr(self.captioner, "mirror_view", False)
        mirror = None
        try:
            pair = getattr(self.encoder, "encode_pair", None)
            if use_mirror and not cfg.gate.enabled and pair is not None:
                # Every encoded frame becomes a caption: frame and mirror go together (one batch of 2 where
                # the backend measured that faster). With the gate on, the mirror waits for the gate: one
                # call of its own only when a caption is made, cheaper than any batch repeating the frame.
                res, mirror = pair(frame.image)
            else:
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
            semantic=rounded(decision.distance),
        )
        self.gate_text = f"{decision.state} d={decision.distance:.3f}"
        if not decision.open:
            return gate_ev, None
        mirror_ms = 0.0
        if use_mirror and mirror is None:
            mirror = self._encode_mirror(frame)
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
        text, tokens, raw = self._held(cap.text, tuple(cap.tokens), frame.t_source)
        ev = CaptionEvent(
            id=self.n_captions,
            text=for_people(text),
            tokens=tokens,
            score=float(cap.score),
            urgent=caption_is_urgent(text),
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
            raw_text=None if raw is None else for_people(raw),
        )
        return gate_ev, ev

    def _held(self, text: str, tokens: tuple[str, ...], t: float) -> tuple[str, tuple[str, ...], str | None]:
        """(caption to show, its tokens, the decoder's caption if the fact hold changed it)."""
        if self.hold is None:
            return text, tokens, None
        shown = render(self.hold.update(parse(text), t))
        if self.cfg.hold.confirm:
            self.gate.request(self.hold.due())
        if shown == text:
            return text, tokens, None
        return shown, tuple(tokenize(shown)), text

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


def load_models(cfg: Config) -> tuple[Any, Any]:
    """The configured encoder and the caption bundle checked against it."""
    from drivecap.decoder.captioner import Captioner
    from drivecap.encoders.factory import make_encoder

    enc = make_encoder(cfg)
    try:
        cap = Captioner.load(cfg, encoder_sha256=enc.onnx_sha256)
    except BaseException:
        enc.close()
        raise
    return enc, cap
