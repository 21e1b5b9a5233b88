"""Fan-out from the live feed to the connected clients: one JPEG per new frame, per-client newest-wins slots.

Runs entirely on the server's event loop. A new frame is JPEG-encoded once (in the server's one worker
thread, so the loop keeps answering) and offered to every video client; each client holds at most one frame
waiting to be sent, and a newer one replaces it (counted as a drop for that client). A client that stops
reading therefore costs one JPEG of memory and its own socket buffer, never a wait anywhere else. Events
(captions, gate, start/end) go to a bounded per-client queue: a client that falls 256 events behind loses
the oldest (counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from drivecap.web.feed import LiveFeed, LiveFrame

log = logging.getLogger(__name__)

EVENT_QUEUE = 256


@dataclass(frozen=True)
class JpegPacket:
    """An encoded frame and the times that travel with it to the page."""

    seq: int
    index: int
    t_source: float
    capture_unix: float
    output_unix: float
    encoded_unix: float
    jpeg: bytes

    def header(self) -> dict[str, Any]:
        return {
            "i": self.index,
            "seq": self.seq,
            "t": round(self.t_source, 3),
            "capture": self.capture_unix,
            "output": self.output_unix,
            "encoded": self.encoded_unix,
        }


@dataclass(eq=False)
class Client:
    """One connected page or stream: what it waits to be sent and what it missed."""

    id: int
    kind: str  # "ws", "mjpeg" or "sse"
    peer: str
    video: bool
    frame: JpegPacket | None = None
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENT_QUEUE))
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    frames_sent: int = 0
    frames_dropped: int = 0
    events_dropped: int = 0
    closed: bool = False

    def offer_frame(self, pkt: JpegPacket) -> None:
        if self.frame is not None:
            self.frames_dropped += 1
        self.frame = pkt
        self.ready.set()

    def offer_event(self, ev: dict[str, Any]) -> None:
        if len(self.events) == self.events.maxlen:
            self.events_dropped += 1
        self.events.append(ev)
        self.ready.set()

    async def wait(self, timeout: float) -> tuple[JpegPacket | None, list[dict[str, Any]]]:
        """The waiting frame and events (taken), after at most ``timeout`` seconds (then maybe nothing)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), timeout)
        self.ready.clear()
        pkt, self.frame = self.frame, None
        evs = list(self.events)
        self.events.clear()
        return pkt, evs


class Hub:
    """Owns the clients of one live feed; start/stop on the server's loop."""

    def __init__(self, feed: LiveFeed, jpeg_quality: int = 80, max_width: int | None = None) -> None:
        self.feed = feed
        self.jpeg_quality = jpeg_quality
        self.max_width = max_width
        self.clients: set[Client] = set()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._last_seq = 0
        self._event_seq = 0
        self.latest: JpegPacket | None = None
        self.closing = False
        # Totals over every client that ever connected (the per-client figures go when a client leaves).
        self.connections = 0
        self.frames_encoded = 0
        self.frames_sent = 0
        self.frames_dropped = 0
        self.events_dropped = 0

    # -- lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-jpeg")
        self._pool.submit(int).result()  # start its thread now: the thread count stays flat from here on
        self._event_seq = self.feed.event_seq
        self.feed.add_wakeup(self._wake_threadsafe)
        self._task = asyncio.create_task(self._run(), name="web-hub")

    async def stop(self) -> None:
        self.closing = True
        self.feed.remove_wakeup(self._wake_threadsafe)
        for c in list(self.clients):
            c.closed = True
            c.ready.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _wake_threadsafe(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
            loop.call_soon_threadsafe(self._wake.set)

    # -- clients

    def connect(self, kind: str, peer: str, video: bool) -> Client:
        c = Client(next(self._ids), kind, peer, video)
        self.clients.add(c)
        self.connections += 1
        if video and self.latest is not None:
            c.offer_frame(self.latest)  # a new page shows the current frame at once
        log.debug("web client %d (%s) from %s connected", c.id, kind, peer)
        return c

    def disconnect(self, c: Client) -> None:
        c.closed = True
        self.clients.discard(c)
        self.frames_sent += c.frames_sent
        self.frames_dropped += c.frames_dropped
        self.events_dropped += c.events_dropped
        log.debug("web client %d left: %d frames sent, %d dropped", c.id, c.frames_sent, c.frames_dropped)

    def totals(self) -> dict[str, int]:
        live = list(self.clients)
        return {
            "connections": self.connections,
            "frames_encoded": self.frames_encoded,
            "frames_sent": self.frames_sent + sum(c.frames_sent for c in live),
            "frames_dropped": self.frames_dropped + sum(c.frames_dropped for c in live),
            "events_dropped": self.events_dropped + sum(c.events_dropped for c in live),
        }

    # -- the fan-out task

    def _encode(self, frame: LiveFrame) -> JpegPacket:
        import cv2

        img: Any = frame.image
        if self.max_width is not None and img.shape[1] > self.max_width:
            h = round(img.shape[0] * self.max_width / img.shape[1])
            img = cv2.resize(img, (self.max_width, h), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return JpegPacket(
            frame.seq,
            frame.index,
            frame.t_source,
            frame.capture_unix,
            frame.output_unix,
            time.time(),
            buf.tobytes(),
        )

    async def _run(self) -> None:
        assert self._loop is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._event_seq, events = self.feed.events_after(self._event_seq)
            for ev in events:
                for c in self.clients:
                    c.offer_event(ev)
            frame = self.feed.latest_frame()
            if frame is None or frame.seq == self._last_seq:
                continue
            if not any(c.video for c in self.clients):
                continue  # nobody watches: no JPEG work at all
            self._last_seq = frame.seq
            try:
                pkt = await self._loop.run_in_executor(self._pool, self._encode, frame)
            except Exception:
                log.warning("JPEG encoding of frame %d failed", frame.index, exc_info=True)
                continue
            self.frames_encoded += 1
            self.feed.metrics.record("web_jpeg", (pkt.encoded_unix - frame.output_unix) * 1e3)
            self.latest = pkt
            for c in self.clients:
                if c.video:
                    c.offer_frame(pkt)
            # Frames that arrived while this one was encoded: go round again at once for the newest.
            if self.feed.latest_frame() is not frame:
                self._wake.set()
