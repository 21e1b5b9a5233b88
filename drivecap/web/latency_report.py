"""The web benchmark's figures: rounds pooled per scenario, the issue's done-when checks, the Markdown table."""

from __future__ import annotations

import json
from typing import Any

from drivecap.metrics import percentile

SCENARIO_ORDER = ("no server", "ws", "mjpeg", "load", "load, no browser")


def pcts(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 1),
        "p95_ms": round(percentile(values, 95), 1),
    }


def pool(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario: every round's samples together, and the median of the rounds' fps ratios."""
    out = []
    for name in SCENARIO_ORDER:
        mine = [r for r in runs if r["scenario"] == name]
        if not mine:
            continue
        row: dict[str, Any] = {"scenario": name, "source_fps": mine[0]["source_fps"]}
        ratios = [r["fps_ratio"] for r in mine if r.get("fps_ratio") is not None]
        row["fps_ratio"] = round(percentile(ratios, 50), 4) if ratios else None
        row["fps_ratios"] = ratios
        row["dropped"] = sum(r["dropped"] for r in mine)
        for key in ("glass_to_output", "glass_to_caption", "browser_frames", "browser_caption_after_drawn"):
            vals = [v for r in mine for v in r["samples"].get(key, [])]
            row[key] = pcts(vals)
        row["threads_before_after"] = [
            min(r["threads_before_after"][0] for r in mine),
            max(r["threads_before_after"][1] for r in mine),
        ]
        row["fds_before_after"] = [
            min(r["fds_before_after"][0] for r in mine),
            max(r["fds_before_after"][1] for r in mine),
        ]
        srv_t = [
            r["server_threads_before_after_clients"]
            for r in mine
            if "server_threads_before_after_clients" in r
        ]
        srv_f = [r["server_fds_before_after_clients"] for r in mine if "server_fds_before_after_clients" in r]
        if srv_t:
            row["server_grew"] = any(b > a for a, b in srv_t) or any(b > a for a, b in srv_f)
        out.append(row)
    return out


def verdict(pooled: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's done-when checks computed from the pooled runs."""
    by = {r["scenario"]: r for r in pooled}
    out: dict[str, Any] = {}
    ws = by.get("ws", {})
    page = by.get("mjpeg", {})  # the page's default transport
    if page.get("browser_frames", {}).get("n"):
        interval_ms = 1000.0 / page["source_fps"]
        bound = page["glass_to_output"]["p50_ms"] + 2 * interval_ms
        out["video_p50_ms"] = page["browser_frames"]["p50_ms"]
        out["video_bound_ms"] = round(bound, 1)
        out["video_ok"] = page["browser_frames"]["p50_ms"] <= bound
    cap = page.get("browser_caption_after_drawn", {})
    if cap.get("n"):
        out["caption_p50_ms"] = cap["p50_ms"]
        out["caption_ok"] = cap["p50_ms"] <= 50.0
    load = by.get("load", {})
    base = by.get("no server", {})
    bare = by.get("load, no browser", {})
    if bare.get("fps_ratio") is not None:
        out["load_no_browser_fps_ratio"] = bare["fps_ratio"]
    if load.get("fps_ratio") is not None:
        out["load_fps_ratio"] = load["fps_ratio"]
        out["load_fps_ok"] = load["fps_ratio"] >= 0.95
        if base.get("fps_ratio"):
            out["load_vs_no_server"] = round(load["fps_ratio"] / base["fps_ratio"], 4)
        out["no_thread_or_fd_growth"] = not load.get("server_grew", True) and (
            load["threads_before_after"][1] <= load["threads_before_after"][0]
            and load["fds_before_after"][1] <= load["fds_before_after"][0]
        )
    if page.get("browser_frames", {}).get("n") and ws.get("browser_frames", {}).get("n"):
        out["mjpeg_vs_ws_video_p50"] = round(
            page["browser_frames"]["p50_ms"] / ws["browser_frames"]["p50_ms"], 3
        )
    out["load_runs_fps_ratios"] = [r["fps_ratio"] for r in runs if r["scenario"] == "load"]
    return out


def markdown(body: dict[str, Any]) -> str:
    lines = [
        f"# Web live view: glass-to-browser latency and client load ({body['clip']}, {body['seconds']:g} s per scenario, "
        f"{body['encoder']})",
        "",
        f"Produced by `{body['command']}` (realtime replay, one process,",
        "scenarios back to back; headless Chromium on the same machine, times are Unix time on one clock).",
        "",
        "| scenario | fps out / source (median of rounds) | dropped | glass-to-output p50/p95 | browser frame p50/p95 | "
        "caption drawn-to-page p50/p95 | glass-to-caption p50 | threads | fds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def pp(d: dict[str, Any] | None) -> str:
        return f"{d['p50_ms']:.0f} / {d['p95_ms']:.0f} ms (n={d['n']})" if d and d.get("n") else "-"

    for r in body["pooled"]:
        ratios = ", ".join(f"{x:.3f}" for x in r["fps_ratios"])
        lines.append(
            f"| {r['scenario']} | {r['fps_ratio']:.3f} (rounds: {ratios}) | "
            f"{r['dropped']} | {pp(r['glass_to_output'])} | {pp(r.get('browser_frames'))} | "
            f"{pp(r.get('browser_caption_after_drawn'))} | {pp(r['glass_to_caption'])} | "
            f"{r['threads_before_after'][0]} -> {r['threads_before_after'][1]} | "
            f"{r['fds_before_after'][0]} -> {r['fds_before_after'][1]} |"
        )
    lines += ["", "Verdict (the issue's done-when): `" + json.dumps(body["verdict"]) + "`", ""]
    for load in (r for r in body["runs"] if r["scenario"] == "load"):
        lines.append(
            f"Load run (round {load['round']}): stalled client {load.get('stalled_client')}, 8 WebSocket clients saw "
            f"{load.get('ws_clients_frames_seen')} frames, {load.get('churn_cycles')} connect/disconnect cycles, "
            f"server totals {load.get('server')}; threads / fds with the server up, before the clients and "
            f"after they left: {load.get('server_threads_before_after_clients')} / "
            f"{load.get('server_fds_before_after_clients')}."
        )
    return "\n".join(lines) + "\n"
