"""What a fleet run works on, without Ray: finding drives, naming them, hashing, and publishing folders.

A drive's folder ``OUT/<drive>/`` is written as ``OUT/.tmp-<drive>-<run>-<n>/`` and renamed into place when
complete, so a folder under its own name is always a finished replay. Its manifest (``.drive.json``) records
the input's sha256 and the config and model hashes: a later run with the same three skips the drive.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from drivecap.config import Config, to_dict
from drivecap.errors import DrivecapError
from drivecap.fleet import FAILED_DIR, MANIFEST_NAME
from drivecap.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

#: Files a folder argument contributes (a folder of drives; image folders are given one by one).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".ts", ".mpg", ".mpeg"})
TMP_PREFIX = ".tmp-"


class FleetError(DrivecapError):
    """Bad fleet input: sources that match nothing, an output that is not a folder, no cluster there."""


@dataclass(frozen=True)
class DriveTask:
    """One drive to replay: its name (its folder under OUT), the input, the input's hash and mtime."""

    name: str
    source: str
    sha256: str
    recorded: float


def find_drives(sources: list[str]) -> list[Path]:
    """Files, folders of drives (their video files, sorted) and glob patterns, in the order given, no repeats.

    A pattern or a path that gives no drive at all is an error naming it: a typo must not make an empty run.
    """
    seen: set[Path] = set()
    out: list[Path] = []
    for spec in sources:
        expanded = os.path.expanduser(spec)
        matches = sorted(glob.glob(expanded, recursive=True)) if glob.has_magic(expanded) else [expanded]
        found: list[Path] = []
        for m in matches:
            p = Path(m)
            if p.is_dir():
                found += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
            elif p.is_file():
                found.append(p)
        if not found:
            what = "pattern" if glob.has_magic(expanded) else "path"
            raise FleetError(
                f"source {what} {spec!r} matches no drive (a video file, or a folder holding "
                f"{'/'.join(sorted(s[1:] for s in VIDEO_SUFFIXES))} files); check the path"
            )
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(key)
    return out


def drive_names(paths: list[Path]) -> list[str]:
    """The folder name of each drive: what ``drivecap replay`` names its files, made unique with -2, -3..."""
    from drivecap.pipeline.runner import safe_name

    names: list[str] = []
    used: set[str] = set()
    for p in paths:
        base = safe_name(p.stem, "drive")
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        names.append(name)
    return names


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_tasks(paths: list[Path]) -> list[DriveTask]:
    tasks = []
    for p, name in zip(paths, drive_names(paths), strict=True):
        try:
            sha, mtime = file_sha256(p), p.stat().st_mtime
        except OSError as exc:  # unreadable: the worker will record the reason, with the others finishing
            log.debug("cannot hash %s: %s", p, exc)
            sha, mtime = "", 0.0
        tasks.append(DriveTask(name, str(p), sha, mtime))
    return tasks


def config_hash(cfg: Config) -> str:
    """Hash of every knob that can change a replay's output (paths only say where things are)."""
    data = {k: v for k, v in to_dict(cfg).items() if k != "paths"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def check_out_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise FleetError(f"--out {out} is a file, not a folder; choose a folder for the drives' outputs")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FleetError(
            f"cannot create --out folder {out} ({exc.strerror or exc}); choose another"
        ) from None
    return out


def check_address(address: str, timeout_s: float = 3.0) -> None:
    """Fails fast (one line) when nothing listens at a ``host:port`` cluster address.

    ``ray.init(address=...)`` to a port where no GCS runs retries for a minute or more before it gives up;
    a TCP connect answers in milliseconds. ``auto`` (and anything without a port) is left to Ray.
    """
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except OSError as exc:
        raise FleetError(
            f"no Ray cluster at --address {address} ({exc.strerror or exc}); start one with `ray start --head` "
            "or leave --address out to run a local Ray"
        ) from None


def is_done(out: Path, task: DriveTask, cfg_hash: str, model_hashes: set[str]) -> bool:
    """Whether ``OUT/<drive>`` is a finished replay of this very input, config and model."""
    man = out / task.name / MANIFEST_NAME
    try:
        rec = json.loads(man.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        bool(task.sha256)
        and rec.get("status") == "ok"
        and rec.get("sha256") == task.sha256
        and rec.get("config_hash") == cfg_hash
        and rec.get("model_hash") in model_hashes
        and (out / task.name / f"{task.name}.jsonl").is_file()
    )


def manifest(task: DriveTask, cfg_hash: str, model_hash: str, **extra: Any) -> dict[str, Any]:
    rec = {"drive": task.name, **asdict(task), "config_hash": cfg_hash, "model_hash": model_hash}
    rec.update(extra)
    return rec


def temp_folder(out: Path, name: str, run_id: str) -> Path:
    return out / f"{TMP_PREFIX}{name}-{run_id}-{uuid.uuid4().hex[:8]}"


def publish(tmp: Path, dest: Path) -> None:
    """Puts the finished folder ``tmp`` at ``dest`` in one rename (an old ``dest`` is moved aside first)."""
    old: Path | None = None
    if dest.exists():
        old = dest.with_name(f"{TMP_PREFIX}old-{dest.name}-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_temp_folders(out: Path) -> int:
    """Removes what killed or interrupted runs left (the caller holds the OUT lock: nobody else writes)."""
    n = 0
    for p in out.glob(f"{TMP_PREFIX}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n


def write_failed(out: Path, task: DriveTask, reason: str, cfg_hash: str, model_hash: str) -> None:
    rec = manifest(task, cfg_hash, model_hash, status="failed", reason=reason)
    atomic_write_bytes(out / FAILED_DIR / f"{task.name}.json", (json.dumps(rec, indent=1) + "\n").encode())


def clear_failed(out: Path, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (out / FAILED_DIR / f"{name}.json").unlink()


@contextlib.contextmanager
def out_lock(out: Path) -> Any:
    """One fleet run per OUT at a time (it removes temp folders it finds, which another run may be filling)."""
    import fcntl

    f = open(out / ".fleet.lock", "a+")  # noqa: SIM115 (held for the whole run)
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FleetError(
                f"another `drivecap fleet` is writing into {out}; wait for it to finish"
            ) from None
        yield
    finally:
        f.close()
