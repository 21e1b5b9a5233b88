"""PNG plots of a benchmark: latency CDFs, per-stage bars, a timeline (matplotlib, imported only here)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from drivecap.bench.figures import END_TO_END, STAGES, BenchResult, RoundResult, fmt, sides_of

log = logging.getLogger(__name__)

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
DPI = 80


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _samples(rounds: list[RoundResult], name: str) -> list[float]:
    if name == "speech_start":
        return [s for r in rounds for t, _g, s in r.speech if t >= r.cut]
    if name == "glass_to_speech":
        return [g for r in rounds for t, g, _s in r.speech if t >= r.cut]
    src = STAGES[name][0] if name in STAGES else name
    return [ms for r in rounds for ms in r.samples(src)]


def plot_cdf(result: BenchResult, path: Path) -> None:
    plt = _plt()
    names = [n for n in [*STAGES, *END_TO_END] if any(_samples(rs, n) for rs in result.rounds.values())]
    cols = 4
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(10, 2.1 * rows), dpi=DPI, squeeze=False)
    from matplotlib.ticker import NullFormatter

    for ax, name in zip(axes.flat, names, strict=False):
        lo, hi = math.inf, 0.0
        for i, (label, rs) in enumerate(result.rounds.items()):
            vals = sorted(_samples(rs, name))
            if not vals:
                continue
            lo, hi = min(lo, vals[0]), max(hi, vals[-1])
            ys = [(k + 1) / len(vals) for k in range(len(vals))]
            ax.step(vals, ys, where="post", color=COLOURS[i % len(COLOURS)], label=label, lw=1.4)
            ax.plot(vals[:1], ys[:1], "o", color=COLOURS[i % len(COLOURS)], ms=3)
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if lo > 0 and hi / lo > 30:
            # Sides orders of magnitude apart (pipeline vs naive loop) only both show on a log axis.
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("ms", fontsize=7, labelpad=1)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.suptitle(
        "latency CDF per stage: fraction of samples at or below x ms (warm-up left out)", fontsize=9, y=0.995
    )
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=len(labels),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.965),
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path)
    plt.close(fig)


def plot_stages(result: BenchResult, path: Path) -> None:
    plt = _plt()
    names = [n for n in [*STAGES, *END_TO_END] if any(_samples(rs, n) for rs in result.rounds.values())]
    sides = sides_of(result.figures)
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) * len(sides) + 1.2), dpi=DPI)
    h = 0.8 / len(sides)
    for i, s in enumerate(sides):
        p50s, errs, ys = [], [], []
        for k, name in enumerate(names):
            st = s["stages"].get(name) if name in STAGES else s.get(name)
            if not st or not st.get("count"):
                continue
            ys.append(k + i * h)
            p50s.append(max(st["p50_ms"], 1e-3))
            errs.append(max(0.0, st["p95_ms"] - st["p50_ms"]))
        ax.barh(ys, p50s, height=h, color=COLOURS[i % len(COLOURS)], label=f"{s['label']} p50 (whisker: p95)")
        ax.errorbar(p50s, ys, xerr=[[0] * len(errs), errs], fmt="none", ecolor="black", lw=0.8, capsize=2)
        for y, v, e in zip(ys, p50s, errs, strict=True):
            ax.text((v + e) * 1.12, y, fmt(v, 1 if v < 100 else 0), va="center", fontsize=7)
    ax.set_yticks([k + 0.4 - h / 2 for k in range(len(names))])
    ax.set_yticklabels([n.replace("_", " ") for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds (log scale)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("where the time goes: p50 per stage, whisker to p95", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_timeline(result: BenchResult, path: Path, max_s: float = 12.0) -> None:
    """Lanes of events over the first ``max_s`` seconds of each side's first round, then glass-to-caption."""
    plt = _plt()
    labels = list(result.rounds)
    n = len(labels)
    fig, axes = plt.subplots(
        n + 1, 1, figsize=(10, 1.9 * n + 2.2), dpi=DPI, gridspec_kw={"height_ratios": [1.0] * n + [1.2]}
    )
    lanes = ["frames in", "encoder busy", "gate open: decode", "caption shown", "speech starts", "frames out"]
    for i, label in enumerate(labels):
        r = result.rounds[label][0]
        ax = axes[i]
        t0 = r.t0
        colour = COLOURS[i % len(COLOURS)]

        def rel(ts: list[float], t0: float = t0) -> list[float]:
            return [t - t0 for t in ts if t - t0 <= max_s]

        y = {name: len(lanes) - 1 - k for k, name in enumerate(lanes)}
        ax.eventplot(
            [rel([t for t, _ in r.pairs.get("capture", [])])],
            lineoffsets=y["frames in"],
            linelengths=0.6,
            colors="grey",
            linewidths=0.6,
        )
        ax.eventplot(
            [rel([t for t, _ in r.pairs.get("write", [])])],
            lineoffsets=y["frames out"],
            linelengths=0.6,
            colors=colour,
            linewidths=0.6,
        )
        enc = [(t - ms / 1e3 - t0, ms / 1e3) for t, ms in r.pairs.get("infer", []) if t - t0 <= max_s]
        ax.broken_barh(enc, (y["encoder busy"] - 0.3, 0.6), facecolors=colour, alpha=0.55)
        # A decode takes a few ms: a bar that thin vanishes at this scale, so each gets a tick mark.
        dec = [t - ms / 1e3 - t0 for t, ms in r.pairs.get("decode", []) if t - t0 <= max_s]
        ax.plot(dec, [y["gate open: decode"]] * len(dec), "|", color="#ff7f0e", ms=9, mew=1.6)
        shown = [(t - t0, ms) for t, ms, _ in r.captions if t - t0 <= max_s]
        ax.plot([s for s, _ in shown], [y["caption shown"]] * len(shown), "v", color="black", ms=4)
        if len(shown) <= 40:
            # Where each caption's frame was captured: the arrow's length is glass-to-caption.
            for s, ms in shown:
                ax.annotate(
                    "",
                    xy=(s, y["caption shown"]),
                    xytext=(s - ms / 1e3, y["caption shown"]),
                    arrowprops={"arrowstyle": "->", "color": "black", "lw": 0.6},
                )
        sp = [t - t0 for t, _g, _s in r.speech if t - t0 <= max_s]
        ax.plot(sp, [y["speech starts"]] * len(sp), "o", color="#2ca02c", ms=4)
        if r.warmup_s > 0:
            ax.axvspan(0, r.warmup_s, color="grey", alpha=0.12, lw=0)
        ax.set_yticks(list(y.values()))
        ax.set_yticklabels(list(y), fontsize=7)
        ax.set_ylim(-0.7, len(lanes) - 0.3)
        ax.set_xlim(0, min(max_s, r.t1 - r.t0))
        ax.tick_params(labelsize=7)
        ax.set_title(
            f"{label}: first {min(max_s, r.t1 - r.t0):.0f} s of round 1 (grey band: warm-up, left out)",
            fontsize=8,
            loc="left",
        )
        ax.grid(axis="x", alpha=0.3)
    ax = axes[n]
    for i, label in enumerate(labels):
        r = result.rounds[label][0]
        pts = [(t - r.t0, ms) for t, ms, _ in r.captions]
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            ".-",
            color=COLOURS[i % len(COLOURS)],
            ms=3,
            lw=0.8,
            label=label,
        )
    ax.set_xlabel("seconds since the run started (wall clock)", fontsize=8)
    ax.set_ylabel("glass-to-caption ms", fontsize=8)
    ys = [ms for rs in result.rounds.values() for t, ms, _ in rs[0].captions]
    if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
        ax.set_yscale("log")
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("glass-to-caption of every caption over the whole round 1", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
