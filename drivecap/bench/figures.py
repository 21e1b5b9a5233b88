"""Benchmark figures from recorded samples: percentiles, rates, per-side figures, a/b ratios, the text table and JSON."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from drivecap.config import Config
from drivecap.metrics import percentile

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
    cues: list[tuple[float, float, str]] = field(default_factory=list)  # subtitle cues, same text merged
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
    out["cues"] = cue_figures([c for r in rounds for c in r.cues[:-1]])
    if first.kind == "naive":
        out["lag_last_ms"] = max(float(r.counts.get("lag_last_ms", 0.0)) for r in rounds)
    return out


SHORT_CUE_S = 2.0  # a caption replaced sooner than this is flicker (issue 11)


def merged_cues(cues: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Subtitle cues with neighbours of the same text joined (the writer splits long captions)."""
    out: list[tuple[float, float, str]] = []
    for start, end, text in cues:
        if out and out[-1][2] == text and start - out[-1][1] < 0.05:
            out[-1] = (out[-1][0], end, text)
        else:
            out.append((start, end, text))
    return out


def cue_figures(cues: list[tuple[float, float, str]]) -> dict[str, Any]:
    """How long captions stayed on screen (each run's last cue, cut by the end of the clip, left out)."""
    lengths = [end - start for start, end, _ in cues]
    short = sum(1 for x in lengths if x < SHORT_CUE_S)
    return {
        "count": len(lengths),
        "short": short,
        "short_share": short / len(lengths) if lengths else math.nan,
        "median_s": percentile(lengths, 50) if lengths else math.nan,
    }


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


def fmt(x: Any, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "-"
    return f"{x:.{nd}f}"


def sides_of(fig: dict[str, Any]) -> list[dict[str, Any]]:
    return [fig["compare"]["a"], fig["compare"]["b"]] if "compare" in fig else [fig]
