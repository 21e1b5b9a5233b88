"""Makes docs/web_live.png and docs/web_browser.png from real runs (the README's screenshots).

    PYTHONPATH=. .venv/bin/python scripts/web_screenshots.py [--clip project_video02] [--docs docs]

Live: a realtime replay of a training clip with the web server on, the live page in headless Chromium,
captured once the page has painted real frames and shown a caption the pipeline made. Drive browser: an
offline replay of the same clip (H.264, re-encoded with PyAV when the recorder wrote mp4v), served with
``drivecap serve``'s app, the page playing it with its subtitle track.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from drivecap.assets import AssetStore
from drivecap.config import load_config

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", default="project_video02")
    ap.add_argument("--docs", type=Path, default=REPO / "docs")
    ap.add_argument("--frames", type=int, default=400)
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from drivecap.pipeline.core import Outputs
    from drivecap.pipeline.inference import load_models
    from drivecap.pipeline.runner import Pipeline
    from drivecap.pipeline.sources import open_source, parse_source
    from drivecap.web.browser import launch
    from drivecap.web.feed import LiveFeed
    from drivecap.web.server import WebServer

    # A shorter maximum caption age than the default (8 s) fills the timeline within a short run.
    cfg = load_config(
        REPO / "config.yaml", ["speech.backend=none", "output.window=false", "gate.max_age_s=2.0"]
    )
    clip = str(AssetStore().clip(args.clip))
    enc, cap = load_models(cfg)
    with enc, sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        browser = launch(p)
        # -- live page during a realtime replay
        feed = LiveFeed()
        with WebServer("127.0.0.1", 0, feed=feed) as srv:
            page = browser.new_page(viewport={"width": 1280, "height": 860}, bypass_csp=True)
            page.goto(srv.url)
            pipe = Pipeline(
                cfg,
                enc,
                cap,
                Outputs(None, "live", window=False),
                mode="realtime",
                max_frames=args.frames,
                metrics=feed.metrics,
                live=feed,
            )
            t = threading.Thread(target=lambda: pipe.run(open_source(parse_source(clip), cfg.capture)))
            t.start()
            page.wait_for_function(
                "window.drivecapStats.captions.length >= 3 && window.drivecapStats.painted > 100",
                timeout=120000,
            )
            page.screenshot(path=str(args.docs / "web_live.png"))
            pipe.stop()
            t.join()
            page.close()
        # -- drive browser on an offline replay
        out = Path(tmp) / "out"
        pipe = Pipeline(
            cfg,
            enc,
            cap,
            Outputs(out / "2026-12-01", args.clip, window=False),
            mode="offline",
            max_frames=args.frames,
            stride=5,
        )
        pipe.run(open_source(parse_source(clip), cfg.capture))
        mp4 = out / "2026-12-01" / f"{args.clip}.mp4"
        from drivecap.web.thumbs import video_codec

        if video_codec(mp4) != "h264":
            from tests.web_helpers import transcode_h264

            h = Path(tmp) / "h264.mp4"
            transcode_h264(mp4, h)
            h.replace(mp4)
        with WebServer("127.0.0.1", 0, root=out) as srv:
            page = browser.new_page(viewport={"width": 1280, "height": 860}, bypass_csp=True)
            page.goto(srv.url)
            page.wait_for_function("window.drivecapBrowser && window.drivecapBrowser.ready === true")
            page.evaluate(
                "(() => { const v = document.getElementById('player'); v.muted = true; v.play(); })()"
            )
            page.wait_for_function("document.getElementById('player').currentTime > 4.5", timeout=60000)
            page.evaluate("document.getElementById('player').pause()")
            page.wait_for_function(
                "[...document.querySelectorAll('#captions li img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            time.sleep(0.3)
            page.screenshot(path=str(args.docs / "web_browser.png"))
            page.close()
        browser.close()
    print("wrote", args.docs / "web_live.png", args.docs / "web_browser.png")


if __name__ == "__main__":
    main()
