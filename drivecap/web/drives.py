"""Drive-browser routes over OUT_DIR: the list of drives, one drive's captions, its files, thumbnails, search.

Read-only: nothing here writes under OUT_DIR (thumbnails are made in memory). Every file goes through
:func:`drivecap.web.paths.safe_file`. Blocking work (JSONL parsing, PyAV decoding, SQLite) runs in one
worker thread so the event loop keeps streaming.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from drivecap.web.feed import masked
from drivecap.web.paths import Drive, drive_by_id, find_drives, read_events, safe_file
from drivecap.web.thumbs import ThumbnailError, thumbnail, video_codec

log = logging.getLogger(__name__)

ROOT = web.AppKey("root", Path)
POOL = web.AppKey("pool", ThreadPoolExecutor)

CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".vtt": "text/vtt",
    ".srt": "text/plain",
    ".jsonl": "application/x-ndjson",
    ".json": "application/json",
    ".jpg": "image/jpeg",
    ".png": "image/png",
}


def _search_available(root: Path) -> bool:
    if not (root / "index.sqlite").is_file():
        return False
    try:
        _fleet_search()
    except ImportError:
        return False
    return True


def _fleet_search() -> Any:
    """The fleet issue's search module, imported only when an index is there (absent before it lands)."""
    return importlib.import_module("drivecap.fleet.search")


def _seek_time(ev: dict[str, Any]) -> float:
    """Where in the recording a caption first shows: realtime logs say so (``t_shown``), offline ones draw
    it on the frame it was made from (``t``)."""
    t = ev.get("t_shown", ev.get("t", 0.0))
    return float(t) if isinstance(t, int | float) else 0.0


def _summary(d: Drive) -> dict[str, Any]:
    start, captions, end = read_events(d.file(".jsonl"))
    return {
        "id": d.id,
        "name": d.stem,
        "folder": str(Path(d.id).parent) if "/" in d.id else "",
        "video": f"/files/{d.rel('.mp4')}",
        "vtt": f"/files/{d.rel('.vtt')}",
        "events": f"/files/{d.rel('.jsonl')}",
        "codec": video_codec(d.file(".mp4")),
        "captions": len(captions),
        "urgent": sum(1 for c in captions if c.get("urgent")),
        "mode": start.get("mode"),
        "source": masked(start.get("source")),
        "frames": end.get("frames_out"),
        "fps": start.get("fps"),
        "complete": bool(end),
    }


def _captions(d: Drive) -> list[dict[str, Any]]:
    _, captions, _ = read_events(d.file(".jsonl"))
    out = []
    for c in captions:
        t = _seek_time(c)
        out.append(
            {
                "id": c.get("id"),
                "t": round(t, 3),
                "frame": c.get("frame"),
                "text": masked(str(c.get("text", ""))),
                "urgent": bool(c.get("urgent")),
                "thumb": f"/api/thumb?drive={d.id}&t={t:.2f}",
            }
        )
    return out


async def _in_pool(request: web.Request, fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(request.app[POOL], fn, *args)


def _drive(request: web.Request) -> Drive:
    d = drive_by_id(request.app[ROOT], request.query.get("drive", ""))
    if d is None:
        raise web.HTTPNotFound(text="no such drive\n")
    return d


async def drives_handler(request: web.Request) -> web.StreamResponse:
    root = request.app[ROOT]

    def work() -> dict[str, Any]:
        return {"drives": [_summary(d) for d in find_drives(root)], "search": _search_available(root)}

    return web.json_response(await _in_pool(request, work), headers={"Cache-Control": "no-store"})


async def captions_handler(request: web.Request) -> web.StreamResponse:
    d = _drive(request)
    body = {"drive": d.id, "captions": await _in_pool(request, _captions, d)}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def thumb_handler(request: web.Request) -> web.StreamResponse:
    d = _drive(request)
    try:
        t = float(request.query.get("t", "0"))
        width = int(request.query.get("w", "192"))
    except ValueError:
        raise web.HTTPBadRequest(text="t and w must be numbers\n") from None
    if not (0 <= t < 1e6 and 32 <= width <= 640):
        raise web.HTTPBadRequest(text="t must be 0..1e6 s and w 32..640\n")
    try:
        jpeg = await _in_pool(request, thumbnail, d.file(".mp4"), t, width)
    except ThumbnailError as exc:
        raise web.HTTPNotFound(text=f"no thumbnail: {exc}\n") from None
    return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


async def file_handler(request: web.Request) -> web.StreamResponse:
    path = safe_file(request.app[ROOT], request.match_info["path"])
    if path is None:
        raise web.HTTPNotFound(text="not found\n")
    # FileResponse answers Range requests, which <video> seeking needs.
    return web.FileResponse(
        path, headers={"Content-Type": CONTENT_TYPES[path.suffix.lower()], "Cache-Control": "no-cache"}
    )


async def search_handler(request: web.Request) -> web.StreamResponse:
    root = request.app[ROOT]
    if not _search_available(root):
        raise web.HTTPNotFound(text="no caption index here: build one with `drivecap index`\n")
    q = request.query.get("q", "").strip()[:200] or None
    urgent = {"1": True, "0": False}.get(request.query.get("urgent", ""))

    def work() -> list[dict[str, Any]]:
        rows = _fleet_search().search_captions(root / "index.sqlite", text=q, urgent=urgent, limit=50)
        out = []
        for r in rows:
            # The index names a drive by its log's stem and folder; the browser's id is the path of both.
            folder = str(r.get("folder") or "").strip("/")
            name = str(r.get("drive", ""))
            d = drive_by_id(root, f"{folder}/{name}" if folder not in ("", ".") else name)
            t = float(r.get("t") or 0.0)
            out.append(
                {
                    "drive": d.id if d is not None else r.get("drive"),
                    "t": t,
                    "frame": r.get("frame"),
                    "text": masked(str(r.get("text", ""))),
                    "urgent": bool(r.get("urgent")),
                    "thumb": f"/api/thumb?drive={d.id}&t={t:.2f}" if d is not None else None,
                    "playable": d is not None,
                }
            )
        return out

    return web.json_response({"results": await _in_pool(request, work)})


def add_drive_routes(app: web.Application, root: Path) -> None:
    app[ROOT] = root
    app[POOL] = pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-drives")
    pool.submit(int).result()  # its thread starts now, not on the first request

    async def close_pool(app: web.Application) -> None:
        app[POOL].shutdown(wait=True)

    app.on_cleanup.append(close_pool)
    app.router.add_get("/api/drives", drives_handler)
    app.router.add_get("/api/captions", captions_handler)
    app.router.add_get("/api/thumb", thumb_handler)
    app.router.add_get("/api/search", search_handler)
    app.router.add_get("/files/{path:.+}", file_handler)
