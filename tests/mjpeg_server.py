"""A real HTTP MJPEG (multipart/x-mixed-replace) server on 127.0.0.1 that tests start, stop and restart.

It serves JPEG frames (e.g. decoded from a real clip) in a loop at a given rate, like an IP dashcam.
``stop()`` closes the listening socket and every open stream, so a client sees the camera vanish;
``start()`` again on the same port brings it back.

Run by hand: ``python tests/mjpeg_server.py CLIP.mp4 --port 8090``.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BOUNDARY = "drivecapframe"


def jpeg_frames_from_video(path: str | Path, limit: int = 50, step: int = 1, width: int = 320) -> list[bytes]:
    """The first ``limit`` frames (every ``step``-th) of a video, resized to ``width``, as JPEG bytes."""
    from drivecap.bench.soak import clip_jpegs

    return clip_jpegs(path, limit=limit, width=width, step=step)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], owner: MjpegServer) -> None:
        self.owner = owner
        super().__init__(addr, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet

    def do_GET(self) -> None:
        owner = self.server.owner
        if self.path.split("?")[0] not in ("/", "/stream", "/video.mjpg"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        owner._register(self.connection)
        try:
            period = 1.0 / owner.fps
            t_next = time.monotonic()
            i = 0
            while not owner._stopping.is_set():
                jpg = owner.frames[i % len(owner.frames)]
                part = (
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpg)}\r\n\r\n".encode()
                    + jpg
                    + b"\r\n"
                )
                self.wfile.write(part)
                self.wfile.flush()
                owner.frames_sent += 1
                i += 1
                t_next += period
                delay = t_next - time.monotonic()
                if delay > 0:
                    owner._stopping.wait(delay)
                else:
                    t_next = time.monotonic()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        finally:
            owner._unregister(self.connection)


class MjpegServer:
    """Serves ``frames`` (JPEG bytes) at ``fps`` on http://127.0.0.1:PORT/stream; start/stop/restart."""

    def __init__(self, frames: Sequence[bytes], fps: float = 25.0, port: int = 0) -> None:
        self.frames = list(frames)
        self.fps = fps
        self.port = port
        self.frames_sent = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream"

    def start(self) -> MjpegServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _Server(("127.0.0.1", self.port), self)
        self.port = self._httpd.server_address[1]  # fixed from the first start on, so restarts reuse it
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="mjpeg-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Closes the listening socket and cuts every client, as a camera losing power would."""
        if self._httpd is None:
            return
        self._stopping.set()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def _register(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)

    def _unregister(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--width", type=int, default=640)
    a = ap.parse_args(argv)
    srv = MjpegServer(jpeg_frames_from_video(a.video, limit=a.frames, width=a.width), fps=a.fps, port=a.port)
    srv.start()
    print(f"serving {len(srv.frames)} frames at {srv.url}", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
