"""The hand-over point between the pipeline and the web server: a newest-frame slot and an event stream.

The pipeline's output loop calls :meth:`LiveFeed.publish_frame` and :meth:`LiveFeed.publish_event` from its
own thread. Both only take a lock for a few assignments and wake the server's event loop with
``call_soon_threadsafe`` (a write to a self-pipe): they never wait for a client, never encode a JPEG and
never grow without bound. Everything slow (JPEG encoding, sockets) happens on the server's side.

Times: frames carry their capture time as Unix time (``time.time()``) converted from the pipeline's
monotonic stamps at publish time, so a browser on the same machine (``Date.now()``) or one that did the
clock-offset handshake of the live WebSocket can subtract them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from drivecap.metrics import LatencyRecorder, now
from drivecap.security import mask_url

Wakeup = Callable[[], None]


@dataclass(frozen=True)
class LiveFrame:
    """One overlaid frame as the output loop handed it over (the image is not copied: see publish_frame)."""

    seq: int
    index: int
    image: npt.NDArray[np.uint8]
    t_source: float
    capture_unix: float  # when the frame was captured (glass), Unix seconds
    output_unix: float  # when the output loop had drawn and written it, Unix seconds


def mono_to_unix(t_mono: float) -> float:
    """A monotonic stamp (:func:`drivecap.metrics.now`) as Unix time, by the offset of the two clocks now."""
    return time.time() - (now() - t_mono)


def masked(value: Any) -> Any:
    """``value`` (an event, nested) with every string passed through :func:`mask_url`: credentials of a
    source URL must not reach a page, whatever field they hide in."""
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v) for v in value]
    return value


class LiveFeed:
    """Newest overlaid frame + recent events, shared by one pipeline (writer) and one server (reader)."""

    def __init__(self, metrics: LatencyRecorder | None = None, history: int = 50) -> None:
        self.metrics = metrics if metrics is not None else LatencyRecorder()
        self._lock = threading.Lock()
        self._frame: LiveFrame | None = None
        self._seq = 0
        self._event_seq = 0
        self._events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=1000)
        self._captions: deque[dict[str, Any]] = deque(maxlen=history)
        self._status: dict[str, Any] = {}
        self._wakeups: list[Wakeup] = []
        self.frames_published = 0
        self.events_published = 0

    # -- writer side (the pipeline's thread)

    def publish_frame(
        self, image: npt.NDArray[np.uint8], index: int, t_capture: float, t_source: float
    ) -> None:
        """Hands over an overlaid frame. The array is kept by reference: the output loop never draws on a
        frame again once it is written, and a copy would cost the pipeline's thread ~1 ms at 720p."""
        t = now()
        wall = time.time()
        with self._lock:
            self._seq += 1
            self._frame = LiveFrame(self._seq, index, image, t_source, wall - (t - t_capture), wall)
            self.frames_published += 1
            wakeups = list(self._wakeups)
        for w in wakeups:
            w()

    def publish_event(self, ev: dict[str, Any], t_shown: float | None = None) -> None:
        """Hands over a pipeline event (start, gate, caption, speech, end). ``t_shown`` (monotonic): when a
        caption was drawn on the video, sent on as ``shown_unix`` so the page can time its own paint."""
        web = masked(ev)
        if t_shown is not None:
            web["shown_unix"] = round(mono_to_unix(t_shown), 6)
        kind = web.get("event")
        with self._lock:
            self._event_seq += 1
            self._events.append((self._event_seq, web))
            if kind == "caption":
                self._captions.append(web)
            elif kind == "gate":
                self._status["gate"] = web
            elif kind in ("start", "end"):
                self._status[kind] = web
            self.events_published += 1
            wakeups = list(self._wakeups)
        for w in wakeups:
            w()

    # -- reader side (the server's event loop)

    def add_wakeup(self, fn: Wakeup) -> None:
        with self._lock:
            self._wakeups.append(fn)

    def remove_wakeup(self, fn: Wakeup) -> None:
        with self._lock:
            if fn in self._wakeups:
                self._wakeups.remove(fn)

    def latest_frame(self) -> LiveFrame | None:
        with self._lock:
            return self._frame

    def events_after(self, seq: int) -> tuple[int, list[dict[str, Any]]]:
        """Events newer than ``seq`` (oldest first) and the newest sequence number. Events older than the
        history are gone: a reader that fell that far behind has missed them (it only ever lags by a few)."""
        with self._lock:
            out = [ev for s, ev in self._events if s > seq]
            return self._event_seq, out

    @property
    def event_seq(self) -> int:
        with self._lock:
            return self._event_seq

    def recent_captions(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._captions)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._status)
