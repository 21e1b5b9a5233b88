"""``OUT/index.sqlite``: every caption of every replayed drive, its facts and its text, searchable.

Built from what replays leave on disk, never from a live run, so ``drivecap index`` can (re)build it for any
folder of replays (fleet or single ``drivecap replay`` outputs): each ``<name>.jsonl`` event log with a
``start`` event is one drive. The fleet runner's manifest beside a log (``.drive.json``) adds the source path
and the input, config and model hashes; drives that failed are read from ``OUT/.failed/*.json``.

Tables (standard library sqlite3, WAL so a reader never blocks the next rebuild's writer):

- ``drives``: name, folder, source path, sha256, duration, frames, model and config hashes, status, reason,
  ``recorded`` (the source file's mtime, else the log's: "newest drives first" sorts on it).
- ``captions``: drive, caption number, time, frame, text, urgent, thumbnail path (relative to OUT).
- ``facts``: per caption what the grammar's parser reads from its text (kind, family, place, distance,
  colour) and ``fact_keys`` the flat keys of :mod:`drivecap.captions.facts` (``person:ahead:close``).
- ``captions_fts``: an FTS5 index over caption text (external content: the text is stored once).

A rebuild writes a new database beside the old one and renames it into place: a reader sees the old index
or the new one, never a half-built one. Logs are streamed line by line and committed per drive, so memory
stays flat however many drives there are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivecap.captions.facts import family
from drivecap.captions.grammar import parse
from drivecap.errors import DrivecapError
from drivecap.fleet import FAILED_DIR, INDEX_NAME, MANIFEST_NAME
from drivecap.outputs.thumbnails import THUMBS_SUFFIX, thumbnail_path

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE drives (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    folder TEXT NOT NULL,            -- relative to the indexed folder ('' for failed drives)
    source TEXT,                     -- the input file, when known (fleet manifest)
    sha256 TEXT,
    duration_s REAL,
    frames INTEGER,
    captions INTEGER NOT NULL DEFAULT 0,
    model_hash TEXT,
    config_hash TEXT,
    status TEXT NOT NULL,            -- ok | failed
    reason TEXT,
    recorded REAL NOT NULL           -- unix time: source mtime, else the log's
);
CREATE UNIQUE INDEX drives_folder_name ON drives (folder, name);
CREATE INDEX drives_recorded ON drives (recorded);
CREATE TABLE captions (
    id INTEGER PRIMARY KEY,
    drive_id INTEGER NOT NULL REFERENCES drives (id),
    number INTEGER NOT NULL,         -- the caption's id in its event log
    t REAL NOT NULL,
    frame INTEGER NOT NULL,
    text TEXT NOT NULL,
    urgent INTEGER NOT NULL,
    thumbnail TEXT                   -- relative to the indexed folder, NULL when none was written
);
CREATE INDEX captions_drive ON captions (drive_id, t);
CREATE INDEX captions_urgent ON captions (urgent);
CREATE TABLE facts (
    caption_id INTEGER NOT NULL REFERENCES captions (id),
    kind TEXT NOT NULL,
    family TEXT NOT NULL,
    place TEXT NOT NULL,
    distance TEXT NOT NULL,
    colour TEXT NOT NULL
);
CREATE INDEX facts_caption ON facts (caption_id);
CREATE TABLE fact_keys (caption_id INTEGER NOT NULL REFERENCES captions (id), key TEXT NOT NULL);
CREATE INDEX fact_keys_key ON fact_keys (key, caption_id);
CREATE VIRTUAL TABLE captions_fts USING fts5 (text, content='captions', content_rowid='id');
"""


class IndexBuildError(DrivecapError):
    """The folder to index does not exist, or the index cannot be written."""


@dataclass
class IndexStats:
    drives: int = 0
    failed: int = 0
    captions: int = 0
    skipped_logs: int = 0


def index_path(out_dir: str | os.PathLike[str]) -> Path:
    return Path(out_dir) / INDEX_NAME


def _event_logs(root: Path) -> Iterator[Path]:
    """Every ``*.jsonl`` under ``root`` outside hidden folders (temp folders of a running fleet)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.endswith(THUMBS_SUFFIX))
        for f in sorted(filenames):
            if f.endswith(".jsonl") and not f.startswith("."):
                yield Path(dirpath) / f


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s (%s)", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _first_event(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            ev = json.loads(f.readline() or "null")
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return ev if isinstance(ev, dict) and ev.get("event") == "start" else None


def build_index(out_dir: str | os.PathLike[str]) -> Path:
    """(Re)builds ``out_dir/index.sqlite`` from the replays under ``out_dir``; returns its path."""
    return build_index_stats(out_dir)[0]


def build_index_stats(out_dir: str | os.PathLike[str]) -> tuple[Path, IndexStats]:
    root = Path(out_dir)
    if not root.is_dir():
        raise IndexBuildError(
            f"{root} is not a folder of replays; give the --out folder of a fleet or replay run"
        )
    final = index_path(root)
    tmp = root / f".{INDEX_NAME}.{os.getpid()}.tmp"
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    stats = IndexStats()
    try:
        con = sqlite3.connect(tmp)
    except sqlite3.Error as exc:
        raise IndexBuildError(f"cannot write the index in {root} ({exc}); choose a writable folder") from None
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(SCHEMA)
        con.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        for path in _event_logs(root):
            start = _first_event(path)
            if start is None:
                stats.skipped_logs += 1
                continue
            _add_drive(con, root, path, start, stats)
            con.commit()
        _add_failed(con, root, stats)
        con.execute("INSERT INTO captions_fts (captions_fts) VALUES ('optimize')")
        con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        con.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise IndexBuildError(
            f"cannot write the index {final} ({exc}); free some space or check the folder"
        ) from None
    except BaseException:
        con.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    con.close()  # the last connection's close removes the -wal and -shm files
    os.replace(tmp, final)
    # A reader of the old file may have left its -wal/-shm: they belong to the old database, not this one.
    for stale in (Path(f"{final}-wal"), Path(f"{final}-shm")):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    log.info(
        "indexed %d drives (%d failed), %d captions into %s",
        stats.drives,
        stats.failed,
        stats.captions,
        final,
    )
    return final, stats


def _rel(root: Path, path: Path) -> str:
    rel = os.path.relpath(path, root)
    return "" if rel == "." else rel


def _add_drive(
    con: sqlite3.Connection, root: Path, path: Path, start: dict[str, Any], stats: IndexStats
) -> None:
    folder = path.parent
    name = path.stem
    manifest = _read_json(folder / MANIFEST_NAME) if (folder / MANIFEST_NAME).is_file() else None
    if manifest is not None and manifest.get("drive") != name:
        manifest = None  # a manifest describes one log of its folder; a second log there is a plain replay
    src = manifest.get("source") if manifest else None
    recorded = manifest.get("recorded") if manifest else None
    if not isinstance(recorded, (int, float)):
        recorded = path.stat().st_mtime
    cur = con.execute(
        "INSERT INTO drives (name, folder, source, sha256, model_hash, config_hash, status, recorded) "
        "VALUES (?, ?, ?, ?, ?, ?, 'ok', ?)",
        (
            name,
            _rel(root, folder),
            src,
            manifest.get("sha256") if manifest else None,
            manifest.get("model_hash") if manifest else None,
            manifest.get("config_hash") if manifest else None,
            float(recorded),
        ),
    )
    drive_id = cur.lastrowid
    fps = float(start.get("fps") or 0.0)
    frames: int | None = None
    n = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if '"caption"' not in line and '"end"' not in line:
                continue  # gate and speech events are most of the log; skip them before parsing
            try:
                ev = json.loads(line)
            except ValueError:
                break  # a log cut by a crash: keep what came before the broken line
            kind = ev.get("event")
            if kind == "caption":
                _add_caption(con, root, folder, name, drive_id, ev)
                n += 1
            elif kind == "end":
                frames = int(ev.get("frames_out") or 0)
    duration = frames / fps if frames is not None and fps > 0 else None
    con.execute(
        "UPDATE drives SET frames = ?, duration_s = ?, captions = ? WHERE id = ?",
        (frames, duration, n, drive_id),
    )
    stats.drives += 1
    stats.captions += n


def _add_caption(
    con: sqlite3.Connection, root: Path, folder: Path, name: str, drive_id: int | None, ev: dict[str, Any]
) -> None:
    text = str(ev.get("text", ""))
    number = int(ev.get("id") or 0)
    thumb = thumbnail_path(folder, name, number)
    cur = con.execute(
        "INSERT INTO captions (drive_id, number, t, frame, text, urgent, thumbnail) VALUES (?,?,?,?,?,?,?)",
        (
            drive_id,
            number,
            float(ev.get("t") or 0.0),
            int(ev.get("frame") or 0),
            text,
            int(bool(ev.get("urgent"))),
            _rel(root, thumb) if thumb.is_file() else None,
        ),
    )
    cid = cur.lastrowid
    con.execute("INSERT INTO captions_fts (rowid, text) VALUES (?, ?)", (cid, text))
    try:
        facts = parse(text)
    except Exception:  # a decoder may emit word salad: the caption is still searchable by its text
        log.debug("caption %r does not parse", text, exc_info=True)
        return
    con.executemany(
        "INSERT INTO facts VALUES (?, ?, ?, ?, ?, ?)",
        [(cid, o.kind, family(o.kind), o.place, o.distance, o.colour) for o in facts.objects],
    )
    con.executemany("INSERT INTO fact_keys VALUES (?, ?)", [(cid, k) for k in sorted(facts.keys)])


def _add_failed(con: sqlite3.Connection, root: Path, stats: IndexStats) -> None:
    folder = root / FAILED_DIR
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        rec = _read_json(path)
        if rec is None or not rec.get("drive"):
            continue
        con.execute(
            "INSERT OR REPLACE INTO drives (name, folder, source, sha256, model_hash, config_hash, status, "
            "reason, recorded) VALUES (?, '', ?, ?, ?, ?, 'failed', ?, ?)",
            (
                str(rec["drive"]),
                rec.get("source"),
                rec.get("sha256"),
                rec.get("model_hash"),
                rec.get("config_hash"),
                str(rec.get("reason", "")),
                float(rec.get("recorded") or path.stat().st_mtime),
            ),
        )
        stats.failed += 1
