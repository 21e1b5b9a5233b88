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

from drivecap.bench.figures import END_TO_END, STAGES, BenchResult, fmt, sides_of, to_json
from drivecap.bench.plots import plot_cdf, plot_stages, plot_timeline

log = logging.getLogger(__name__)


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
                    f"{fmt(st['p50_ms'])} / {fmt(st['p95_ms'])} / {fmt(st['p99_ms'])} / "
                    f"{fmt(st['max_ms'])} ({st['count']})"
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
            f"- pipeline output fps >= 0.95x the source's: {fmt(a['fps_out'], 2)} / {fmt(a['source_fps'], 2)} = "
            f"{fmt(keep, 3)}x: {mark(keep >= 0.95)}"
        )
        g = r.get("glass_to_caption_p95")
        out.append(
            f"- pipeline glass-to-caption p95 <= 0.5x the naive loop's: {fmt(a['glass_to_caption']['p95_ms'])} ms / "
            f"{fmt(b['glass_to_caption']['p95_ms'])} ms = {fmt(g, 4)}x: {mark(g is not None and g <= 0.5)}"
        )
        if a["encoder"] == b["encoder"]:
            out.append(f"- same encoder both sides: {a['encoder']}")
    elif fig["compare"]["what"] == "precision":
        e = r.get("encode_p50")
        out.append(
            f"- encode p50 {b['label'].split()[-1]}/{a['label'].split()[-1]}: "
            f"{fmt(1 / e if e else None, 2)}x (a/b = {fmt(e, 3)})"
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
            f" A load average of {fmt(load, 1)} on {cpus} cores means other work shared the machine: "
            "absolute times are noisy."
        )
    if "compare" in fig:
        note += " Ratios from one run, with both sides interleaved, are the figures to trust."
    return note


def markdown(result: BenchResult | dict[str, Any], command: str, plots: list[str]) -> str:
    fig = result.figures if isinstance(result, BenchResult) else result
    sides = sides_of(fig)
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
        f"Load average {', '.join(fmt(x, 2) for x in m['loadavg'])} at the start and "
        f"{', '.join(fmt(x, 2) for x in m.get('loadavg_end', []))} at the end"
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
                "output fps (source " + fmt(a["source_fps"], 2) + ")",
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
                f"| {name} | {fmt(va)} | {fmt(vb)} | {fmt(ratio, 2 if ratio is None or ratio >= 0.1 else 4)} |"
            )
        out.append("")
        checks = targets(fig)
        if checks:
            out += ["Acceptance targets, measured in this run:", "", *checks, ""]
    else:
        s = sides[0]
        out += ["## Headline", ""]
        out += [
            f"- glass-to-caption p50 {fmt(s['glass_to_caption']['p50_ms'])} ms, p95 "
            f"{fmt(s['glass_to_caption']['p95_ms'])} ms ({s['glass_to_caption']['count']} captions)",
            f"- output {fmt(s['fps_out'], 2)} fps for a {fmt(s['source_fps'], 2)} fps source",
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

    row("source fps", lambda s: fmt(s["source_fps"], 2))
    row("fps in (frames taken from the source per second)", lambda s: fmt(s["fps_in"], 2))
    row("fps out (frames drawn and written per second)", lambda s: fmt(s["fps_out"], 2))
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
    row(
        "subtitle cues under 2 s (of all but the last)",
        lambda s: f"{s['cues']['short']} of {s['cues']['count']}" if s.get("cues", {}).get("count") else "-",
    )
    row("utterances", lambda s: s["frames"]["utterances"])
    row("process CPU (% of one core)", lambda s: fmt(s["cpu"]["cpu_percent"], 0))
    row("peak RSS (MB)", lambda s: f"{fmt(s['memory']['peak_rss_mb'], 0)} ({s['memory']['scope']})")
    row("wall time (s)", lambda s: fmt(s["wall_s"], 1))
    if any("lag_last_ms" in s for s in sides):
        row(
            "lag behind the camera at the end (s)",
            lambda s: fmt(s["lag_last_ms"] / 1e3, 1) if "lag_last_ms" in s else "-",
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
