"""The pages in a real browser: headless Chromium (Debian's package) driven by Playwright.

The drive browser plays a real replay's recording (re-encoded to H.264 with PyAV until the recorder issue
writes H.264 itself) with its WebVTT track, lists its captions with thumbnails and seeks on a click.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivecap.assets import AssetStore
from drivecap.config import Config, load_config
from drivecap.web.server import WebServer
from tests.conftest import REPO, write_short_clip
from tests.web_helpers import transcode_h264

pytestmark = pytest.mark.slow


def _replay_cfg(extra: list[str] | None = None) -> Config:
    # The shipped bundle and INT8 encoder: the captions on the page are the product's own.
    return load_config(
        REPO / "config.yaml",
        [
            "encoder.threads=1",
            "encoder.warmup_runs=0",
            "speech.backend=none",
            "gate.min_interval_s=0.0",
            "gate.max_age_s=0.5",
            *(extra or []),
        ],
    )


@pytest.fixture(scope="module")
def drives_root(tmp_path_factory: pytest.TempPathFactory, store: AssetStore, real_cfg: Config) -> Path:
    """OUT_DIR with one real offline replay of a real clip, its video re-encoded to H.264."""
    from drivecap.pipeline.core import Outputs
    from drivecap.pipeline.inference import load_models
    from drivecap.pipeline.runner import Pipeline
    from drivecap.pipeline.sources import open_source, parse_source

    tmp = tmp_path_factory.mktemp("drives")
    clip = write_short_clip(store, tmp / "drive1.mp4", 50, 3, 25.0, size=(480, 270))
    root = tmp / "out"
    cfg = _replay_cfg()
    enc, cap = load_models(cfg)
    with enc:
        Pipeline(cfg, enc, cap, Outputs(root / "day1", "drive1", window=False), mode="offline", stride=5).run(
            open_source(parse_source(str(clip)), cfg.capture)
        )
    mp4 = root / "day1" / "drive1.mp4"
    h264 = tmp / "h264.mp4"
    assert transcode_h264(mp4, h264) == 50
    h264.replace(mp4)
    return root


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    from drivecap.web.browser import launch

    with sync_playwright() as p:
        b = launch(p)
        try:
            yield b
        finally:
            b.close()


def _captions(path: Path) -> list[dict[str, Any]]:
    evs = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in evs if e["event"] == "caption"]


def test_drive_browser_plays_a_drive_with_its_subtitles(drives_root: Path, browser: Any) -> None:
    logged = _captions(drives_root / "day1" / "drive1.jsonl")
    assert logged, "the replay made no caption"
    with WebServer("127.0.0.1", 0, root=drives_root) as srv:
        # bypass_csp: the page forbids eval (its CSP), which Playwright's wait_for_function uses
        page = browser.new_page(viewport={"width": 1100, "height": 800}, bypass_csp=True)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.url)
        page.wait_for_function(
            "window.drivecapBrowser && window.drivecapBrowser.ready === true", timeout=30000
        )
        listed = page.eval_on_selector_all("#captions li .text", "els => els.map(e => e.textContent)")
        assert listed == [c["text"] for c in logged]
        assert page.eval_on_selector_all("#drives button", "els => els.length") == 1
        # Plays: the media element reaches HAVE_ENOUGH_DATA and its clock advances.
        page.evaluate(
            "document.getElementById('player').muted = true; document.getElementById('player').play()"
        )
        page.wait_for_function("document.getElementById('player').readyState >= 3", timeout=30000)
        page.wait_for_function("document.getElementById('player').currentTime > 0.3", timeout=30000)
        assert page.evaluate("document.getElementById('player').error") is None
        # The WebVTT track is loaded and holds the logged captions' text.
        page.wait_for_function(
            "(() => { const t = document.getElementById('player').textTracks[0];"
            " return t && t.cues && t.cues.length > 0; })()",
            timeout=30000,
        )
        cues = page.evaluate("[...document.getElementById('player').textTracks[0].cues].map(c => c.text)")
        assert set(cues) <= {c["text"] for c in logged} and cues
        # Loaded but not drawn over the video (its caption is burned in): text shown once, under the player.
        assert page.evaluate("document.getElementById('player').textTracks[0].mode") == "hidden"
        # Every caption row has a thumbnail the server made from the MP4.
        page.wait_for_function(
            "[...document.querySelectorAll('#captions li img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=30000,
        )
        assert page.eval_on_selector_all("#captions li img", "els => els.length") == len(logged)
        # Click-to-seek: the last caption's row moves the playhead to its time.
        page.evaluate("document.getElementById('player').pause()")
        page.click("#captions li:last-child")
        t_last = logged[-1].get("t_shown", logged[-1]["t"])
        page.wait_for_function(
            f"Math.abs(document.getElementById('player').currentTime - {t_last}) < 0.25", timeout=15000
        )
        assert "urgent" in page.eval_on_selector_all(
            "#captions li", "els => els.map(e => e.className).join(' ')"
        ) or not any(c["urgent"] for c in logged)
        assert not errors, errors
        page.close()


def test_live_page_during_a_real_replay_shows_its_captions_and_advancing_video(
    tmp_path: Path, store: AssetStore, browser: Any, real_cfg: Config
) -> None:
    from drivecap.pipeline.core import Outputs
    from drivecap.pipeline.inference import load_models
    from drivecap.pipeline.runner import Pipeline
    from drivecap.pipeline.sources import open_source, parse_source
    from drivecap.web.feed import LiveFeed

    clip = write_short_clip(store, tmp_path / "live.mp4", 150, 2, 25.0, size=(480, 270))
    # One encode per caption (no mirror view): on a busy shared machine a 6 s replay still gets captions.
    cfg = _replay_cfg(["decoder.mirror_view=false"])
    enc, cap = load_models(cfg)
    feed = LiveFeed()
    with enc, WebServer("127.0.0.1", 0, feed=feed) as srv:
        page = browser.new_page(viewport={"width": 1100, "height": 800}, bypass_csp=True)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.url)
        page.wait_for_function("document.getElementById('conn').textContent === 'live'", timeout=30000)
        # A viewer that asks for the MJPEG stream and never reads: the replay must not notice it.
        stalled = socket.create_connection(("127.0.0.1", srv.port))
        stalled.sendall(f"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
        pipe = Pipeline(
            cfg,
            enc,
            cap,
            Outputs(tmp_path / "out", "live", window=False),
            mode="realtime",
            metrics=feed.metrics,
            live=feed,
        )
        seen_index: list[int] = []

        def sample() -> None:
            seen_index.append(page.evaluate("window.drivecapStats.lastIndex"))

        holder: dict[str, Any] = {}
        t = threading.Thread(
            target=lambda: holder.update(s=pipe.run(open_source(parse_source(str(clip)), cfg.capture)))
        )
        t.start()
        while t.is_alive():
            sample()
            t.join(timeout=0.4)
        page.wait_for_timeout(500)
        summary = holder["s"]
        stats = page.evaluate("window.drivecapStats")
        texts = [c.text for c in pipe.captions]
        assert texts, "the replay made no caption"
        # The page shows the pipeline's own last caption in large type, and its timeline holds them all.
        assert page.inner_text("#caption") == texts[-1]
        timeline = page.eval_on_selector_all("#timeline li .text", "els => els.map(e => e.textContent)")
        assert list(reversed(timeline)) == texts[-len(timeline) :]
        # The video advanced: the painted frame index grew while the replay ran, and frames carry their times.
        assert len(set(seen_index)) >= 3 and seen_index == sorted(seen_index)
        assert stats["painted"] >= summary.frames_out // 3
        assert all(f["glass"] > 0 for f in stats["frames"])
        assert stats["captions"], "no caption latency was measured"
        # Every frame the output loop wrote was handed to the server (the hand-over never refuses one); what
        # the realtime loop itself dropped is the source's pacing on a busy machine, measured by the bench.
        assert feed.frames_published == summary.frames_out > 0
        hub = srv.hub
        assert hub is not None
        # The page's own stream and the stalled viewer, still connected, still not reading.
        assert sum(c.kind == "mjpeg" for c in hub.clients) == 2
        stalled.close()
        assert not errors, errors
        page.close()
