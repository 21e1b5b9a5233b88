"""The benchmark report: a Markdown page with small PNG plots, written by ``drivecap bench --report DIR``.

Plots (matplotlib, Agg, sized to stay small enough to commit):

* ``latency_cdf.png``: one small CDF per stage and end to end, one line per side;
* ``stages.png``: p50 bar with a p95 whisker per stage, sides side by side;
* ``timeline.png``: per side, what happened when: frames in, encoder busy, gate openings (decoder),
  captions shown, speech, frames out; below, glass-to-caption of every caption over the run.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from drivecap.bench import END_TO_END, STAGES, BenchResult, RoundResult, to_json

log = logging.getLogger(__name__)

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
DPI = 80


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(x: Any, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "-"
    return f"{x:.{nd}f}"


def _sides(fig: dict[str, Any]) -> list[dict[str, Any]]:
    return [fig["compare"]["a"], fig["compare"]["b"]] if "compare" in fig else [fig]


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
    sides = _sides(result.figures)
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
            ax.text((v + e) * 1.12, y, _fmt(v, 1 if v < 100 else 0), va="center", fontsize=7)
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


# --------------------------------------------------------------------------------------------- markdown


def _stage_rows(sides: list[dict[str, Any]]) -> list[str]:
    head = (
        "| stage | what it covers | "
        + " | ".join(f"{s['label']} p50 / p95 / p99 / max (n)" for s in sides)
        + " |"
    )
    rows = [head, "|" + "---|" * (2 + len(sides))]
    for name in [*STAGES, *END_TO_END]:
        cells = []
        present = False
        for s in sides:
            st = s["stages"].get(name) if name in STAGES else s.get(name)
            if st and st.get("count"):
                present = True
                cells.append(
                    f"{_fmt(st['p50_ms'])} / {_fmt(st['p95_ms'])} / {_fmt(st['p99_ms'])} / "
                    f"{_fmt(st['max_ms'])} ({st['count']})"
                )
            else:
                cells.append("-")
        if present:
            what = STAGES[name][1] if name in STAGES else END_TO_END[name]
            bold = "**" if name in END_TO_END else ""
            rows.append(f"| {bold}{name}{bold} | {what} | " + " | ".join(cells) + " |")
    return rows


def targets(fig: dict[str, Any]) -> list[str]:
    """The issue's acceptance checks that this comparison answers, each with its measured figure."""
    if "compare" not in fig:
        return []
    a, b, r = fig["compare"]["a"], fig["compare"]["b"], fig["compare"]["ratios"]
    out: list[str] = []

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    if fig["compare"]["what"] == "loop":
        keep = a["fps_out"] / a["source_fps"] if a["source_fps"] else math.nan
        out.append(
            f"- pipeline output fps >= 0.95x the source's: {_fmt(a['fps_out'], 2)} / {_fmt(a['source_fps'], 2)} = "
            f"{_fmt(keep, 3)}x: {mark(keep >= 0.95)}"
        )
        g = r.get("glass_to_caption_p95")
        out.append(
            f"- pipeline glass-to-caption p95 <= 0.5x the naive loop's: {_fmt(a['glass_to_caption']['p95_ms'])} ms / "
            f"{_fmt(b['glass_to_caption']['p95_ms'])} ms = {_fmt(g, 4)}x: {mark(g is not None and g <= 0.5)}"
        )
        if a["encoder"] == b["encoder"]:
            out.append(f"- same encoder both sides: {a['encoder']}")
    elif fig["compare"]["what"] == "precision":
        e = r.get("encode_p50")
        out.append(
            f"- encode p50 {b['label'].split()[-1]}/{a['label'].split()[-1]}: "
            f"{_fmt(1 / e if e else None, 2)}x (a/b = {_fmt(e, 3)})"
        )
    return out


def _noise_note(fig: dict[str, Any]) -> str:
    """What the load average says about how far the absolute times can be trusted."""
    m = fig["machine"]
    load = max([*m.get("loadavg", [])[:1], *m.get("loadavg_end", [])[:1]], default=0.0)
    cpus = m.get("cpus") or 1
    note = ""
    if load > 0.5 * cpus:
        note = (
            f" A load average of {_fmt(load, 1)} on {cpus} cores means other work shared the machine: "
            "absolute times are noisy."
        )
    if "compare" in fig:
        note += " Ratios from one run, with both sides interleaved, are the figures to trust."
    return note


def markdown(result: BenchResult | dict[str, Any], command: str, plots: list[str]) -> str:
    fig = result.figures if isinstance(result, BenchResult) else result
    sides = _sides(fig)
    m = fig["machine"]
    out: list[str] = []
    title = f"drivecap bench: {fig['source']}"
    if "compare" in fig:
        title += f", --compare {fig['compare']['what']}"
    out += [f"# {title}", ""]
    out += [
        f"Command: `{command}`",
        "",
        f"Machine: {m['cpus']} CPU cores ({m['cpu_model'] or 'unknown model'}), "
        f"{'an NVIDIA GPU' if m['gpu'] else 'no GPU'}, Python {m['python']}, {m['platform']}. "
        f"Load average {', '.join(_fmt(x, 2) for x in m['loadavg'])} at the start and "
        f"{', '.join(_fmt(x, 2) for x in m.get('loadavg_end', []))} at the end"
        + (f"; the bench ran at nice {m['nice']}" if m.get("nice") else "")
        + "."
        + _noise_note(fig),
        "",
        f"Mode: {fig['mode']}; {fig['rounds']} round(s) per side"
        + (f", the clip played {fig['loops']} times per round" if fig.get("loops", 1) > 1 else "")
        + (f", {fig['seconds']:g} s per round" if fig.get("seconds") else "")
        + f". Warm-up: {fig['warmup']}.",
        "",
    ]
    if "compare" in fig:
        a, b, r = fig["compare"]["a"], fig["compare"]["b"], fig["compare"]["ratios"]
        out += [f"## Headline: a = {a['label']}, b = {b['label']}", ""]
        out += ["| figure | a | b | a/b |", "|---|---|---|---|"]
        rows: list[tuple[str, Any, Any, Any]] = [
            (
                "glass-to-caption p50 (ms)",
                a["glass_to_caption"]["p50_ms"],
                b["glass_to_caption"]["p50_ms"],
                r.get("glass_to_caption_p50"),
            ),
            (
                "glass-to-caption p95 (ms)",
                a["glass_to_caption"]["p95_ms"],
                b["glass_to_caption"]["p95_ms"],
                r.get("glass_to_caption_p95"),
            ),
            (
                "output fps (source " + _fmt(a["source_fps"], 2) + ")",
                a["fps_out"],
                b["fps_out"],
                r.get("fps_out"),
            ),
            (
                "encode p50 (ms)",
                (a["stages"].get("encode") or {}).get("p50_ms"),
                (b["stages"].get("encode") or {}).get("p50_ms"),
                r.get("encode_p50"),
            ),
            (
                "decode p50 (ms)",
                (a["stages"].get("decode") or {}).get("p50_ms"),
                (b["stages"].get("decode") or {}).get("p50_ms"),
                r.get("decode_p50"),
            ),
            (
                "process CPU (% of one core)",
                a["cpu"]["cpu_percent"],
                b["cpu"]["cpu_percent"],
                r.get("cpu_percent"),
            ),
            ("peak RSS (MB)", a["memory"]["peak_rss_mb"], b["memory"]["peak_rss_mb"], r.get("peak_rss_mb")),
        ]
        for name, va, vb, ratio in rows:
            out.append(
                f"| {name} | {_fmt(va)} | {_fmt(vb)} | {_fmt(ratio, 2 if ratio is None or ratio >= 0.1 else 4)} |"
            )
        out.append("")
        checks = targets(fig)
        if checks:
            out += ["Acceptance targets, measured in this run:", "", *checks, ""]
    else:
        s = sides[0]
        out += ["## Headline", ""]
        out += [
            f"- glass-to-caption p50 {_fmt(s['glass_to_caption']['p50_ms'])} ms, p95 "
            f"{_fmt(s['glass_to_caption']['p95_ms'])} ms ({s['glass_to_caption']['count']} captions)",
            f"- output {_fmt(s['fps_out'], 2)} fps for a {_fmt(s['source_fps'], 2)} fps source",
            "",
        ]
    out += ["## Where the time goes", ""]
    out += [f"![{p}]({p})" for p in plots if p == "stages.png"] + [""]
    out += [*_stage_rows(sides), ""]
    out += [
        "All times in milliseconds from one monotonic clock, stamped where the work starts and ends "
        "(a frame's wait for the encoder is not in any stage: it shows in glass-to-caption).",
        "",
        "## Throughput and what happened to every frame",
        "",
        "| | " + " | ".join(s["label"] for s in sides) + " |",
        "|---|" + "---|" * len(sides),
    ]

    def row(name: str, f: Any) -> None:
        out.append(f"| {name} | " + " | ".join(str(f(s)) for s in sides) + " |")

    row("source fps", lambda s: _fmt(s["source_fps"], 2))
    row("fps in (frames taken from the source per second)", lambda s: _fmt(s["fps_in"], 2))
    row("fps out (frames drawn and written per second)", lambda s: _fmt(s["fps_out"], 2))
    row("frames in / out", lambda s: f"{s['frames']['frames_in']} / {s['frames']['frames_out']}")
    row("dropped (never output)", lambda s: s["dropped"])
    row("encoded", lambda s: s["frames"]["encoded"])
    row(
        "not encoded: encoder busy (newest frame won)", lambda s: s["dropped_why"]["not_encoded_encoder_busy"]
    )
    row("not encoded: static scene (pixel pre-gate)", lambda s: s["dropped_why"]["not_encoded_static_scene"])
    row(
        "gate decisions by reason",
        lambda s: ", ".join(f"{k} {v}" for k, v in sorted(s["gate_reasons"].items())),
    )
    row("captions shown", lambda s: s["frames"]["captions"])
    row("utterances", lambda s: s["frames"]["utterances"])
    row("process CPU (% of one core)", lambda s: _fmt(s["cpu"]["cpu_percent"], 0))
    row("peak RSS (MB)", lambda s: f"{_fmt(s['memory']['peak_rss_mb'], 0)} ({s['memory']['scope']})")
    row("wall time (s)", lambda s: _fmt(s["wall_s"], 1))
    if any("lag_last_ms" in s for s in sides):
        row(
            "lag behind the camera at the end (s)",
            lambda s: _fmt(s["lag_last_ms"] / 1e3, 1) if "lag_last_ms" in s else "-",
        )
    out.append("")
    if "timeline.png" in plots:
        out += [
            "## Timeline",
            "",
            "Frames coming in, the encoder at work, gate openings (the decoder runs), captions appearing "
            "(arrow from the moment the frame was captured), speech and frames going out; below, "
            "glass-to-caption of each caption over the run.",
            "",
            "![timeline](timeline.png)",
            "",
        ]
    if "latency_cdf.png" in plots:
        out += ["## Latency distribution per stage", "", "![latency CDF](latency_cdf.png)", ""]
    out += ["The numbers behind this page are in `bench.json`.", ""]
    return "\n".join(out)


def write_report(result: BenchResult, folder: Path, command: str) -> Path:
    """Writes ``README.md``, ``bench.json`` and the PNGs into ``folder``; returns the Markdown path."""
    folder.mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    for name, fn in (
        ("stages.png", plot_stages),
        ("timeline.png", plot_timeline),
        ("latency_cdf.png", plot_cdf),
    ):
        try:
            fn(result, folder / name)
            plots.append(name)
        except Exception:  # a plot that cannot be drawn must not lose the figures
            log.warning("could not draw %s", name, exc_info=True)
    (folder / "bench.json").write_text(
        to_json({**result.figures, "command": command}) + "\n", encoding="utf-8"
    )
    md = folder / "README.md"
    md.write_text(markdown(result, command, plots), encoding="utf-8")
    return md


def rerender(folder: Path) -> Path:
    """Rewrites ``folder/README.md`` from its ``bench.json`` (after a change to the page's layout)."""
    import json

    fig = json.loads((folder / "bench.json").read_text(encoding="utf-8"))
    plots = [p for p in ("stages.png", "timeline.png", "latency_cdf.png") if (folder / p).is_file()]
    md = folder / "README.md"
    md.write_text(markdown(fig, str(fig.get("command", "drivecap bench")), plots), encoding="utf-8")
    return md
