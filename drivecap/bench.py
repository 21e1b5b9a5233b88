"""Latency benchmark of the real pipeline: per-stage and end-to-end percentiles, throughput, CPU, memory.

``drivecap bench SOURCE`` runs :class:`drivecap.pipeline.Pipeline` (or, for ``--compare loop``, also the
naive loop of :mod:`drivecap.naive`) on a clip, a file or a live source, and builds its figures from what
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
import copy
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivecap.capture import Source
from drivecap.config import Config
from drivecap.errors import BackendUnavailable, DrivecapError
from drivecap.metrics import LatencyRecorder, now, percentile

log = logging.getLogger(__name__)

#: Reported stage -> (recorder stage it is read from, what it covers). "encode" is the network alone:
#: preprocessing has its own row, so the two never count the same time twice.
STAGES: dict[str, tuple[str, str]] = {
    "capture": ("capture", "read and decode one frame from the source"),
    "pregate": ("pregate", "pixel pre-gate: grey thumbnail difference"),
    "preprocess": ("preprocess", "resize, mean subtraction, NCHW"),
    "encode": ("infer", "encoder network (VGG16 conv5)"),
    "gate": ("gate", "pooling + semantic gate decision"),
    "decode": ("decode", "LSTM caption decoder (only when the gate opens)"),
    "overlay": ("overlay", "caption box + HUD drawn on the frame"),
    "sink": ("write", "video file, subtitles, window"),
    "speech_start": ("", "caption shown -> speech started (from the event log)"),
}
END_TO_END: dict[str, str] = {
    "glass_to_caption": "frame captured -> first output frame carrying its caption",
    "glass_to_speech": "frame captured -> speech of its caption started",
}
COMPARES = ("loop", "precision", "gate", "backend")


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


def pct(values: list[float]) -> dict[str, float | int]:
    """p50/p95/p99/max/mean (ms) and the sample count; NaN figures for no samples."""
    nan = math.nan
    if not values:
        return {"p50_ms": nan, "p95_ms": nan, "p99_ms": nan, "max_ms": nan, "mean_ms": nan, "count": 0}
    return {
        "p50_ms": percentile(values, 50),
        "p95_ms": percentile(values, 95),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values),
        "mean_ms": sum(values) / len(values),
        "count": len(values),
    }


def rate(times: list[float]) -> float:
    """Events per second over the span of ``times`` ((n - 1) intervals); 0 for fewer than two."""
    if len(times) < 2:
        return 0.0
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else 0.0


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


# --------------------------------------------------------------------------------------------- one run


@dataclass
class Side:
    """One configuration being measured: the real pipeline or the naive loop, with its models."""

    label: str
    kind: str  # "pipeline" | "naive"
    cfg: Config
    encoder: Any
    captioner: Any


@dataclass
class RoundResult:
    """One run of one side: raw timed samples plus the run's counts."""

    label: str
    kind: str
    mode: str
    t0: float
    t1: float
    warmup_s: float
    pairs: dict[str, list[tuple[float, float]]]
    counts: dict[str, Any]
    fates: dict[str, int] = field(default_factory=dict)
    speech: list[tuple[float, float, float]] = field(default_factory=list)  # (t start, g2s ms, start ms)
    captions: list[tuple[float, float, str]] = field(default_factory=list)  # (t shown, g2c ms, text)
    cpu_s: float = 0.0
    peak_rss_mb: float = math.nan
    peak_scope: str = "run"
    encoder: str = ""

    @property
    def cut(self) -> float:
        """Samples recorded before this monotonic time are warm-up and left out of every figure."""
        return self.t0 + self.warmup_s

    def samples(self, stage: str) -> list[float]:
        return [ms for t, ms in self.pairs.get(stage, ()) if t >= self.cut]

    def times(self, stage: str) -> list[float]:
        return [t for t, _ in self.pairs.get(stage, ()) if t >= self.cut]


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
    from drivecap.pipeline import Outputs, Pipeline

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
    from drivecap.naive import NaiveLoop

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


# --------------------------------------------------------------------------------------------- figures


def side_figures(rounds: list[RoundResult]) -> dict[str, Any]:
    """The figures of one side over all its rounds (warm-up of each round cut), as plain JSON data."""
    stages: dict[str, dict[str, float | int]] = {}
    for name, (src, _) in STAGES.items():
        if name == "speech_start":
            vals = [start for r in rounds for t, _g, start in r.speech if t >= r.cut]
        else:
            vals = [ms for r in rounds for ms in r.samples(src)]
        if vals:
            stages[name] = pct(vals)
    g2c = [ms for r in rounds for ms in r.samples("glass_to_caption")]
    g2s = [g for r in rounds for t, g, _s in r.speech if t >= r.cut]

    def pooled_rate(stage: str) -> float:
        n = sum(max(0, len(r.times(stage)) - 1) for r in rounds)
        span = sum((max(ts) - min(ts)) for r in rounds if len(ts := r.times(stage)) >= 2)
        # No samples (offline replay reads frames inline, with no capture stage): unknown, not zero.
        return n / span if span > 0 else math.nan

    def total(key: str) -> int:
        return int(sum(int(r.counts.get(key, 0)) for r in rounds))

    wall = sum(r.t1 - r.t0 for r in rounds)
    cpu = sum(r.cpu_s for r in rounds)
    fates: Counter[str] = Counter()
    for r in rounds:
        fates.update(r.fates)
    first = rounds[0]
    out: dict[str, Any] = {
        "label": first.label,
        "kind": first.kind,
        "mode": first.mode,
        "encoder": first.encoder,
        "rounds": len(rounds),
        "warmup_s": first.warmup_s,
        "stages": stages,
        "glass_to_caption": pct(g2c),
        "glass_to_speech": pct(g2s),
        "source_fps": float(first.counts.get("source_fps", 0.0)),
        "fps_in": pooled_rate("capture"),
        "fps_out": pooled_rate("write"),
        "dropped": total("dropped"),
        "frames": {
            k: total(k)
            for k in (
                "frames_in",
                "frames_out",
                "encoded",
                "pregate_skipped",
                "not_encoded",
                "dropped",
                "captions",
                "utterances",
            )
        },
        "dropped_why": {
            "output_missed": total("dropped"),
            "not_encoded_encoder_busy": total("not_encoded"),
            "not_encoded_static_scene": total("pregate_skipped"),
        },
        "gate_reasons": dict(fates),
        "cpu": {"process_cpu_s": cpu, "cpu_percent": 100.0 * cpu / wall if wall > 0 else math.nan},
        "memory": {
            "peak_rss_mb": max(r.peak_rss_mb for r in rounds),
            "scope": "process" if any(r.peak_scope == "process" for r in rounds) else "run",
        },
        "wall_s": wall,
        "source_s": sum(float(r.counts.get("source_s", 0.0)) for r in rounds),
    }
    if first.kind == "naive":
        out["lag_last_ms"] = max(float(r.counts.get("lag_last_ms", 0.0)) for r in rounds)
    return out


def ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """a/b for the headline figures and every stage's p50 and p95 both sides have."""

    def div(x: float, y: float) -> float:
        if x is None or y is None or not y or math.isnan(x) or math.isnan(y):
            return math.nan
        return x / y

    r = {
        "glass_to_caption_p50": div(a["glass_to_caption"]["p50_ms"], b["glass_to_caption"]["p50_ms"]),
        "glass_to_caption_p95": div(a["glass_to_caption"]["p95_ms"], b["glass_to_caption"]["p95_ms"]),
        "fps_out": div(a["fps_out"], b["fps_out"]),
        "fps_in": div(a["fps_in"], b["fps_in"]),
        "cpu_percent": div(a["cpu"]["cpu_percent"], b["cpu"]["cpu_percent"]),
        "peak_rss_mb": div(a["memory"]["peak_rss_mb"], b["memory"]["peak_rss_mb"]),
    }
    for name in STAGES:
        sa, sb = a["stages"].get(name), b["stages"].get(name)
        if sa and sb:
            r[f"{name}_p50"] = div(sa["p50_ms"], sb["p50_ms"])
            r[f"{name}_p95"] = div(sa["p95_ms"], sb["p95_ms"])
    return r


# --------------------------------------------------------------------------------------------- the bench


@dataclass
class BenchPlan:
    """What to run: the source, mode, sides and how often."""

    source: str  # what the user asked for (clip name, path, URL)
    path: str  # what is opened
    mode: str  # realtime | offline | live
    live: bool
    sides: list[Side]
    rounds: int = 1
    loops: int = 1
    seconds: float | None = None
    warmup_s: float = 1.0
    compare: str | None = None


@dataclass
class BenchResult:
    plan: BenchPlan
    rounds: dict[str, list[RoundResult]]
    figures: dict[str, Any]
    machine: dict[str, Any]


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from drivecap.encoders import gpu_available

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "gpu": gpu_available(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
        "nice": os.nice(0) if hasattr(os, "nice") else 0,
    }


def make_sides(cfg: Config, compare: str | None) -> list[Side]:
    """Loads the models each side needs (once per distinct encoder) and builds the sides."""
    from drivecap.decoder import Captioner
    from drivecap.encoders import gpu_available, make_encoder

    if compare == "backend" and not gpu_available():
        raise BackendUnavailable(
            "--compare backend needs TensorRT and an NVIDIA GPU (none here); on a GPU machine run "
            "`drivecap bench SOURCE --compare backend`"
        )
    variants: list[tuple[str, str, Config]] = []
    if compare in (None, "loop"):
        variants.append(("drivecap pipeline", "pipeline", cfg))
        if compare == "loop":
            variants.append(("naive loop", "naive", cfg))
    elif compare == "precision":
        from drivecap.encoders import resolve_backend

        # On TensorRT the precision a car would otherwise run is fp16, not fp32.
        other = "fp16" if resolve_backend(cfg) == "tensorrt" else "fp32"
        for prec in ("int8", other):
            c = copy.deepcopy(cfg)
            c.encoder.precision = prec
            variants.append((f"pipeline {prec}", "pipeline", c))
    elif compare == "gate":
        for on in (True, False):
            c = copy.deepcopy(cfg)
            c.gate.enabled = on
            variants.append((f"gate {'on' if on else 'off'}", "pipeline", c))
    elif compare == "backend":
        for backend in ("tensorrt", "onnxruntime"):
            c = copy.deepcopy(cfg)
            c.encoder.backend = backend
            if backend == "onnxruntime" and c.encoder.precision == "fp16":
                c.encoder.precision = "fp32"
            variants.append((f"{backend} {c.encoder.precision}", "pipeline", c))
    else:
        raise DrivecapError(f"--compare {compare!r} is not known; use one of {', '.join(COMPARES)}")
    encoders: dict[tuple[str, str], Any] = {}
    sides: list[Side] = []
    captioner = None
    try:
        for label, kind, c in variants:
            key = (c.encoder.backend, c.encoder.precision)
            if key not in encoders:
                encoders[key] = make_encoder(c)
            enc = encoders[key]
            if captioner is None:
                captioner = Captioner.load(c, encoder_sha256=enc.onnx_sha256)
            sides.append(Side(label, kind, c, enc, captioner))
    except BaseException:
        for e in encoders.values():
            e.close()
        raise
    return sides


def close_sides(sides: list[Side]) -> None:
    seen: set[int] = set()
    for s in sides:
        if id(s.encoder) not in seen:
            seen.add(id(s.encoder))
            s.encoder.close()


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


def build_figures(
    plan: BenchPlan, rounds: dict[str, list[RoundResult]], machine: dict[str, Any]
) -> dict[str, Any]:
    """The one JSON object: the first side's figures at the top level, both sides and ratios under compare."""
    per_side = {label: side_figures(rs) for label, rs in rounds.items()}
    labels = [s.label for s in plan.sides if s.label in per_side]
    top: dict[str, Any] = dict(per_side[labels[0]])
    top.update(
        {
            "source": plan.source,
            "warmup": f"first {plan.warmup_s:g} s of every run left out of all figures; encoder warm-up "
            f"runs ({plan.sides[0].cfg.encoder.warmup_runs}) done before timing",
            "machine": machine,
            "loops": plan.loops,
            "seconds": plan.seconds,
        }
    )
    if plan.compare and len(labels) == 2:
        a, b = per_side[labels[0]], per_side[labels[1]]
        top["compare"] = {
            "what": plan.compare,
            "a": a,
            "b": b,
            "ratios": ratios(a, b),
            "order": "interleaved: round 1 a then b, round 2 b then a, ...",
        }
    return top


# --------------------------------------------------------------------------------------------- text


def _f(x: Any, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{nd}f}"


def table(fig: dict[str, Any]) -> list[str]:
    """The terminal table: per-stage and end-to-end percentiles, throughput, CPU, memory (and ratios)."""
    sides = [fig["compare"]["a"], fig["compare"]["b"]] if "compare" in fig else [fig]
    lines: list[str] = []
    lines.append(
        f"bench {fig['source']} ({fig['mode']}, {fig['rounds']} round(s) per side, x{fig['loops']} clip) "
        f"on {fig['machine']['cpus']} CPU(s), GPU: {'yes' if fig['machine']['gpu'] else 'no'}; "
        f"load avg {_f(fig['machine']['loadavg'][0] if fig['machine']['loadavg'] else None, 2)}"
    )
    lines.append(f"warm-up: {fig['warmup']}")
    head = f"{'stage (ms)':18s}"
    for s in sides:
        head += f" | {s['label'][:28]:>28s}"
    lines.append(head)
    lines.append(f"{'':18s}" + "".join(f" | {'p50':>6s} {'p95':>6s} {'p99':>6s} {'max':>7s}" for _ in sides))
    names = list(STAGES) + list(END_TO_END)
    for name in names:
        row = f"{name:18s}"
        any_data = False
        for s in sides:
            st = s["stages"].get(name) if name in STAGES else s.get(name)
            if st and st.get("count"):
                any_data = True
                row += f" | {_f(st['p50_ms']):>6s} {_f(st['p95_ms']):>6s} {_f(st['p99_ms']):>6s} {_f(st['max_ms']):>7s}"
            else:
                row += f" | {'-':>6s} {'-':>6s} {'-':>6s} {'-':>7s}"
        if any_data:
            lines.append(row)
    for s in sides:
        fr = s["frames"]
        lines.append(
            f"{s['label']}: source {_f(s['source_fps'], 2)} fps, in {_f(s['fps_in'], 2)} fps, "
            f"out {_f(s['fps_out'], 2)} fps; frames in {fr['frames_in']}, out {fr['frames_out']}, "
            f"encoded {fr['encoded']}, captioned {fr['captions']}, dropped {s['dropped']} "
            f"(encoder busy {s['dropped_why']['not_encoded_encoder_busy']}, static scene "
            f"{s['dropped_why']['not_encoded_static_scene']} not encoded); CPU {_f(s['cpu']['cpu_percent'], 0)}% "
            f"of one core, peak RSS {_f(s['memory']['peak_rss_mb'], 0)} MB"
            + (f"; lag at the end {_f(s['lag_last_ms'] / 1e3, 1)} s" if "lag_last_ms" in s else "")
        )
    if "compare" in fig:
        r = fig["compare"]["ratios"]
        keys = [
            "glass_to_caption_p50",
            "glass_to_caption_p95",
            "fps_out",
            "encode_p50",
            "decode_p50",
            "cpu_percent",
        ]
        lines.append(
            "ratios a/b ("
            + f"a = {sides[0]['label']}, b = {sides[1]['label']}): "
            + ", ".join(f"{k} {_f(r.get(k), 2)}" for k in keys if k in r)
        )
    return lines


def to_json(fig: dict[str, Any]) -> str:
    """One JSON object; NaN (no samples) becomes null so any JSON reader takes it."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(fig), indent=1)
