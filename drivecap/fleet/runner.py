"""The fleet on Ray: one actor per worker holds the encoder and decoder; drives go to whichever is free.

- Models are loaded once per actor (``DriveWorker.__init__``), not per drive.
- An actor whose process dies is restarted by Ray (``max_restarts``) and its drive retried on it
  (``max_task_retries``): the retry writes a fresh temp folder, so the published folder is always whole.
- A drive that fails by itself (corrupt file, unreadable) is a result, not an exception: the worker returns
  its one-line reason and goes on with the next drive; nothing about it is retried (it would fail again).
- CPU workers run ONNX Runtime; on a cluster with GPUs each actor asks for one GPU and runs TensorRT.
- Progress: workers post (frames done, frames declared, pid) per drive to a small board actor; the driver
  polls it between ``ray.wait`` calls for its tqdm bars (drives and frames).

Only this module imports Ray (the actors' own code is :mod:`drivecap.fleet.worker`), and only the ``fleet`` command imports this module.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivecap.config import Config
from drivecap.fleet.drives import DriveTask, FleetError, clear_failed, config_hash, is_done, write_failed
from drivecap.fleet.worker import DriveResult, DriveWorker, ProgressBoard

log = logging.getLogger(__name__)

MAX_RESTARTS = 3  # per actor: a process killed (OOM killer, node lost) is restarted this many times


@dataclass
class FleetReport:
    results: list[DriveResult] = field(default_factory=list)
    wall_s: float = 0.0
    workers: int = 0
    gpus_per_worker: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def frames(self) -> int:
        return sum(r.frames for r in self.results if r.status == "ok")

    def as_dict(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "gpus_per_worker": self.gpus_per_worker,
            "wall_s": round(self.wall_s, 3),
            "frames": self.frames,
            "fps": round(self.frames / self.wall_s, 3) if self.wall_s > 0 else 0.0,
            "ok": self.count("ok"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "drives": [r.__dict__ for r in self.results],
        }


def actor_plan(resources: dict[str, float], workers: int | None) -> tuple[int, dict[str, Any]]:
    """(number of actors, Ray actor options) for a cluster with these ``ray.cluster_resources()``.

    GPUs present: one actor per GPU (capped by ``workers``), each ``num_gpus=1`` and one CPU for decoding
    video; else one CPU per actor, as many as there are CPUs (or ``workers``)."""
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 0))
    if gpus >= 1:
        n = min(workers or gpus, gpus)
        return n, {"num_cpus": 1, "num_gpus": 1}
    n = workers or max(1, cpus)
    return n, {"num_cpus": 1}


def worker_config(cfg: Config, gpu: bool) -> Config:
    """The config an actor runs: TensorRT on a GPU actor (unless another GPU backend was chosen)."""
    out = copy.deepcopy(cfg)
    if gpu and out.encoder.backend in ("auto", "onnxruntime"):
        out.encoder.backend = "tensorrt"
    return out


def _actor_error(exc: BaseException) -> str:
    """The first line of what a dead actor or failed task said, without Ray's long preamble."""
    text = str(getattr(exc, "cause", None) or exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln:
            return ln[:500]
    return (lines[-1] if lines else exc.__class__.__name__)[:500]


class FleetRunner:
    """Replays tasks on the Ray that is initialised (the caller owns ``ray.init``/``ray.shutdown``)."""

    def __init__(
        self,
        cfg: Config,
        out: Path,
        *,
        workers: int | None = None,
        run_id: str | None = None,
        progress: bool = True,
        on_poll: Callable[[FleetRunner], None] | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.cfg = cfg
        self.out = out
        self.workers = workers
        self.run_id = run_id or f"{os.getpid()}{int(time.time()) % 100000}"
        self.progress = progress
        self.on_poll = on_poll  # called between waits (tests use it to kill a worker mid-drive)
        self.poll_s = poll_s  # longest wait for a finished drive before the progress bars and on_poll
        self.cfg_hash = config_hash(cfg)
        self.actors: list[Any] = []
        self.board: Any = None
        self.model_hashes: set[str] = set()
        self._cfg_ref: Any = None

    def board_state(self) -> dict[str, tuple[int, int | None, int]]:
        import ray

        return dict(ray.get(self.board.snapshot.remote())) if self.board is not None else {}

    def _start_actors(self) -> dict[str, Any]:
        import ray

        n, opts = actor_plan(ray.cluster_resources(), self.workers)
        gpu = bool(opts.get("num_gpus"))
        wcfg = worker_config(self.cfg, gpu)
        if not gpu and self.cfg.encoder.threads == 0 and n > 1:
            log.warning(
                "%d workers with encoder.threads=0 (all cores each) oversubscribe the CPUs: "
                "add --set encoder.threads=1 (or cores per worker)",
                n,
            )
        board_cls = ray.remote(num_cpus=0)(ProgressBoard)
        self.board = board_cls.remote()
        worker_cls = ray.remote(DriveWorker).options(
            max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS, **opts
        )
        # The driver keeps this reference for the whole run: a restarted actor is built from it again.
        self._cfg_ref = ray.put(wcfg)
        self.actors = [worker_cls.remote(self._cfg_ref, self.board) for _ in range(n)]
        try:
            self.model_hashes = set(ray.get([a.model_hash.remote() for a in self.actors]))
        except Exception as exc:
            raise FleetError(f"a fleet worker could not load the models: {_actor_error(exc)}") from None
        log.info("%d fleet workers ready (%s)", n, opts)
        return opts

    def run(self, tasks: list[DriveTask]) -> FleetReport:
        import ray
        from tqdm import tqdm

        t0 = time.monotonic()
        try:
            opts = self._start_actors()
        except BaseException:
            self.stop()
            raise
        report = FleetReport(workers=len(self.actors), gpus_per_worker=float(opts.get("num_gpus", 0)))
        todo: list[DriveTask] = []
        for t in tasks:
            if is_done(self.out, t, self.cfg_hash, self.model_hashes):
                report.results.append(
                    DriveResult(t.name, "skipped", "already done (same input, config, model)")
                )
            else:
                todo.append(t)
        bar_d = tqdm(
            total=len(tasks), unit="drive", desc="drives", disable=not self.progress or None, position=0
        )
        bar_f = tqdm(total=0, unit="frame", desc="frames", disable=not self.progress or None, position=1)
        bar_d.update(len(tasks) - len(todo))
        idle = list(range(len(self.actors)))
        inflight: dict[Any, tuple[DriveTask, int]] = {}
        pending = list(todo)
        try:
            while pending or inflight:
                while idle and pending:
                    task, ai = pending.pop(0), idle.pop(0)
                    ref = self.actors[ai].replay.remote(task, str(self.out), self.run_id, self.cfg_hash)
                    inflight[ref] = (task, ai)
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=self.poll_s)
                for ref in ready:
                    task, ai = inflight.pop(ref)
                    idle.append(ai)
                    res = self._result(ref, task)
                    report.results.append(res)
                    self._record(task, res)
                    bar_d.update(1)
                self._update_frames(bar_f)
                if self.on_poll is not None:
                    self.on_poll(self)
        finally:
            bar_d.close()
            bar_f.close()
            self.stop()
        report.wall_s = time.monotonic() - t0
        order = {t.name: i for i, t in enumerate(tasks)}
        report.results.sort(key=lambda r: order.get(r.name, 0))
        return report

    def stop(self) -> None:
        """Ends this run's actors (on a shared cluster their CPUs/GPUs go back at once)."""
        import ray

        for a in [*self.actors, self.board]:
            if a is not None:
                ray.kill(a, no_restart=True)
        self.actors, self.board = [], None

    def _result(self, ref: Any, task: DriveTask) -> DriveResult:
        import ray

        try:
            res: DriveResult = ray.get(ref)
            return res
        except ray.exceptions.RayActorError as exc:
            return DriveResult(
                task.name, "failed", f"worker died {MAX_RESTARTS + 1} times: {_actor_error(exc)}"
            )
        except ray.exceptions.RayError as exc:
            return DriveResult(task.name, "failed", _actor_error(exc))

    def _record(self, task: DriveTask, res: DriveResult) -> None:
        model = next(iter(sorted(self.model_hashes)), "")
        if res.status == "failed":
            write_failed(self.out, task, res.reason, self.cfg_hash, model)
        else:
            clear_failed(self.out, task.name)

    def _update_frames(self, bar: Any) -> None:
        if bar.disable:
            return
        state = self.board_state().values()
        bar.total = sum(int(total or done) for done, total, _ in state)
        bar.n = sum(done for done, _, _ in state)
        bar.refresh()


def init_ray(address: str | None, workers: int | None) -> None:
    """A local Ray with ``workers`` CPUs (default: all), or the cluster at ``address`` (checked first)."""
    import ray

    from drivecap.fleet.drives import check_address

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": True,
        "logging_level": logging.WARNING,
    }
    if address:
        if address != "auto":
            check_address(address)
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=workers or os.cpu_count() or 1, **kwargs)
