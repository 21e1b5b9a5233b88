"""The web server's app and lifecycle: aiohttp on its own event loop in one background thread.

``WebServer(...).start()`` returns once the socket listens (or raises a one-line error when it cannot);
``stop()`` closes every stream and joins the thread, so threads and file descriptors go back to where they
were. The pipeline never calls into this module: it only touches the :class:`~drivecap.web.feed.LiveFeed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from drivecap.errors import DrivecapError
from drivecap.web.auth import SECURITY_HEADERS, make_guard
from drivecap.web.feed import LiveFeed
from drivecap.web.hub import Hub

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")


def _page(name: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    return handler


def build_app(
    feed: LiveFeed | None = None,
    root: Path | None = None,
    token: str | None = None,
    jpeg_quality: int = 80,
    max_width: int | None = None,
) -> tuple[web.Application, Hub | None]:
    """The app: live routes when there is a feed, drive-browser routes when there is a root folder."""
    from drivecap.web.prom import CONTENT_TYPE, render

    app = web.Application(middlewares=[make_guard(token)])
    hub: Hub | None = None
    t_start = time.time()
    if feed is not None:
        from drivecap.web.live import add_live_routes

        hub = Hub(feed, jpeg_quality=jpeg_quality, max_width=max_width)
        add_live_routes(app, hub)
        live_hub = hub

        async def start_hub(app: web.Application) -> None:
            await live_hub.start()

        async def stop_hub(app: web.Application) -> None:
            await live_hub.stop()

        app.on_startup.append(start_hub)
        app.on_shutdown.append(stop_hub)  # before connections are closed: wakes every stream to end
        app.router.add_get("/", _page("live.html"))
    if root is not None:
        from drivecap.web.drives import add_drive_routes

        add_drive_routes(app, root)
        app.router.add_get("/drives" if feed is not None else "/", _page("browser.html"))
    app.router.add_static("/static/", STATIC, follow_symlinks=False, show_index=False)

    async def healthz(request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = {"ok": True, "uptime_s": round(time.time() - t_start, 1)}
        if hub is not None:
            latest = hub.feed.latest_frame()
            body.update(
                frames=hub.feed.frames_published,
                clients=len(hub.clients),
                last_frame_age_s=round(time.time() - latest.output_unix, 3) if latest else None,
            )
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    def extra() -> dict[str, Any]:
        if hub is None:
            return {}
        tot = hub.totals()
        return {
            "counters": {
                "connections": tot["connections"],
                "frames_encoded": tot["frames_encoded"],
                "frames_sent": tot["frames_sent"],
                "frames_dropped": tot["frames_dropped"],
                "events_dropped": tot["events_dropped"],
                "frames_published": hub.feed.frames_published,
                "events_published": hub.feed.events_published,
            },
            "gauges": {"clients": len(hub.clients)},
            "clients": [(c.id, c.kind, c.frames_dropped) for c in hub.clients],
        }

    metrics_source = feed.metrics if feed is not None else None

    async def metrics(request: web.Request) -> web.StreamResponse:
        from drivecap.metrics import LatencyRecorder

        text = render(metrics_source or LatencyRecorder(), extra)
        return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE, **SECURITY_HEADERS})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app, hub


class WebServer:
    """Runs :func:`build_app`'s app on ``host:port`` in a background thread (a context manager)."""

    def __init__(self, host: str, port: int, token: str | None = None, **app_kwargs: Any) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.app_kwargs = app_kwargs
        self.hub: Hub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The address to open (with the token when there is one): printed once, never logged."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    @property
    def lan_url(self) -> str | None:
        """Bound to every address: the URL a phone or tablet on the car's network opens (this machine's
        address on the interface of its default route; None when it has none). Finding it sends nothing."""
        if self.host not in ("0.0.0.0", "::", ""):
            return None
        import socket

        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(("10.254.254.254", 9))  # UDP connect picks a route and sends no packet
                addr = str(s.getsockname()[0])
        except OSError:
            return None
        if addr.startswith("127.") or addr == "0.0.0.0":
            return None
        return f"http://{addr}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def start(self) -> WebServer:
        self._thread = threading.Thread(target=self._serve, name="web-server", daemon=True)
        self._thread.start()
        self._started.wait(timeout=30)
        if self._error is not None:
            self._thread.join(timeout=5)
            err = self._error
            reason = getattr(err, "strerror", None) or str(err)
            raise DrivecapError(
                f"cannot serve on {self.host}:{self.port} ({reason}); choose another --serve [HOST:]PORT"
            ) from None
        return self

    def _serve(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        # aiohttp reads static files through the loop's default executor: a small named one, started now,
        # so the thread count does not grow later with the first page load.
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="web-io")
        both = threading.Barrier(2)  # each waits for the other: two threads, not one reused
        for f in [pool.submit(both.wait, 10) for _ in range(2)]:
            f.result()
        loop.set_default_executor(pool)
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            loop.run_until_complete(self._close())
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _open(self) -> None:
        app, self.hub = build_app(token=self.token, **self.app_kwargs)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
        log.info("web server listening on %s:%d", self.host, self.port)

    async def _close(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
            self._runner = None

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=15)
        self._thread = None

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_live_server(bind: str, token: str | None, metrics: Any = None) -> tuple[LiveFeed, WebServer]:
    """For ``run --serve`` / ``replay --serve``: a feed for the pipeline and its started server."""
    from drivecap.web.auth import parse_bind, resolve_token

    host, port = parse_bind(bind)
    feed = LiveFeed(metrics)
    server = WebServer(host, port, token=resolve_token(host, token), feed=feed).start()
    return feed, server
