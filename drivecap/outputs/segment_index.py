"""The segment index of a loop-recording folder (``index.json``) and the records it holds."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from drivecap.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

INDEX = "index.json"


@dataclass
class Segment:
    file: str
    start_utc: str
    t_start: float  # seconds from the run's start (the run's subtitle/event timeline)
    duration_s: float = 0.0
    bytes: int = 0
    locked: bool = False
    state: str = "recording"  # recording | complete | cut (write failed) | recovered (after a crash)
    run: str = ""


@dataclass
class RecoveryReport:
    dropped_entries: list[str] = field(default_factory=list)  # in the index, no file
    adopted: list[str] = field(default_factory=list)  # orphan files that decode, now indexed
    removed: list[str] = field(default_factory=list)  # orphan or killed files that do not decode
    recovered: list[str] = field(default_factory=list)  # segments a killed run left "recording"

    def lines(self) -> list[str]:
        return [
            f"{k}: {', '.join(v)}"
            for k, v in (
                ("index entries without a file, dropped", self.dropped_entries),
                ("orphan segments adopted", self.adopted),
                ("undecodable segments removed", self.removed),
                ("interrupted segments recovered", self.recovered),
            )
            if v
        ]


class SegmentIndex:
    """The JSON list of segments in a folder, rewritten atomically on every change."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / INDEX
        self.segments: list[Segment] = []

    def load(self) -> None:
        if not self.path.is_file():
            self.segments = []
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.segments = [Segment(**s) for s in data["segments"]]
        except (ValueError, KeyError, TypeError) as exc:
            # The index is rebuilt from the files themselves: nothing recorded is lost with it.
            log.warning("segment index %s is unreadable (%s); rebuilding it from the files", self.path, exc)
            self.segments = []

    def save(self) -> None:
        data = {"version": 1, "segments": [asdict(s) for s in self.segments]}
        atomic_write_bytes(self.path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))

    def get(self, file: str) -> Segment | None:
        return next((s for s in self.segments if s.file == file), None)

    def used_bytes(self) -> int:
        return sum(s.bytes for s in self.segments)


def file_size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def utc_from_name(name: str) -> str:
    try:
        return dt.datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC).isoformat()
    except ValueError:
        return ""


def check_folder(folder: str | os.PathLike[str]) -> tuple[set[str], set[str]]:
    """(files the index lists, MP4 files on disk): equal when the index matches the folder."""
    f = Path(folder)
    listed = set()
    if (f / INDEX).is_file():
        listed = {s["file"] for s in json.loads((f / INDEX).read_text(encoding="utf-8"))["segments"]}
    return listed, {p.name for p in f.glob("*.mp4")}
