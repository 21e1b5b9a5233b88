"""``drivecap bench SOURCE --compare web``: glass-to-browser latency and what clients cost the pipeline.

One process, one loaded model, scenarios run back to back on the same clip in realtime mode:

- ``no server``: the pipeline alone (the reference fps_out);
- ``ws`` / ``mjpeg``: the server and one headless Chromium page painting frames from the WebSocket, or from
  ``/stream.mjpg`` read by ``fetch()`` (the same painting code, only the transport differs);
- ``load``: the WebSocket page plus 8 more WebSocket clients, one client that asks for MJPEG and never
  reads, and 100 connect/disconnect cycles while the clip plays.

The page stamps each frame when it was painted (the animation frame after drawing it) against the frame's
capture time, both Unix time on one machine (``Date.now()`` vs ``time.time()``; the page's clock-offset
handshake over the WebSocket is recorded as a check, and is ~0 here). Caption text is timed from when the
pipeline drew the caption on the video to the page's paint of the text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivecap.config import Config
from drivecap.metrics import LatencyRecorder, percentile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scenario:
    name: str
    server: bool
    transport: str | None  # the browser page's transport, None: no browser
    ws_clients: int = 0
    stalled: bool = False
    churn: int = 0


SCENARIOS = (
    Scenario("no server", False, None),
    Scenario("ws", True, "ws"),
    Scenario("mjpeg", True, "mjpeg"),
    Scenario("load", True, "ws", ws_clients=8, stalled=True, churn=100),
)


def _fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


def _pcts(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 1),
        "p95_ms": round(percentile(values, 95), 1),
    }


class _Load:
    """Extra clients on their own event loop: WebSocket readers, a stalled MJPEG socket, churn cycles."""

    def __init__(self, port: int, sc: Scenario) -> None:
        self.port, self.sc = port, sc
        self.frames_seen = [0] * sc.ws_clients
        self.cycles = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="bench-load")
        self._stalled: socket.socket | None = None

    def start(self) -> None:
        if self.sc.stalled:
            s = socket.create_connection(("127.0.0.1", self.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(f"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode())
            self._stalled = s
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self._stalled is not None:
            self._stalled.close()

    async def _reader(self, k: int) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as s, s.ws_connect(f"http://127.0.0.1:{self.port}/ws") as ws:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    msg = await asyncio.wait_for(ws.receive(), 0.5)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        self.frames_seen[k] += 1
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        return

    async def _churn(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as s:
            for k in range(self.sc.churn):
                if self._stop.is_set():
                    return
                path = ("/ws", "/stream.mjpg", "/events")[k % 3]
                if path == "/ws":
                    async with s.ws_connect(f"http://127.0.0.1:{self.port}/ws"):
                        pass
                else:
                    async with s.get(f"http://127.0.0.1:{self.port}{path}") as r:
                        await r.content.read(1)
                self.cycles += 1
                await asyncio.sleep(0.05)

    async def _main(self) -> None:
        tasks = [asyncio.create_task(self._reader(k)) for k in range(self.sc.ws_clients)]
        tasks.append(asyncio.create_task(self._churn()))
        await asyncio.gather(*tasks, return_exceptions=True)


def run_scenario(
    cfg: Config,
    models: tuple[Any, Any],
    clip: str,
    sc: Scenario,
    seconds: float,
    screenshot: Path | None = None,
    browser: Any = None,
) -> dict[str, Any]:
    """One realtime replay of ``clip`` under scenario ``sc``; returns its figures."""
    from drivecap.pipeline.core import Outputs
    from drivecap.pipeline.runner import Pipeline
    from drivecap.pipeline.sources import open_source, parse_source
    from drivecap.web.feed import LiveFeed
    from drivecap.web.server import WebServer

    metrics = LatencyRecorder()
    feed = LiveFeed(metrics) if sc.server else None
    threads0, fds0 = threading.active_count(), _fds()
    server = WebServer("127.0.0.1", 0, feed=feed).start() if sc.server else None
    page = None
    load: _Load | None = None
    result: dict[str, Any] = {"scenario": sc.name}
    try:
        if server is not None and sc.transport is not None and browser is not None:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
            url = server.url + ("?transport=mjpeg" if sc.transport == "mjpeg" else "")
            page.goto(url)
            page.wait_for_function("document.getElementById('conn').textContent === 'live'", timeout=30000)
        if server is not None and (sc.ws_clients or sc.stalled or sc.churn):
            load = _Load(server.port, sc)
            load.start()
        enc, cap = models
        pipe = Pipeline(
            cfg,
            enc,
            cap,
            Outputs(None, "bench-web", window=False),
            mode="realtime",
            max_seconds=seconds,
            metrics=metrics,
            live=feed,
        )
        holder: dict[str, Any] = {}
        t = threading.Thread(
            target=lambda: holder.update(s=pipe.run(open_source(parse_source(clip), cfg.capture))),
            name="bench-pipeline",
        )
        t.start()
        shot_taken = False
        while t.is_alive():
            t.join(timeout=0.5)
            if page is not None and screenshot is not None and not shot_taken:
                n_caps = page.evaluate("window.drivecapStats.captions.length")
                if n_caps >= 2 and page.evaluate("window.drivecapStats.painted") > 100:
                    page.screenshot(path=str(screenshot))
                    shot_taken = True
        summary = holder["s"]
        time.sleep(0.5)  # the last frames reach the page
        result.update(
            source_fps=round(summary.source_fps, 3),
            output_fps=round(summary.output_fps, 3),
            fps_ratio=round(summary.output_fps / summary.source_fps, 4) if summary.source_fps else None,
            frames_in=summary.frames_in,
            frames_out=summary.frames_out,
            dropped=summary.dropped,
            captions=summary.captions,
            glass_to_output=_pcts(metrics.samples("glass_to_output")),
            glass_to_caption=_pcts(metrics.samples("glass_to_caption")),
            encode=_pcts(metrics.samples("encode")),
        )
        if page is not None:
            st = page.evaluate("window.drivecapStats")
            result["browser_frames"] = _pcts([f["glass"] for f in st["frames"]])
            result["browser_output_to_paint"] = _pcts([f["output"] for f in st["frames"] if f["output"]])
            result["browser_caption_after_drawn"] = _pcts([c["ms"] for c in st["captions"]])
            result["browser_painted"] = st["painted"]
            result["browser_page_drops"] = st.get("pageDrops", 0)
            offs = st["offsets"]
            if offs:
                best = min(offs, key=lambda o: o["rtt"])
                result["clock_offset_ms"] = round(best["offset"], 2)
                result["clock_rtt_ms"] = round(best["rtt"], 2)
            if screenshot is not None and not shot_taken:
                page.screenshot(path=str(screenshot))
        if server is not None and server.hub is not None:
            hub = server.hub
            if load is not None:
                stalled = [c for c in hub.clients if c.kind == "mjpeg"]
                result["stalled_client"] = (
                    {"sent": stalled[0].frames_sent, "dropped": stalled[0].frames_dropped}
                    if stalled
                    else None
                )
                result["ws_clients_frames_seen"] = list(load.frames_seen)
                result["churn_cycles"] = load.cycles
            result["server"] = hub.totals()
    finally:
        if load is not None:
            load.stop()
        if page is not None:
            page.close()
        if server is not None:
            srv_hub = server.hub
            deadline = time.monotonic() + 10
            while srv_hub is not None and srv_hub.clients and time.monotonic() < deadline:
                time.sleep(0.1)
            result["clients_left"] = len(srv_hub.clients) if srv_hub is not None else 0
            server.stop()
    deadline = time.monotonic() + 10
    while (threading.active_count() > threads0 or _fds() > fds0) and time.monotonic() < deadline:
        time.sleep(0.1)
    result["threads_before_after"] = [threads0, threading.active_count()]
    result["fds_before_after"] = [fds0, _fds()]
    return result


def run_web_bench(
    cfg: Config, clip: str, seconds: float, out_dir: Path | None, screenshot: Path | None = None
) -> dict[str, Any]:
    """Every scenario on ``clip`` in one process; writes web.json and README.md to ``out_dir``."""
    from playwright.sync_api import sync_playwright

    from drivecap.pipeline.inference import load_models
    from drivecap.web.browser import launch

    cfg.output.window = False
    enc, cap = load_models(cfg)
    results = []
    with enc, sync_playwright() as p:
        browser = launch(p)
        try:
            for sc in SCENARIOS:
                log.info("web bench: %s", sc.name)
                shot = screenshot if sc.name == "ws" else None
                results.append(run_scenario(cfg, (enc, cap), clip, sc, seconds, shot, browser))
        finally:
            browser.close()
    body = {"clip": Path(clip).name, "seconds": seconds, "encoder": enc.describe(), "runs": results}
    body["verdict"] = verdict(results)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "web.json").write_text(json.dumps(body, indent=1) + "\n")
        (out_dir / "README.md").write_text(markdown(body))
    return body


def verdict(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's done-when checks computed from the runs (None where a figure is missing)."""
    by = {r["scenario"]: r for r in runs}
    out: dict[str, Any] = {}
    ws = by.get("ws", {})
    if ws.get("browser_frames", {}).get("n"):
        interval_ms = 1000.0 / ws["source_fps"]
        bound = ws["glass_to_output"]["p50_ms"] + 2 * interval_ms
        out["video_p50_ms"] = ws["browser_frames"]["p50_ms"]
        out["video_bound_ms"] = round(bound, 1)
        out["video_ok"] = ws["browser_frames"]["p50_ms"] <= bound
    cap = ws.get("browser_caption_after_drawn", {})
    if cap.get("n"):
        out["caption_p50_ms"] = cap["p50_ms"]
        out["caption_ok"] = cap["p50_ms"] <= 50.0
    load = by.get("load", {})
    base = by.get("no server", {})
    if load.get("fps_ratio") is not None:
        out["load_fps_ratio"] = load["fps_ratio"]
        out["load_fps_ok"] = load["fps_ratio"] >= 0.95
        if base.get("fps_ratio"):
            out["load_vs_no_server"] = round(load["fps_ratio"] / base["fps_ratio"], 4)
        out["no_leak"] = (
            load["threads_before_after"][1] <= load["threads_before_after"][0]
            and load["fds_before_after"][1] <= load["fds_before_after"][0]
        )
    return out


def markdown(body: dict[str, Any]) -> str:
    lines = [
        f"# Web live view: glass-to-browser latency and client load ({body['clip']}, {body['seconds']:g} s per scenario, "
        f"{body['encoder']})",
        "",
        "Produced by `drivecap bench <clip> --compare web --report benchmarks/web` (realtime replay, one process,",
        "scenarios back to back; headless Chromium on the same machine, times are Unix time on one clock).",
        "",
        "| scenario | fps out / source | dropped | glass-to-output p50/p95 | browser frame p50/p95 | "
        "caption drawn-to-page p50/p95 | glass-to-caption p50 | threads | fds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def pp(d: dict[str, Any] | None) -> str:
        return f"{d['p50_ms']:.0f} / {d['p95_ms']:.0f} ms (n={d['n']})" if d and d.get("n") else "-"

    for r in body["runs"]:
        lines.append(
            f"| {r['scenario']} | {r['output_fps']:.2f} / {r['source_fps']:.2f} ({r['fps_ratio']:.3f}) | "
            f"{r['dropped']} | {pp(r['glass_to_output'])} | {pp(r.get('browser_frames'))} | "
            f"{pp(r.get('browser_caption_after_drawn'))} | {pp(r['glass_to_caption'])} | "
            f"{r['threads_before_after'][0]} -> {r['threads_before_after'][1]} | "
            f"{r['fds_before_after'][0]} -> {r['fds_before_after'][1]} |"
        )
    lines += ["", "Verdict (the issue's done-when): `" + json.dumps(body["verdict"]) + "`", ""]
    load = next((r for r in body["runs"] if r["scenario"] == "load"), None)
    if load is not None:
        lines.append(
            f"Load run: stalled client {load.get('stalled_client')}, 8 WebSocket clients saw "
            f"{load.get('ws_clients_frames_seen')} frames, {load.get('churn_cycles')} connect/disconnect cycles, "
            f"server totals {load.get('server')}."
        )
    return "\n".join(lines) + "\n"
