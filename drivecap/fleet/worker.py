"""The fleet's Ray actors: a worker that holds the models and replays drives, and the progress board.

Plain classes: :mod:`drivecap.fleet.runner` makes them Ray actors (``ray.remote``), so this module does not
import Ray and its logic can be read and unit-tested without a cluster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivecap.config import Config
from drivecap.errors import DrivecapError
from drivecap.fleet import MANIFEST_NAME
from drivecap.fleet.drives import DriveTask, file_sha256, manifest, publish, temp_folder

log = logging.getLogger(__name__)

PROGRESS_EVERY = 10  # frames between progress posts (each one is a small Ray call)


@dataclass
class DriveResult:
    name: str
    status: str  # ok | failed | skipped
    reason: str = ""
    frames: int = 0
    captions: int = 0
    wall_s: float = 0.0
    pid: int = 0


class ProgressBoard:
    """Per drive: (frames done, frames declared, worker pid). A Ray actor; plain methods, no locks needed
    (an actor runs one call at a time)."""

    def __init__(self) -> None:
        self.state: dict[str, tuple[int, int | None, int]] = {}

    def post(self, name: str, done: int, total: int | None, pid: int) -> None:
        self.state[name] = (done, total, pid)

    def snapshot(self) -> dict[str, tuple[int, int | None, int]]:
        return dict(self.state)


class DriveWorker:
    """A Ray actor: loads the models once, then replays drive after drive into atomic folders."""

    def __init__(self, cfg: Config, board: Any) -> None:
        from drivecap.pipeline.inference import load_models

        self.cfg = cfg
        self.board = board
        self.enc, self.captioner = load_models(cfg)
        bundle_dir = getattr(getattr(self.captioner, "bundle", None), "folder", None)
        parts = [str(getattr(self.enc, "onnx_sha256", "")), self.enc.describe().split(" threads=")[0]]
        path = getattr(self.enc, "path", None)
        if path is not None and Path(path).is_file():
            parts.append(file_sha256(path))
        if bundle_dir is not None and (Path(bundle_dir) / "bundle.json").is_file():
            parts.append(file_sha256(Path(bundle_dir) / "bundle.json"))
        self._model_hash = hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def model_hash(self) -> str:
        return self._model_hash

    def pid(self) -> int:
        return os.getpid()

    def replay(self, task: DriveTask, out: str, run_id: str, cfg_hash: str) -> DriveResult:
        from drivecap.fsutil import atomic_write_bytes
        from drivecap.pipeline.replay import replay_file

        out_dir = Path(out)
        tmp = temp_folder(out_dir, task.name, run_id)
        pid = os.getpid()
        t0 = time.monotonic()
        done = 0
        declared: int | None = None

        def on_total(total: int | None) -> None:
            nonlocal declared
            declared = total
            self.board.post.remote(task.name, 0, total, pid)

        def on_frame(n: int) -> None:
            nonlocal done
            done += n
            if done % PROGRESS_EVERY == 0:
                self.board.post.remote(task.name, done, declared, pid)

        try:
            summary = replay_file(
                self.cfg,
                self.enc,
                self.captioner,
                task.source,
                tmp,
                task.name,
                on_total=on_total,
                on_frame=on_frame,
                handle_signals=False,
            )
            if summary.frames_out == 0:
                raise DrivecapError(f"{task.source}: no frame could be decoded; the file is empty or corrupt")
            rec = manifest(
                task,
                cfg_hash,
                self._model_hash,
                status="ok",
                frames=summary.frames_out,
                captions=summary.captions,
            )
            atomic_write_bytes(tmp / MANIFEST_NAME, (json.dumps(rec, indent=1) + "\n").encode())
            publish(tmp, out_dir / task.name)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            reason = str(exc) if isinstance(exc, DrivecapError) else f"{exc.__class__.__name__}: {exc}"
            log.warning("drive %s failed: %s", task.name, reason, exc_info=not isinstance(exc, DrivecapError))
            self.board.post.remote(task.name, done, declared, pid)
            return DriveResult(
                task.name, "failed", reason.splitlines()[0][:500], wall_s=time.monotonic() - t0, pid=pid
            )
        self.board.post.remote(task.name, summary.frames_out, summary.frames_out, pid)
        return DriveResult(
            task.name,
            "ok",
            frames=summary.frames_out,
            captions=summary.captions,
            wall_s=time.monotonic() - t0,
            pid=pid,
        )
