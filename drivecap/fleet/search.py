"""Queries over ``OUT/index.sqlite``: full text, facts, urgency, drive; newest drives first.

One function, :func:`search_captions`, serves ``drivecap search`` and the web drive browser, so both answer a
question the same way. The index is opened read-only: searching never changes it and works while a rebuild
is writing its replacement.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from typing import Any

from drivecap.captions.facts import ALL_KEYS, KINDS, PLACES
from drivecap.errors import DrivecapError
from drivecap.fleet import INDEX_NAME

_WORD = re.compile(r"[a-z]+")
_ONE_WORD_KINDS = tuple(k for k in KINDS if " " not in k)  # car, person...: "car:ahead" reads the kind


class SearchError(DrivecapError):
    """No index where one was asked for, or a query the index cannot answer (an unknown fact)."""


def resolve_index(db_path: str | os.PathLike[str]) -> Path:
    """The index file: ``db_path`` itself, or ``db_path/index.sqlite`` for an output folder."""
    p = Path(db_path)
    if p.is_dir():
        p = p / INDEX_NAME
    if not p.is_file():
        raise SearchError(f"no caption index at {p}: build it with `drivecap index {p.parent}`")
    return p


def _fact_clause(fact: str) -> tuple[str, list[Any]]:
    """SQL condition on ``c.id`` for a fact: a fact key (``person:ahead:close``, ``light:red``,
    ``road:curve left``) or a kind with a place (``car:ahead``, ``truck:left:close``)."""
    f = fact.strip().lower()
    if f in ALL_KEYS:
        return "c.id IN (SELECT caption_id FROM fact_keys WHERE key = ?)", [f]
    parts = f.split(":")
    if parts[0] in _ONE_WORD_KINDS and len(parts) in (2, 3) and parts[1] in PLACES:
        if len(parts) == 3 and parts[2] != "close":
            raise SearchError(f"fact {fact!r}: the third part can only be 'close'")
        sql = "c.id IN (SELECT caption_id FROM facts WHERE kind = ? AND place = ?"
        args: list[Any] = [parts[0], parts[1]]
        if len(parts) == 3:
            sql += " AND distance = 'close'"
        return sql + ")", args
    raise SearchError(
        f"unknown fact {fact!r}: use a fact key ({', '.join(ALL_KEYS[:4])}, ..., light:red, stopsign, "
        "road:curve left) or KIND:PLACE[:close] with a kind such as car or person"
    )


def _match_query(text: str) -> str:
    """An FTS5 query from free text: every word must occur (each quoted, so no word is FTS5 syntax)."""
    words = _WORD.findall(text.lower())
    if not words:
        raise SearchError(f"search text {text!r} has no words to look for")
    return " ".join(f'"{w}"' for w in words)


def search_captions(
    db_path: str | os.PathLike[str],
    text: str | None = None,
    fact: str | None = None,
    urgent: bool | None = None,
    drive: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Captions matching every condition given, newest drives first, in time order within a drive.

    ``text``: all its words occur in the caption; ``fact``: see :func:`_fact_clause`; ``urgent``: True for
    urgent captions only, False for the others; ``drive``: that drive's name. Each hit is a dict with
    ``drive``, ``t`` (s), ``frame``, ``text``, ``urgent``, ``thumbnail`` (a path relative to the index's
    folder, or None) and ``folder`` (the drive's folder relative to the index's folder).
    """
    if limit < 1:
        raise SearchError(f"limit {limit} is not allowed: use 1 or more")
    path = resolve_index(db_path)
    where = ["d.status = 'ok'"]
    args: list[Any] = []
    if text:
        where.append("c.id IN (SELECT rowid FROM captions_fts WHERE captions_fts MATCH ?)")
        args.append(_match_query(text))
    if fact:
        clause, fargs = _fact_clause(fact)
        where.append(clause)
        args += fargs
    if urgent is not None:
        where.append("c.urgent = ?")
        args.append(int(urgent))
    if drive:
        where.append("d.name = ?")
        args.append(drive)
    sql = (
        "SELECT d.name, c.t, c.frame, c.text, c.urgent, c.thumbnail, d.folder FROM captions c "
        "JOIN drives d ON d.id = c.drive_id WHERE " + " AND ".join(where) + " "
        "ORDER BY d.recorded DESC, d.id DESC, c.t ASC, c.id ASC LIMIT ?"
    )
    args.append(int(limit))
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise SearchError(f"cannot open the caption index {path} ({exc})") from None
    try:
        rows = con.execute(sql, args).fetchall()
    except sqlite3.DatabaseError as exc:
        raise SearchError(
            f"{path} is not a caption index this version reads ({exc}); rebuild it with "
            f"`drivecap index {path.parent}`"
        ) from None
    finally:
        con.close()
    return [
        {
            "drive": r[0],
            "t": r[1],
            "frame": r[2],
            "text": r[3],
            "urgent": bool(r[4]),
            "thumbnail": r[5],
            "folder": r[6],
        }
        for r in rows
    ]


def list_drives(db_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every drive of the index (failed ones too), newest first: name, status, reason, frames, captions."""
    path = resolve_index(db_path)
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT name, folder, status, reason, frames, duration_s, captions, sha256 FROM drives "
            "ORDER BY recorded DESC, id DESC"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise SearchError(
            f"{path} is not a caption index ({exc}); rebuild it with `drivecap index`"
        ) from None
    finally:
        con.close()
    keys = ("name", "folder", "status", "reason", "frames", "duration_s", "captions", "sha256")
    return [dict(zip(keys, r, strict=True)) for r in rows]
