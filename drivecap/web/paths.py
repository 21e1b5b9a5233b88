"""Which files under OUT_DIR the drive browser may serve, and which drives are there.

:func:`safe_file` is the one gate every served path goes through: the request path (already percent-decoded
once by aiohttp) must be plain relative parts, no ``..``, no hidden names, no back-slashes or NULs, a
known suffix, and the file it resolves to (symlinks followed) must still lie inside the resolved OUT_DIR.
A symlink pointing outside, ``%2e%2e`` decoded or not, ``..%2f`` and absolute paths all end here.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SERVED_SUFFIXES = frozenset({".mp4", ".vtt", ".srt", ".jsonl", ".json", ".jpg", ".png"})
MAX_DEPTH = 4  # OUT_DIR/fleet/<date>/<drive>/ is as deep as the project's own commands write


def safe_file(root: Path, rel: str) -> Path | None:
    """The file ``rel`` names under ``root``, or None when it is not one the server may serve."""
    if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/") or len(rel) > 1024:
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") or "%" in p for p in parts):
        return None  # "%": a second round of percent-decoding is never done, so refuse what would need it
    base = root.resolve()
    try:
        path = (base / Path(*parts)).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    if path.suffix.lower() not in SERVED_SUFFIXES:
        return None
    return path


@dataclass(frozen=True)
class Drive:
    """A recording: ``<stem>.mp4`` with its ``.vtt`` and ``.jsonl`` beside it. ``id`` is its path from OUT_DIR
    without the suffix (``fleet/a/project_video02``)."""

    id: str
    folder: Path
    stem: str

    def file(self, suffix: str) -> Path:
        return self.folder / f"{self.stem}{suffix}"

    def rel(self, suffix: str) -> str:
        return f"{self.id}{suffix}"


def find_drives(root: Path) -> list[Drive]:
    """Every drive under ``root`` (not following symlinked folders, not hidden ones), sorted by id."""
    base = root.resolve()
    out: list[Drive] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        here = Path(dirpath)
        depth = len(here.relative_to(base).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < MAX_DEPTH else []
        names = set(filenames)
        for fn in sorted(names):
            if not fn.endswith(".mp4") or fn.startswith("."):
                continue
            stem = fn[:-4]
            if f"{stem}.vtt" in names and f"{stem}.jsonl" in names:
                rel = here.relative_to(base) / stem
                out.append(Drive(rel.as_posix(), here, stem))
    return sorted(out, key=lambda d: d.id)


def drive_by_id(root: Path, drive_id: str) -> Drive | None:
    """The drive ``drive_id`` names, through the same gate as any served file."""
    mp4 = safe_file(root, f"{drive_id}.mp4")
    if mp4 is None:
        return None
    d = Drive(drive_id, mp4.parent, mp4.name[:-4])
    return d if d.file(".vtt").is_file() and d.file(".jsonl").is_file() else None


def read_events(
    path: Path, limit: int = 100_000
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(start event, caption events, end event) of a JSONL event log; lines that do not parse are skipped
    (a log cut by a power failure ends in half a line)."""
    start: dict[str, Any] = {}
    end: dict[str, Any] = {}
    captions: list[dict[str, Any]] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f):
            if n >= limit:
                break
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            kind = ev.get("event")
            if kind == "caption":
                captions.append(ev)
            elif kind == "start":
                start = ev
            elif kind == "end":
                end = ev
    return start, captions, end
