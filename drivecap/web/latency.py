"""``drivecap bench SOURCE --web``: glass-to-browser latency and what clients cost the pipeline.

One process, one loaded model, scenarios run back to back on the same clip in realtime mode:

- ``no server``: the pipeline alone (the reference fps_out);
- ``ws`` / ``mjpeg``: the server and one headless Chromium page painting frames from the WebSocket, or from
  ``/stream.mjpg`` read by ``fetch()`` (the same painting code, only the transport differs);
- ``load``: the page (its default transport, MJPEG) plus 8 WebSocket clients, one client that asks for
  MJPEG and never reads, and 100 connect/disconnect cycles while the clip plays (the viewers in a child
  process); ``load, no browser``: the same viewers without Chromium, to tell the server's cost from the
  browser's CPU.

The page stamps each frame when it was painted (the animation frame after drawing it) against the frame's
capture time, both Unix time on one machine (``Date.now()`` vs ``time.time()``; the page's clock-offset
handshake over the WebSocket is recorded as a check, and is ~0 here). Caption text is timed from when the
pipeline drew the caption on the video to the page's paint of the text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivecap.config import Config
from drivecap.metrics import LatencyRecorder
from drivecap.web.latency_report import markdown, pcts, pool, verdict

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
    Scenario("load", True, "mjpeg", ws_clients=8, stalled=True, churn=100),
    Scenario("load, no browser", True, None, ws_clients=8, stalled=True, churn=100),
)


def _fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


class _Load:
    """The extra clients, in a child process like real viewers (in this process they would compete with
    the pipeline for the GIL, which no phone does): see :mod:`drivecap.web.loadgen`."""

    def __init__(self, port: int, sc: Scenario) -> None:
        self.port, self.sc = port, sc
        self.frames_seen: list[int] = []
        self.cycles = 0
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        args = [str(self.port), str(self.sc.ws_clients), str(int(self.sc.stalled)), str(self.sc.churn)]
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "drivecap.web.loadgen", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the load generator did not start")

    def stop(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        out, _ = proc.communicate("stop\n", timeout=60)  # closing stdin ends it; it prints its figures
        with contextlib.suppress(ValueError, IndexError):
            res = json.loads(out.strip().splitlines()[-1])
            self.frames_seen, self.cycles = res["frames_seen"], res["cycles"]


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
    result: dict[str, Any] = {"scenario": sc.name, "samples": {}}
    threads_srv, fds_srv = threading.active_count(), _fds()
    try:
        if server is not None and sc.transport is not None and browser is not None:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
            url = server.url + ("?transport=ws" if sc.transport == "ws" else "")
            page.goto(url)
            page.wait_for_function("document.getElementById('conn').textContent === 'live'", timeout=30000)
        # The reference for "back to where they were": the server up with its one page, before the others.
        threads_srv, fds_srv = threading.active_count(), _fds()
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
            glass_to_output=pcts(metrics.samples("glass_to_output")),
            glass_to_caption=pcts(metrics.samples("glass_to_caption")),
            encode=pcts(metrics.samples("encode")),
        )
        result["samples"].update(
            glass_to_output=metrics.samples("glass_to_output"),
            glass_to_caption=metrics.samples("glass_to_caption"),
        )
        if page is not None:
            st = page.evaluate("window.drivecapStats")
            result["samples"].update(
                browser_frames=[f["glass"] for f in st["frames"]],
                browser_caption_after_drawn=[c["ms"] for c in st["captions"]],
            )
            result["browser_frames"] = pcts([f["glass"] for f in st["frames"]])
            result["browser_output_to_paint"] = pcts([f["output"] for f in st["frames"] if f["output"]])
            result["browser_caption_after_drawn"] = pcts([c["ms"] for c in st["captions"]])
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
                # The stalled viewer connected first of the MJPEG clients (the churn ones come and go).
                stalled = sorted((c for c in hub.clients if c.kind == "mjpeg"), key=lambda c: c.id)
                result["stalled_client"] = (
                    {"sent": stalled[0].frames_sent, "dropped": stalled[0].frames_dropped}
                    if stalled
                    else None
                )
                load.stop()  # its figures come when it ends
                result["ws_clients_frames_seen"] = list(load.frames_seen)
                result["churn_cycles"] = load.cycles
            result["server"] = hub.totals()
    finally:
        if load is not None:
            load.stop()
        if server is not None:
            srv_hub = server.hub
            stay = 1 if page is not None else 0  # the page was there before the others came
            deadline = time.monotonic() + 10
            while srv_hub is not None and len(srv_hub.clients) > stay and time.monotonic() < deadline:
                time.sleep(0.1)
            result["clients_left"] = len(srv_hub.clients) - stay if srv_hub is not None else 0
            # After the clients left, with the server still up: back to where it was before they came.
            deadline = time.monotonic() + 10
            while (
                threading.active_count() > threads_srv or _fds() > fds_srv
            ) and time.monotonic() < deadline:
                time.sleep(0.1)
            result["server_threads_before_after_clients"] = [threads_srv, threading.active_count()]
            result["server_fds_before_after_clients"] = [fds_srv, _fds()]
        if page is not None:
            page.close()
        if server is not None:
            server.stop()
    deadline = time.monotonic() + 10
    while (threading.active_count() > threads0 or _fds() > fds0) and time.monotonic() < deadline:
        time.sleep(0.1)
    result["threads_before_after"] = [threads0, threading.active_count()]
    result["fds_before_after"] = [fds0, _fds()]
    return result


def run_web_bench(
    cfg: Config,
    clip: str,
    seconds: float,
    out_dir: Path | None,
    screenshot: Path | None = None,
    rounds: int = 2,
    command: str = "drivecap bench <clip> --web",
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
            for r in range(rounds):
                # Alternating order: a machine that gets busier during the run does not favour one side.
                for sc in SCENARIOS if r % 2 == 0 else tuple(reversed(SCENARIOS)):
                    log.info("web bench round %d: %s", r + 1, sc.name)
                    shot = screenshot if sc.name == "mjpeg" and r == 0 else None
                    res = run_scenario(cfg, (enc, cap), clip, sc, seconds, shot, browser)
                    res["round"] = r + 1
                    results.append(res)
        finally:
            browser.close()
    pooled = pool(results)
    for res in results:
        res.pop("samples", None)
    body = {
        "clip": Path(clip).name,
        "seconds": seconds,
        "rounds": rounds,
        "command": command,
        "encoder": enc.describe(),
        "pooled": pooled,
        "runs": results,
    }
    body["verdict"] = verdict(pooled, results)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "web.json").write_text(json.dumps(body, indent=1) + "\n")
        (out_dir / "README.md").write_text(markdown(body))
    return body
