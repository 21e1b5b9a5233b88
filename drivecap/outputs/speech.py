"""Speaking captions to the driver: one worker thread, a newest-wins queue, and four TTS backends.

:class:`SpeechPolicy` decides *what* to say and *when* (pure: the clock is passed in): only the newest
caption waits, an urgent caption (person or vehicle close ahead) goes before a normal one and does not wait
for the minimum gap, a caption equal to any spoken within the last ``repeat_window_s`` is dropped, and two
utterances start at least ``min_gap_s`` apart.

:class:`SpeechWorker` runs the policy and owns the backend in one thread (pyttsx3 must be created and run
in the same thread). Two clocks:

* ``wall`` (live and realtime replay): the worker thread waits on the monotonic clock and the backend's
  real speaking time keeps it busy. Speech start time is recorded (glass-to-speech).
* ``source`` (offline replay): the output loop ticks the policy with file time, and speaking time is
  estimated from the word count and ``rate_wpm``, so the same input gives the same utterances on every run;
  the thread only renders them (WAV files).

Backends: ``pyttsx3`` (espeak-ng on Linux), ``espeak`` (espeak-ng command line), ``wav`` (one WAV file per
utterance and a log line; espeak-ng ``-w`` or pyttsx3 ``save_to_file``), ``none``. A missing or broken TTS
warns once and the worker goes silent; the pipeline never stops for it.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivecap.config import SpeechConfig
from drivecap.metrics import LatencyRecorder, now
from drivecap.outputs.tts import Backend, SpeechUnavailable, estimate_duration_s, make_backend, wav_duration_s

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- policy


@dataclass
class SpeechRequest:
    text: str
    urgent: bool
    caption_id: int
    t: float  # when it was offered, on the policy's clock
    t_capture: float = 0.0  # monotonic capture time of the captioned frame (glass-to-speech)


@dataclass
class Utterance:
    n: int
    request: SpeechRequest
    t_start: float  # on the policy's clock
    file: str = ""
    wall: dict[str, float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.request.text


class SpeechPolicy:
    """Newest caption wins, urgent first, repeat window, minimum gap. No clock or thread inside."""

    def __init__(self, cfg: SpeechConfig) -> None:
        self.cfg = cfg
        self._normal: SpeechRequest | None = None
        self._urgent: SpeechRequest | None = None
        self._last_start = float("-inf")
        self._spoken_at: dict[str, float] = {}
        self.busy_until = float("-inf")
        self.spoken = 0
        self.replaced = 0  # waiting captions superseded by a newer one
        self.repeats = 0  # dropped as a repeat within the window

    def offer(self, req: SpeechRequest) -> None:
        if req.urgent:
            if self._urgent is not None:
                self.replaced += 1
            self._urgent = req
        else:
            if self._normal is not None:
                self.replaced += 1
            self._normal = req

    @property
    def pending(self) -> bool:
        return self._urgent is not None or self._normal is not None

    def _is_repeat(self, req: SpeechRequest, t: float) -> bool:
        # Any caption spoken within the window counts, not only the last one: a scene flickering between
        # two captions (A, B, A) must not be read out again and again.
        said = self._spoken_at.get(req.text)
        return said is not None and t - said < self.cfg.repeat_window_s

    def next_due(self, t: float) -> float | None:
        """The earliest time something waiting may be spoken (None when nothing waits)."""
        if self._urgent is not None:
            return max(t, self.busy_until)
        if self._normal is not None:
            return max(t, self.busy_until, self._last_start + self.cfg.min_gap_s)
        return None

    def take(self, t: float) -> SpeechRequest | None:
        """The request to speak at ``t``, or None (nothing due). Starts the utterance's bookkeeping."""
        while True:
            due = self.next_due(t)
            if due is None or due > t:
                return None
            if self._urgent is not None:
                req = self._urgent
                self._urgent = None
                # A normal caption older than the urgent one describes a scene that is gone.
                if self._normal is not None and self._normal.caption_id < req.caption_id:
                    self._normal = None
                    self.replaced += 1
            else:
                assert self._normal is not None
                req = self._normal
                self._normal = None
            if self._is_repeat(req, t):
                self.repeats += 1
                continue
            self._last_start = t
            self._spoken_at = {k: v for k, v in self._spoken_at.items() if t - v < self.cfg.repeat_window_s}
            self._spoken_at[req.text] = t
            self.spoken += 1
            return req

    def mark_busy(self, until: float) -> None:
        self.busy_until = until


# --------------------------------------------------------------------------------------------- worker


class SpeechWorker:
    """The speech thread. ``submit`` captions; ``tick`` drives the policy on file time (offline).

    ``on_event`` receives a ``speech`` event per utterance (called from the thread that decided it: the
    worker thread on the wall clock, the caller of ``tick`` on the source clock).
    """

    def __init__(
        self,
        cfg: SpeechConfig,
        *,
        clock: str = "wall",
        out_dir: Path | None = None,
        name: str = "speech",
        t0: float | None = None,
        metrics: LatencyRecorder | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        backend: Backend | None = None,
    ) -> None:
        if clock not in ("wall", "source"):
            raise ValueError(clock)
        self.cfg = cfg
        self.clock = clock
        self.out_dir = out_dir
        self.name = name
        self.t0 = now() if t0 is None else t0
        self.metrics = metrics or LatencyRecorder()
        self.on_event = on_event
        self.backend = backend or make_backend(cfg.backend, cfg.rate_wpm)
        self.policy = SpeechPolicy(cfg)
        self.utterances: list[Utterance] = []
        self.silent = self.backend.name == "none"
        self._cond = threading.Condition()
        self._render: collections.deque[Utterance] = collections.deque()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._warned = False
        self.rendered = 0  # utterances the backend actually spoke or wrote (a TTS may break mid-run)
        self._ready = threading.Event()

    @property
    def enabled(self) -> bool:
        return self.backend.name != "none"

    # -- lifecycle

    def start(self) -> SpeechWorker:
        """Starts the thread and waits for its backend to open, so ``silent`` is known before captions."""
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="speech", daemon=True)
            self._thread.start()
            self._ready.wait(30)
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Stops after rendering what was decided (source clock) or the current utterance (wall clock)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> SpeechWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- input

    def submit(self, text: str, urgent: bool, caption_id: int, t: float, t_capture: float = 0.0) -> None:
        """A new caption. ``t`` is on this worker's clock (file time for source, monotonic for wall)."""
        if not self.enabled or self.silent or not text:
            return
        with self._cond:
            self.policy.offer(SpeechRequest(text, urgent, caption_id, t, t_capture))
            self._cond.notify_all()
        if self.clock == "source":
            self.tick(t)

    def tick(self, t: float) -> None:
        """Source clock only: decide what starts at file time ``t`` (called for every output frame)."""
        if self.clock != "source" or not self.enabled or self.silent:
            return
        with self._cond:
            req = self.policy.take(t)
            if req is None:
                return
            self.policy.mark_busy(t + estimate_duration_s(req.text, self.cfg.rate_wpm))
            utt = self._new_utterance(req, t)
            self._render.append(utt)
            self._cond.notify_all()
        self._emit(utt, t)

    # -- thread

    def _new_utterance(self, req: SpeechRequest, t: float) -> Utterance:
        n = len(self.utterances) + 1
        utt = Utterance(n, req, t)
        if self.backend.name == "wav":
            utt.file = f"{self.name}.speech{n:04d}.wav"
        self.utterances.append(utt)
        return utt

    def _emit(self, utt: Utterance, t: float) -> None:
        if self.on_event is None:
            return
        ev: dict[str, Any] = {
            "event": "speech",
            "n": utt.n,
            "caption": utt.request.caption_id,
            "t": round(t, 3),
            "text": utt.text,
            "urgent": utt.request.urgent,
        }
        if utt.file:
            ev["file"] = utt.file
        if utt.wall:
            ev["wall"] = dict(utt.wall)
        self.on_event(ev)

    def _run(self) -> None:
        try:
            self.backend.open()
        except Exception as exc:  # any failure to start a TTS means: silent, never a dead thread
            self._go_silent(exc)
        finally:
            self._ready.set()
        try:
            if self.clock == "wall":
                self._run_wall()
            else:
                self._run_source()
        finally:
            self.backend.close()

    def _go_silent(self, exc: Exception) -> None:
        if not self._warned:
            log.warning("speech off: %s; captions go on without it", exc)
            self._warned = True
        self.silent = True

    def _speak(self, utt: Utterance) -> float | None:
        """Speaks one utterance; returns when its sound ends (monotonic) for a WAV file, else None."""
        if self.silent:
            return None
        wav = (self.out_dir / utt.file) if (utt.file and self.out_dir is not None) else None
        started: list[float] = []

        def on_start() -> None:
            if not started:
                started.append(now())

        t_call = now()
        try:
            self.backend.speak(utt.text, wav, on_start)
        except SpeechUnavailable as exc:
            self._go_silent(exc)
            return None
        except Exception as exc:  # a TTS driver may raise anything mid-run; the drive goes on without it
            self._go_silent(exc)
            return None
        self.rendered += 1
        t_start = started[0] if started else t_call
        self.metrics.record("speech_synth", (now() - t_call) * 1e3)
        if utt.request.t_capture > 0:
            g2s = (t_start - utt.request.t_capture) * 1e3
            utt.wall["glass_to_speech_ms"] = round(g2s, 1)
            if self.clock == "wall":
                self.metrics.record("glass_to_speech", g2s)
        if wav is not None and wav.is_file():
            # Rendering a file takes milliseconds; the recording is as long as the audio, and the next
            # utterance must not start before it ends (as when it is played).
            return t_start + wav_duration_s(wav)
        return None

    def _run_source(self) -> None:
        while True:
            with self._cond:
                while not self._render and not self._stop:
                    self._cond.wait()
                if not self._render:
                    return
                utt = self._render.popleft()
            self._speak(utt)

    def _run_wall(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stop:
                        return
                    t = now()
                    req = self.policy.take(t)
                    if req is not None:
                        break
                    due = self.policy.next_due(t)
                    self._cond.wait(None if due is None else max(0.0, due - t))
                utt = self._new_utterance(req, t)
            ends = self._speak(utt)
            with self._cond:
                self.policy.mark_busy(now() if ends is None else ends)
            if not self.silent:
                self._emit(utt, t - self.t0)
