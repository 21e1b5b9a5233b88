"""Latency benchmark of the real pipeline: per-stage and end-to-end percentiles, throughput, CPU, memory.

``drivecap bench SOURCE`` runs :class:`drivecap.pipeline.runner.Pipeline` (or, for ``--compare loop``, also the
naive loop of :mod:`drivecap.bench.naive`) on a clip, a file or a live source, and builds its figures from what
the run itself records:

* every stage sample comes from the pipeline's :class:`~drivecap.metrics.LatencyRecorder` (monotonic clock,
  stamped where the work starts and ends, never around a queue wait); :class:`TimedRecorder` only adds *when*
  each sample was recorded, so warm-up can be cut and the timeline drawn;
* counts (frames in, out, dropped, encoded, skipped) come from the run's :class:`RunSummary`;
* why frames were not captioned, and glass-to-speech per caption, come from the JSONL event log.

Comparisons run both sides in one process on the same source, alternating the order round by round
(A B, B A, ...) so that the machine's noise hits both. Ratios are always a/b.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import resource
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from drivecap.bench.figures import BenchPlan, BenchResult, RoundResult, Side, build_figures
from drivecap.errors import DrivecapError
from drivecap.metrics import LatencyRecorder, now
from drivecap.pipeline.sources import Source

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- recording


class TimedRecorder(LatencyRecorder):
    """A :class:`LatencyRecorder` that also keeps when each sample was recorded (monotonic seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self._tlock = threading.Lock()
        self._pairs: dict[str, list[tuple[float, float]]] = {}

    def record(self, stage: str, ms: float) -> None:
        t = now()
        super().record(stage, ms)
        with self._tlock:
            self._pairs.setdefault(stage, []).append((t, float(ms)))

    def pairs(self, stage: str) -> list[tuple[float, float]]:
        """(time recorded, milliseconds) for every sample of ``stage``, in recording order."""
        with self._tlock:
            return list(self._pairs.get(stage, ()))

    def all_pairs(self) -> dict[str, list[tuple[float, float]]]:
        with self._tlock:
            return {k: list(v) for k, v in self._pairs.items()}


class ResourceProbe:
    """Process CPU seconds (all threads, user + system) and peak resident memory over one run.

    The peak is reset before the run where Linux allows it (``/proc/self/clear_refs``), so a second run in
    the same process reports its own peak; otherwise it is the process's lifetime peak, and says so.
    """

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self.peak_rss_mb = math.nan
        self.peak_scope = "run"
        self._cpu0 = 0.0

    @staticmethod
    def _cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return float(r.ru_utime + r.ru_stime)

    def __enter__(self) -> ResourceProbe:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM (Linux >= 4.0)
        except OSError:
            self.peak_scope = "process"
        self._cpu0 = self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_s = self._cpu() - self._cpu0
        self.peak_rss_mb = _vm_hwm_mb()
        if math.isnan(self.peak_rss_mb):
            self.peak_scope = "process"
            # ru_maxrss is in KiB on Linux (bytes on macOS): the lifetime peak, not this run's.
            self.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _vm_hwm_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return math.nan


# --------------------------------------------------------------------------------------------- sources


class RepeatSource(Source):
    """A file source played ``times`` times in a row with increasing positions (more samples per run)."""

    def __init__(self, inner: Source, times: int) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.times = max(1, times)
        self._pass = 0
        self._offset = 0.0
        self._last = 0.0

    def open(self) -> None:
        self.inner.open()
        self.fps = self.inner.fps
        n = self.inner.frame_count
        self.frame_count = n * self.times if n else None
        self._pass = 0
        self._offset = 0.0
        self._last = 0.0

    def read(self) -> Any:
        item = self.inner.read()
        if item is None:
            self._pass += 1
            if self._pass >= self.times:
                return None
            self._offset += self._last + 1.0 / (self.fps or 25.0)
            self.inner.close()
            self.inner.open()
            item = self.inner.read()
            if item is None:
                return None
        img, t = item
        self._last = t
        return img, t + self._offset

    def close(self) -> None:
        self.inner.close()


def _read_events(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def run_pipeline(
    side: Side,
    source: Source,
    mode: str,
    out_dir: Path,
    *,
    warmup_s: float,
    max_seconds: float | None = None,
    stop: threading.Event | None = None,
    on_frame: Callable[[int], object] | None = None,
) -> RoundResult:
    """One run of the real pipeline; its outputs (video, subtitles, event log) go to ``out_dir``."""
    from drivecap.pipeline.core import Outputs
    from drivecap.pipeline.runner import Pipeline

    rec = TimedRecorder()
    name = "bench"
    pipe = Pipeline(
        side.cfg,
        side.encoder,
        side.captioner,
        Outputs(out_dir, name, window=False),
        mode=mode,
        max_seconds=max_seconds,
        metrics=rec,
        on_frame=on_frame,
    )
    watcher = _stop_watcher(stop, pipe.stop)
    with ResourceProbe() as probe:
        t0 = now()
        try:
            summary = pipe.run(source)
        finally:
            watcher.set()
        t1 = now()
    events = _read_events(out_dir / f"{name}.jsonl")
    res = RoundResult(
        side.label,
        "pipeline",
        mode,
        t0,
        t1,
        warmup_s,
        rec.all_pairs(),
        {
            "source_fps": summary.source_fps,
            "frames_in": summary.frames_in,
            "frames_out": summary.frames_out,
            "dropped": summary.dropped,
            "not_encoded": summary.not_encoded,
            "encoded": summary.encoded,
            "pregate_skipped": summary.pregate_skipped,
            "captions": summary.captions,
            "utterances": summary.utterances,
            "wall_s": summary.wall_s,
            "source_s": summary.source_s,
            "interrupted": summary.interrupted,
        },
        cpu_s=probe.cpu_s,
        peak_rss_mb=probe.peak_rss_mb,
        peak_scope=probe.peak_scope,
        encoder=side.encoder.describe(),
    )
    _add_event_facts(res, events)
    srt = out_dir / f"{name}.srt"
    if srt.is_file():
        from drivecap.bench.figures import merged_cues
        from drivecap.outputs.subtitles import parse_srt

        with contextlib.suppress(ValueError):  # a run cut short mid-cue still has its earlier cues
            res.cues = merged_cues(parse_srt(srt.read_text(encoding="utf-8")))
    return res


def _add_event_facts(res: RoundResult, events: list[dict[str, Any]]) -> None:
    """Gate reasons, captions and speech start per caption, from the run's event log."""
    reasons: Counter[str] = Counter()
    for e in events:
        if e.get("event") == "gate":
            reasons[str(e.get("reason", "?"))] += 1
    res.fates = dict(reasons)
    g2c = res.pairs.get("glass_to_caption", [])
    caps = [e for e in events if e.get("event") == "caption"]
    # One glass_to_caption sample is recorded per caption event, in the same order (the output loop
    # records it and writes the event together).
    shown_at: dict[int, tuple[float, float]] = {}
    for (t, ms), e in zip(g2c, caps, strict=False):
        shown_at[int(e["id"])] = (t, ms)
        res.captions.append((t, ms, str(e.get("text", ""))))
    for e in events:
        if e.get("event") != "speech":
            continue
        g2s = (e.get("wall") or {}).get("glass_to_speech_ms")
        shown = shown_at.get(int(e.get("caption", -1)))
        if g2s is None or shown is None:
            continue
        t_shown, g2c_ms = shown
        t_capture = t_shown - g2c_ms / 1e3
        res.speech.append((t_capture + float(g2s) / 1e3, float(g2s), float(g2s) - g2c_ms))


def run_naive(
    side: Side,
    source: Source,
    mode: str,
    out_dir: Path,
    *,
    warmup_s: float,
    max_seconds: float | None = None,
    stop: threading.Event | None = None,
    on_frame: Callable[[int], object] | None = None,
) -> RoundResult:
    """One run of the naive single-thread loop on the same kind of source."""
    from drivecap.bench.naive import NaiveLoop

    rec = TimedRecorder()
    loop = NaiveLoop(
        side.encoder,
        side.captioner,
        side.cfg.overlay,
        video_path=out_dir / "naive.mp4" if side.cfg.output.video else None,
        pace=mode != "offline",
        max_seconds=max_seconds,
        metrics=rec,
        on_frame=on_frame,
    )
    watcher = _stop_watcher(stop, loop.stop)
    with ResourceProbe() as probe:
        t0 = now()
        try:
            s = loop.run(source)
        finally:
            watcher.set()
        t1 = now()
    res = RoundResult(
        side.label,
        "naive",
        mode,
        t0,
        t1,
        warmup_s,
        rec.all_pairs(),
        {
            "source_fps": s.source_fps,
            "frames_in": s.frames_in,
            "frames_out": s.frames_out,
            "dropped": 0,
            "not_encoded": 0,
            "encoded": s.frames_out,
            "pregate_skipped": 0,
            "captions": s.captions,
            "utterances": 0,
            "wall_s": s.wall_s,
            "source_s": s.source_s,
            "interrupted": s.interrupted,
            "lag_first_ms": s.lag_first_ms,
            "lag_last_ms": s.lag_last_ms,
        },
        fates={"every_frame": s.frames_out},
        cpu_s=probe.cpu_s,
        peak_rss_mb=probe.peak_rss_mb,
        peak_scope=probe.peak_scope,
        encoder=side.encoder.describe(),
    )
    res.captions = [(t, ms, "") for t, ms in res.pairs.get("glass_to_caption", [])]
    return res


def _stop_watcher(stop: threading.Event | None, fn: Callable[[], None]) -> threading.Event:
    """Calls ``fn`` when ``stop`` is set (Ctrl-C); returns the event that ends the watch."""
    done = threading.Event()
    if stop is None:
        return done

    def watch() -> None:
        while not done.is_set():
            if stop.wait(0.1):
                fn()
                return

    threading.Thread(target=watch, name="bench-stop", daemon=True).start()
    return done


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from drivecap.encoders.factory import gpu_available

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "gpu": gpu_available(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
        "nice": os.nice(0) if hasattr(os, "nice") else 0,
    }


def run_bench(
    plan: BenchPlan,
    open_source: Callable[[], Source],
    work_dir: Path | None = None,
    stop: threading.Event | None = None,
    on_round: Callable[[str, int], Callable[[int], object] | None] | None = None,
) -> BenchResult:
    """Runs every side ``plan.rounds`` times, alternating the order (A B, B A, ...); returns the figures.

    ``on_round(label, round)`` is called before each run and may return a per-frame callback (progress).
    """
    machine = machine_info()
    rounds: dict[str, list[RoundResult]] = {s.label: [] for s in plan.sides}
    with _work_dir(work_dir) as base:
        for i in range(plan.rounds):
            order = plan.sides if i % 2 == 0 else list(reversed(plan.sides))
            for side in order:
                if stop is not None and stop.is_set():
                    break
                on_frame = on_round(side.label, i) if on_round else None
                out = base / f"{_slug(side.label)}-r{i + 1}"
                out.mkdir(parents=True, exist_ok=True)
                src = open_source()
                if plan.loops > 1 and not plan.live:
                    src = RepeatSource(src, plan.loops)
                runner = run_naive if side.kind == "naive" else run_pipeline
                res = runner(
                    side,
                    src,
                    plan.mode,
                    out,
                    warmup_s=plan.warmup_s,
                    max_seconds=plan.seconds,
                    stop=stop,
                    on_frame=on_frame,
                )
                rounds[side.label].append(res)
                log.info("%s round %d: %.1f s wall", side.label, i + 1, res.t1 - res.t0)
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else []
    done = {k: v for k, v in rounds.items() if v}
    if not done:
        raise DrivecapError("the benchmark was stopped before any run finished")
    figures = build_figures(plan, done, machine)
    return BenchResult(plan, done, figures, machine)


@contextlib.contextmanager
def _work_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="drivecap-bench-") as tmp:
        yield Path(tmp)


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label).strip("_") or "side"
