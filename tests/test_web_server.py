"""The web server on 127.0.0.1: metrics text, health, token, traversal, masking, many and stalled clients.

Frames are real (decoded from a real clip) and go through the same LiveFeed the pipeline feeds; requests go
to 127.0.0.1 only, also when the server is bound to 0.0.0.0.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from drivecap.assets import AssetStore
from drivecap.metrics import now
from drivecap.web.auth import parse_bind, resolve_token
from drivecap.web.feed import LiveFeed
from drivecap.web.paths import find_drives, safe_file
from drivecap.web.server import WebServer
from tests.conftest import REPO, assert_one_line_error, run_cli
from tests.web_helpers import clip_frames, open_fds, raw_get, thread_names, wait_until


@pytest.fixture(scope="module")
def frames(store: AssetStore) -> list[np.ndarray]:
    return clip_frames(store.clip("project_video02"), 12, width=320)


@pytest.fixture(scope="module")
def big_frames(store: AssetStore) -> list[np.ndarray]:
    # Full-size frames (~100 KB as JPEG): 150 of them are more than the socket buffers of a stalled client hold.
    return clip_frames(store.clip("project_video02"), 12, width=960)


def _publish(feed: LiveFeed, frames: list[np.ndarray], n: int, fps: float = 0.0) -> list[int]:
    """Publishes ``n`` frames (cycling the real ones) like the output loop; returns the indices published."""
    done = []
    period = 1.0 / fps if fps else 0.0
    t_next = now()
    for i in range(n):
        feed.publish_frame(frames[i % len(frames)], i, now() - 0.01, i / 25)
        done.append(i)
        if period:
            t_next += period
            time.sleep(max(0.0, t_next - now()))
    return done


def test_metrics_are_valid_prometheus_text(frames: list[np.ndarray]) -> None:
    feed = LiveFeed()
    feed.metrics.record("encode", 40.0)
    feed.metrics.record("encode", 60.0)
    feed.metrics.count("reconnects", 2)
    with WebServer("127.0.0.1", 0, feed=feed) as srv:
        _publish(feed, frames, 5)
        status, body = raw_get(srv.port, "/metrics")
        assert status == 200
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        stage = fams["drivecap_stage_latency_milliseconds"]
        assert stage.type == "summary"
        enc = {
            s.labels.get("quantile", s.name): s.value for s in stage.samples if s.labels["stage"] == "encode"
        }
        assert enc["0.5"] == pytest.approx(50.0)
        assert enc["drivecap_stage_latency_milliseconds_count"] == 2
        pub = fams["drivecap_web_frames_published"]
        assert pub.type == "counter" and pub.samples[0].value == 5
        pipe = fams["drivecap_pipeline_events"]
        assert {s.labels["name"]: s.value for s in pipe.samples}["reconnects"] == 2
        status, body = raw_get(srv.port, "/healthz")
        health = json.loads(body)
        assert status == 200 and health["ok"] is True and health["frames"] == 5


def test_bind_parsing_and_tokens() -> None:
    assert parse_bind("8080") == ("127.0.0.1", 8080)
    assert parse_bind("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_bind("[::1]:81") == ("::1", 81)
    assert resolve_token("127.0.0.1", None) is None
    t1, t2 = resolve_token("0.0.0.0", None), resolve_token("0.0.0.0", None)
    assert t1 and t2 and t1 != t2 and len(t1) >= 24
    from drivecap.errors import ConfigError

    with pytest.raises(ConfigError, match="--serve"):
        parse_bind("host:notaport")
    with pytest.raises(ConfigError, match="--token"):
        resolve_token("0.0.0.0", "short")


def test_off_loopback_needs_the_token_and_only_reads(tmp_path: Path) -> None:
    feed = LiveFeed()
    token = resolve_token("0.0.0.0", None)
    assert token is not None
    with WebServer("0.0.0.0", 0, token=token, feed=feed, root=tmp_path) as srv:
        assert f"?token={token}" in srv.url
        for target in ("/", "/metrics", "/healthz", "/events", "/api/drives", "/stream.mjpg", "/ws"):
            status, _ = raw_get(srv.port, target)
            assert status == 401, target
        wrong = token[:-1] + ("y" if token[-1] == "x" else "x")  # one character off (never the token itself)
        assert raw_get(srv.port, "/metrics?token=" + wrong)[0] == 401
        assert raw_get(srv.port, "/metrics", {"Authorization": "Bearer wrong-token-wrong"})[0] == 401
        assert raw_get(srv.port, "/metrics", {"Authorization": f"Bearer {token}"})[0] == 200
        assert raw_get(srv.port, "/drives", {"Cookie": f"drivecap_token={token}"})[0] == 200

        async def post_and_cookie() -> tuple[int, int, str]:
            # unsafe=True: aiohttp's jar keeps no cookies for IP addresses unless told (browsers do)
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
                async with s.post(f"http://127.0.0.1:{srv.port}/healthz?token={token}") as r:
                    post = r.status
                async with s.get(f"http://127.0.0.1:{srv.port}/?token={token}") as r:
                    cookie = r.cookies["drivecap_token"]
                    page = await r.text()
                async with s.get(f"http://127.0.0.1:{srv.port}/api/live") as r:  # the cookie alone
                    return post, r.status, page + str(cookie["httponly"])

        post, with_cookie, page = asyncio.run(post_and_cookie())
        assert post == 405
        assert with_cookie == 200
        assert token not in page.split("True")[0]  # the page itself never holds the token


def _drive_folder(root: Path, store: AssetStore) -> None:
    (root / "d").mkdir()
    for ext in (".vtt", ".jsonl"):
        (root / "d" / f"a{ext}").write_text("WEBVTT\n" if ext == ".vtt" else '{"event":"start"}\n')
    from tests.conftest import write_short_clip

    write_short_clip(store, root / "d" / "a.mp4", 5, 1, 25.0, size=(160, 90))


def test_twenty_traversal_attempts_are_refused(tmp_path: Path, store: AssetStore) -> None:
    root = tmp_path / "out"
    root.mkdir()
    _drive_folder(root, store)
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "hunter2"}')
    (root / "d" / "leak.json").symlink_to(secret)
    (root / "d" / "loop.json").symlink_to(root / "d" / "loop.json")
    (root / ".hidden.json").write_text("{}")
    (root / "d" / "a.py").write_text("print('source')")
    attempts = [
        "/files/../secret.json",
        "/files/..%2fsecret.json",
        "/files/%2e%2e/secret.json",
        "/files/%2e%2e%2fsecret.json",
        "/files/%252e%252e%252fsecret.json",
        "/files/d/../../secret.json",
        "/files/d/%2e%2e/%2e%2e/secret.json",
        "/files/d/leak.json",
        "/files/d/loop.json",
        "/files//etc/passwd",
        "/files/%2fetc%2fpasswd",
        "/files/d%5c..%5c..%5csecret.json",
        "/files/.hidden.json",
        "/files/d/a.py",
        "/files/d/a.mp4%00.json",
        "/files/./d/a.vtt/../../../secret.json",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/api/captions?drive=../secret",
        "/api/thumb?drive=..%2F..%2Fetc%2Fpasswd&t=0",
    ]
    assert len(attempts) == 20
    with WebServer("127.0.0.1", 0, root=root) as srv:
        for target in attempts:
            status, body = raw_get(srv.port, target)
            assert status in (400, 403, 404), (target, status)
            assert b"hunter2" not in body and b"root:" not in body, target
        ok, vtt = raw_get(srv.port, "/files/d/a.vtt")
        assert ok == 200 and vtt.startswith(b"WEBVTT")
        ranged = raw_get(srv.port, "/files/d/a.mp4", {"Range": "bytes=0-99"})
        assert ranged[0] == 206 and len(ranged[1]) == 100
    # The same gate as a function, and the drive list does not list through the symlink.
    assert safe_file(root, "d/leak.json") is None
    assert [d.id for d in find_drives(root)] == ["d/a"]


def test_credentials_never_reach_the_page() -> None:
    feed = LiveFeed()
    url = "rtsp://admin:hunter2@10.0.0.2/live"
    with WebServer("127.0.0.1", 0, feed=feed) as srv:

        async def read_events() -> str:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{srv.port}/events") as r:
                await r.content.readuntil(b"\n\n")  # retry line: the client is registered
                feed.publish_event({"event": "start", "source": url, "config": {"capture": {"src": url}}})
                feed.publish_event({"event": "caption", "id": 1, "text": f"seen at {url}", "urgent": True})
                got = b""
                while got.count(b"data:") < 2:
                    got += await r.content.readuntil(b"\n\n")
                return got.decode()

        text = asyncio.run(asyncio.wait_for(read_events(), 20))
        assert "event: caption" in text and "10.0.0.2/live" in text
        assert "hunter2" not in text
        status, body = raw_get(srv.port, "/api/live")
        assert status == 200 and b"hunter2" not in body and b"***:***@10.0.0.2" in body


async def _ws_reader(port: int, stop: asyncio.Event, seen: list[int]) -> None:
    async with aiohttp.ClientSession() as s, s.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
        while not stop.is_set():
            try:
                msg = await asyncio.wait_for(ws.receive(), 0.5)
            except TimeoutError:
                continue
            if msg.type == aiohttp.WSMsgType.BINARY:
                n = struct.unpack(">H", msg.data[:2])[0]
                seen.append(json.loads(msg.data[2 : 2 + n])["i"])
                assert msg.data[2 + n : 2 + n + 2] == b"\xff\xd8"  # a JPEG follows the header
            elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return


def test_many_slow_and_churning_clients_never_hold_the_publisher(big_frames: list[np.ndarray]) -> None:
    frames = big_frames
    feed = LiveFeed()
    fds0, threads0 = open_fds(), thread_names()
    n_frames = 150
    with WebServer("127.0.0.1", 0, feed=feed) as srv:
        fds_srv, threads_srv = open_fds(), thread_names()
        # A client that asks for the MJPEG stream and never reads a byte.
        stalled = socket.create_connection(("127.0.0.1", srv.port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(f"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
        seen: list[list[int]] = [[] for _ in range(8)]
        published: list[int] = []
        churned = [0]

        async def clients() -> None:
            stop = asyncio.Event()
            readers = [asyncio.create_task(_ws_reader(srv.port, stop, seen[k])) for k in range(8)]
            await asyncio.sleep(0.5)
            pub = asyncio.create_task(
                asyncio.to_thread(lambda: published.extend(_publish(feed, frames, n_frames, 25.0)))
            )
            async with aiohttp.ClientSession() as s:
                for k in range(100):  # connect / disconnect cycles while frames flow
                    kind = ("/ws", "/stream.mjpg", "/events")[k % 3]
                    if kind == "/ws":
                        async with s.ws_connect(f"http://127.0.0.1:{srv.port}/ws"):
                            pass
                    else:
                        async with s.get(f"http://127.0.0.1:{srv.port}{kind}") as r:
                            await r.content.read(1)
                    churned[0] += 1
            await pub
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*readers)

        asyncio.run(asyncio.wait_for(clients(), 120))
        assert published == list(range(n_frames))  # the publisher never failed or skipped a frame
        assert churned[0] == 100
        for got in seen:
            assert len(got) > n_frames // 4, len(got)  # every reading client saw the video advance
            assert got == sorted(got)
        hub = srv.hub
        assert hub is not None
        stalled_client = [c for c in hub.clients if c.kind == "mjpeg"]
        assert len(stalled_client) == 1
        # It cannot have taken every frame into a 4 KB buffer: the rest were counted as its drops.
        assert stalled_client[0].frames_dropped > 0
        assert stalled_client[0].frames_sent + stalled_client[0].frames_dropped <= hub.frames_encoded
        _, body = raw_get(srv.port, "/metrics")
        assert b'drivecap_web_client_dropped_frames{client="' in body
        stalled.close()
        assert wait_until(lambda: len(hub.clients) == 0, 15), [c.kind for c in hub.clients]
        assert wait_until(lambda: open_fds() <= fds_srv, 10), (open_fds(), fds_srv)
        assert thread_names() == threads_srv
    assert wait_until(lambda: thread_names() == threads0, 10), (thread_names(), threads0)
    assert wait_until(lambda: open_fds() <= fds0, 10), (open_fds(), fds0)
    assert not [t for t in threading.enumerate() if t.name.startswith("web-")]


def _serve(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "drivecap", "-q", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("drive browser: http://"), (line, proc.stderr.read() if proc.poll() else "")
    return proc, line.split(": ", 1)[1].strip()


def test_serve_command_lists_drives_and_stops_on_ctrl_c(tmp_path: Path, store: AssetStore) -> None:
    _drive_folder(tmp_path, store)
    proc, url = _serve([str(tmp_path), "--bind", "127.0.0.1:0"])
    try:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        status, body = raw_get(port, "/api/drives")
        assert status == 200
        drives = json.loads(body)["drives"]
        assert [d["id"] for d in drives] == ["d/a"] and drives[0]["codec"] == "mpeg4"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0


def test_serve_off_loopback_prints_a_token_url_and_refuses_without_it(tmp_path: Path) -> None:
    proc, url = _serve([str(tmp_path), "--bind", "0.0.0.0:0"])
    try:
        assert "?token=" in url
        port = int(url.split("?")[0].rsplit(":", 1)[1].strip("/"))
        assert raw_get(port, "/")[0] == 401
        assert raw_get(port, "/?" + url.split("?")[1])[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)


def test_serve_of_a_missing_folder_is_a_one_line_error(tmp_path: Path) -> None:
    proc = run_cli("serve", str(tmp_path / "nope"))
    assert_one_line_error(proc, "nope", "--out")


def test_a_client_slot_keeps_the_newest_frame_and_counts_what_it_replaced() -> None:
    from drivecap.web.hub import Client, JpegPacket

    c = Client(1, "ws", "127.0.0.1", video=True)
    pkts = [JpegPacket(k, k, k / 25, 0.0, 0.0, 0.0, b"\xff\xd8") for k in range(5)]
    for p in pkts:
        c.offer_frame(p)
    for k in range(300):
        c.offer_event({"event": "gate", "frame": k})
    got, events = asyncio.run(c.wait(0.1))
    assert got is pkts[-1] and c.frames_dropped == 4
    assert len(events) == 256 and events[0]["frame"] == 300 - 256 and c.events_dropped == 44
    assert asyncio.run(c.wait(0.01)) == (None, [])


def test_feed_masks_events_and_converts_times() -> None:
    feed = LiveFeed()
    t = now()
    feed.publish_event({"event": "caption", "text": "x", "nested": [{"u": "http://a:b@h/x"}]}, t_shown=t)
    seq, evs = feed.events_after(0)
    assert seq == 1 and evs[0]["nested"][0]["u"] == "http://***:***@h/x"
    assert abs(evs[0]["shown_unix"] - time.time()) < 5  # Unix time, not the monotonic clock
    assert feed.recent_captions()[0]["text"] == "x"
    assert feed.events_after(1) == (1, [])


@pytest.mark.slow
def test_run_serve_shows_the_live_view_and_without_it_says_how(tmp_path: Path, store: AssetStore) -> None:
    from tests.conftest import write_short_clip

    clip = write_short_clip(store, tmp_path / "c.mp4", 20, 2, 25.0, size=(320, 180))
    base = [
        "-q",
        "--set",
        "speech.backend=none",
        "--set",
        "encoder.warmup_runs=0",
        "run",
        "--source",
        str(clip),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "drivecap", *base, "--loop", "--serve", "127.0.0.1:0", "--max-seconds", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("live view: http://127.0.0.1:"), (
            line,
            proc.stderr.read() if proc.poll() else "",
        )
        port = int(line.split(":")[-1].strip().strip("/"))
        assert wait_until(lambda: json.loads(raw_get(port, "/healthz")[1]).get("frames", 0) > 10, 60)
        status, body = raw_get(port, "/metrics")
        assert status == 200 and b'stage="glass_to_output"' in body
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err[-2000:]
    # Without --serve and without a window, the first line says how to see the video.
    quiet = run_cli(*base, "--no-window", "--max-frames", "5")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stdout.splitlines()[0].startswith("no window here") and "--serve 8080" in quiet.stdout


def test_replay_serve_needs_realtime_mode() -> None:
    proc = run_cli("replay", "project_video01", "--mode", "offline", "--serve", "8080")
    assert_one_line_error(proc, "--serve", "--mode realtime")


def test_lan_url_only_for_a_wildcard_bind_and_never_loopback() -> None:
    assert WebServer("127.0.0.1", 8080).lan_url is None
    lan = WebServer("0.0.0.0", 8080, token="t0k").lan_url
    # A machine without a default route has no address to give; one with a route gives its own, with the token.
    if lan is not None:
        assert lan.startswith("http://") and ":8080/?token=t0k" in lan
        host = lan.split("//")[1].split(":")[0]
        assert not host.startswith("127.")
        socket.inet_aton(host)


def test_serve_stops_on_ctrl_c_even_when_started_with_sigint_ignored(tmp_path: Path) -> None:
    """A child of a process that ignores SIGINT inherits the ignore; the command installs its own handler."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "drivecap", "-q", "serve", str(tmp_path), "--bind", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith(
            "drive browser: http://127.0.0.1:"
        )
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
