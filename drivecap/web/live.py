"""Live routes: the page, its WebSocket (JPEG frames + events), MJPEG, SSE ``/events``, a snapshot.

``/ws`` sends each frame as one binary message: a 2-byte big-endian header length, a JSON header (frame
index, capture/output/encode Unix times) and the JPEG; events go as text messages (JSON). The page may send
``{"ping": <its clock, ms>}`` and gets ``{"event": "pong", ...}`` with the server's clock, the clock-offset
handshake that makes the page's latency figures valid on another machine too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from typing import Any

from aiohttp import WSMsgType, web

from drivecap.web.auth import SECURITY_HEADERS
from drivecap.web.hub import Client, Hub, JpegPacket

log = logging.getLogger(__name__)

HUB = web.AppKey("hub", Hub)
BOUNDARY = "drivecapframe"
HEARTBEAT_S = 10.0


def _peer(request: web.Request) -> str:
    return request.remote or "?"


def ws_message(pkt: JpegPacket) -> bytes:
    head = json.dumps(pkt.header(), separators=(",", ":")).encode()
    return struct.pack(">H", len(head)) + head + pkt.jpeg


async def ws_handler(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    # compress=False: JPEG does not deflate, and permessage-deflate would cost both ends CPU per frame.
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=4096, compress=False)
    await ws.prepare(request)
    video = request.query.get("video", "1") != "0"
    client = hub.connect("ws", _peer(request), video)
    sender = asyncio.create_task(_ws_send(ws, hub, client))
    try:
        async for msg in ws:  # the reader: pings from the page, and noticing when it goes
            if msg.type != WSMsgType.TEXT:
                continue
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                ping = json.loads(msg.data).get("ping")
                if isinstance(ping, int | float):
                    await ws.send_str(json.dumps({"event": "pong", "ping": ping, "server_unix": time.time()}))
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        hub.disconnect(client)
        await ws.close()
    return ws


async def _ws_send(ws: web.WebSocketResponse, hub: Hub, client: Client) -> None:
    hello = {"event": "hello", "client": client.id, "server_unix": time.time(), **hub.feed.status()}
    await ws.send_str(json.dumps({**hello, "captions": hub.feed.recent_captions()[-20:]}))
    while not (client.closed or ws.closed):
        pkt, events = await client.wait(HEARTBEAT_S)
        for ev in events:
            await ws.send_str(json.dumps(ev))
        if pkt is not None:
            # send_bytes waits while this client's socket is full: only this task waits, and newer
            # frames meanwhile replace each other in its slot (counted as drops).
            await ws.send_bytes(ws_message(pkt))
            client.frames_sent += 1
    await ws.close()


async def mjpeg_handler(request: web.Request) -> web.StreamResponse:
    """``multipart/x-mixed-replace`` for ``<img>``, VLC or ffmpeg; each part names its frame and capture time."""
    hub = request.app[HUB]
    resp = web.StreamResponse(
        headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "Cache-Control": "no-store",
            **SECURITY_HEADERS,
        }
    )
    await resp.prepare(request)
    client = hub.connect("mjpeg", _peer(request), video=True)
    try:
        while not client.closed:
            pkt, _ = await client.wait(HEARTBEAT_S)
            if pkt is None:
                continue
            head = (
                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(pkt.jpeg)}\r\n"
                f"X-Frame-Index: {pkt.index}\r\nX-Capture-Unix: {pkt.capture_unix:.6f}\r\n"
                f"X-Output-Unix: {pkt.output_unix:.6f}\r\n\r\n"
            ).encode()
            await resp.write(head + pkt.jpeg + b"\r\n")
            client.frames_sent += 1
    except (ConnectionError, asyncio.CancelledError):
        pass  # the viewer went away: its client record goes below
    finally:
        hub.disconnect(client)
    return resp


async def sse_handler(request: web.Request) -> web.StreamResponse:
    """``/events``: Server-Sent Events, one JSON event per message (``event:`` is the event kind)."""
    hub = request.app[HUB]
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", **SECURITY_HEADERS}
    )
    await resp.prepare(request)
    client = hub.connect("sse", _peer(request), video=False)
    try:
        await resp.write(b"retry: 2000\n\n")
        for ev in hub.feed.recent_captions()[-20:]:
            await resp.write(_sse(ev))
        while not client.closed:
            _, events = await client.wait(HEARTBEAT_S)
            if not events:
                await resp.write(b": keep-alive\n\n")  # finds dead peers, keeps proxies from timing out
            for ev in events:
                await resp.write(_sse(ev))
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        hub.disconnect(client)
    return resp


def _sse(ev: dict[str, Any]) -> bytes:
    kind = str(ev.get("event", "message")).replace("\n", " ")
    return f"event: {kind}\ndata: {json.dumps(ev, separators=(',', ':'))}\n\n".encode()


async def snapshot_handler(request: web.Request) -> web.StreamResponse:
    pkt = request.app[HUB].latest
    if pkt is None:
        raise web.HTTPServiceUnavailable(text="no frame yet\n")
    return web.Response(
        body=pkt.jpeg,
        content_type="image/jpeg",
        headers={"Cache-Control": "no-store", "X-Frame-Index": str(pkt.index)},
    )


async def status_handler(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    body = {**hub.feed.status(), "captions": hub.feed.recent_captions(), **hub.totals()}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def add_live_routes(app: web.Application, hub: Hub) -> None:
    app[HUB] = hub
    app.router.add_get("/ws", ws_handler)
    app.router.add_get("/stream.mjpg", mjpeg_handler)
    app.router.add_get("/events", sse_handler)
    app.router.add_get("/snapshot.jpg", snapshot_handler)
    app.router.add_get("/api/live", status_handler)
