"""Frame sources (camera, file, RTSP/HTTP URL, GStreamer pipeline, image folder) and the capture thread.

A :class:`Source` opens, reads one BGR frame at a time with its position in the source, and closes.
The :class:`CaptureThread` owns one source: it stamps every frame (:class:`drivecap.frames.Frame`, with a
running index and the monotonic capture time), paces files by their timestamps when asked (``realtime``
replay), reopens a dropped live source with exponential backoff (logging the gap), ends cleanly at the end
of a file, and hands frames to :class:`LatestSlot` s that keep only the newest one, counting what they
overwrite.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from drivecap.config import CaptureConfig
from drivecap.frames import Frame
from drivecap.metrics import LatencyRecorder, now
from drivecap.pipeline.sources import CaptureError, Source, warn_if_short

log = logging.getLogger(__name__)

T = TypeVar("T")


# --------------------------------------------------------------------------------------------- slots


class LatestSlot(Generic[T]):
    """A mailbox that keeps only the newest ``depth`` items (1 by default: newest frame wins).

    ``put`` into a full slot drops the oldest unread item (counted in ``overwritten``); ``get`` waits and
    returns the oldest unread one. ``close()`` marks the end of the stream: ``get`` then returns what is
    left, and None once empty. A depth of 2 lets a consumer that runs at the source rate ride out a
    late frame without dropping one, at the price of showing it up to a frame later.
    """

    def __init__(self, depth: int = 1) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self._cond = threading.Condition()
        self._items: collections.deque[T] = collections.deque()
        self._depth = depth
        self._closed = False
        self.overwritten = 0
        self.put_count = 0

    def put(self, item: T) -> bool:
        """Adds ``item``; True when an unread item had to be dropped for it."""
        with self._cond:
            replaced = len(self._items) >= self._depth
            if replaced:
                self._items.popleft()
                self.overwritten += 1
            self._items.append(item)
            self.put_count += 1
            self._cond.notify_all()
            return replaced

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest unread item, waiting up to ``timeout`` s; None on timeout or once closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if not self._items:
                return None
            return self._items.popleft()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def discard(self) -> int:
        """Drops the unread items (at shutdown); returns how many."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            return n

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed and not self._items

    @property
    def pending(self) -> int:
        """Unread items now (never more than the depth: the soak checks the queues stay bounded)."""
        with self._cond:
            return len(self._items)


# --------------------------------------------------------------------------------------------- thread


class CaptureThread(threading.Thread):
    """Reads a source in the background and hands every frame to ``slots`` (newest wins in each).

    ``pace=True`` plays a file at its own speed (realtime replay: frames the consumers miss are dropped,
    as with a camera). Live sources are reopened with backoff when they drop. When the source ends (or
    ``stop()`` is called) every slot is closed so consumers see the end.
    """

    def __init__(
        self,
        source: Source,
        slots: Sequence[LatestSlot[Frame]],
        cfg: CaptureConfig,
        *,
        pace: bool = False,
        loop: bool = False,
        metrics: LatencyRecorder | None = None,
        on_event: Callable[[dict[str, object]], None] | None = None,
    ) -> None:
        super().__init__(name="capture", daemon=True)
        self.source = source
        self.slots = list(slots)
        self.cfg = cfg
        self.pace = pace
        self.loop = loop
        self.metrics = metrics or LatencyRecorder()
        self.on_event = on_event
        self.frames_read = 0
        self.late_dropped = 0  # paced files: frames read too late to deliver
        self.reconnects = 0
        self.error: BaseException | None = None
        self._stop_evt = threading.Event()
        self._opened = threading.Event()
        self._t0 = 0.0

    def stop(self) -> None:
        self._stop_evt.set()

    @property
    def stopping(self) -> bool:
        return self._stop_evt.is_set()

    def start_and_wait_open(self, timeout: float | None = None) -> None:
        """Starts the thread and waits for the first open; re-raises its error (e.g. no such camera)."""
        self.start()
        while not self._opened.wait(0.05):
            if not self.is_alive():
                break
            if timeout is not None:
                timeout -= 0.05
                if timeout <= 0:
                    break
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # handed to the pipeline, which reports it
            self.error = exc
            log.debug("capture thread failed", exc_info=True)
        finally:
            self._opened.set()
            for s in self.slots:
                s.close()

    def _emit(self, **event: object) -> None:
        if self.on_event is not None:
            self.on_event(dict(event))

    def _run(self) -> None:
        src = self.source
        src.open()
        self._opened.set()
        self._t0 = now()
        index = 0
        offset = 0.0  # file position added on each loop
        pace_origin: float | None = None
        last_t = 0.0
        while not self._stop_evt.is_set():
            t_read = now()
            item = src.read()
            if item is None:
                if src.live:
                    if not self._reconnect():
                        return
                    continue
                if self.loop and self.frames_read > 0:
                    log.info("end of %s: starting again (loop)", src.spec.name)
                    offset += last_t + 1.0 / (src.fps or 25.0)
                    src.close()
                    src.open()
                    continue
                log.info("end of %s after %d frames", src.spec.name, self.frames_read)
                warn_if_short(src, self.frames_read)
                src.close()
                return
            img, t = item
            t_cap = now()
            self.metrics.record("capture", (t_cap - t_read) * 1e3)
            if src.live:
                t_source = t_cap - self._t0
            else:
                last_t = t
                t_source = offset + t
                if self.pace:
                    if pace_origin is None:
                        pace_origin = t_cap - t_source
                    delay = pace_origin + t_source - now()
                    if delay > 0 and self._stop_evt.wait(delay):
                        break
                    t_cap = now()
                    if delay < -1.5 / (src.fps or 25.0):
                        # Reading fell more than a frame behind the clock: a camera would have moved on,
                        # so this frame is dropped (counted) rather than delivered late.
                        index += 1
                        self.frames_read += 1
                        self.late_dropped += 1
                        continue
            frame = Frame(index=index, image=img, t_capture=t_cap, t_source=t_source)
            index += 1
            self.frames_read += 1
            for s in self.slots:
                s.put(frame)
        src.close()

    def _reconnect(self) -> bool:
        """Reopens a dropped live source with exponential backoff; False when stopped meanwhile."""
        src = self.source
        t_lost = now()
        log.warning("source %s dropped after frame %d; reconnecting", src.spec.name, self.frames_read)
        self._emit(event="source_lost", frame=self.frames_read, t=round(t_lost - self._t0, 3))
        src.close()
        wait = self.cfg.reconnect_initial_s
        attempt = 0
        while not self._stop_evt.is_set():
            if self._stop_evt.wait(wait):
                return False
            attempt += 1
            try:
                src.open()
            except CaptureError as exc:
                log.info(
                    "reconnect attempt %d failed (%s); next in %.1f s",
                    attempt,
                    exc,
                    min(wait * 2, self.cfg.reconnect_max_s),
                )
                wait = min(max(wait * 2, 0.05), self.cfg.reconnect_max_s)
                continue
            gap = now() - t_lost
            self.reconnects += 1
            self.metrics.record("reconnect_gap", gap * 1e3)
            log.warning("source %s back after a %.2f s gap (%d attempts)", src.spec.name, gap, attempt)
            self._emit(
                event="source_back", t=round(now() - self._t0, 3), gap_s=round(gap, 3), attempts=attempt
            )
            return True
        return False


def wait_until(cond: Callable[[], bool], timeout: float, poll: float = 0.02) -> bool:
    """Polls ``cond`` until true or ``timeout`` s pass (for shutdown paths and tests)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(poll)
    return cond()
