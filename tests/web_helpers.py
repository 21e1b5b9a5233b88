"""Helpers for the web tests: real frames from a real clip, raw HTTP requests to 127.0.0.1, fd/thread counts."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def clip_frames(path: Path, n: int, width: int = 480) -> list[np.ndarray]:
    """The first ``n`` frames of a real video, resized to ``width`` (BGR)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    out: list[np.ndarray] = []
    try:
        while len(out) < n:
            ok, img = cap.read()
            assert ok, f"{path} ended before {n} frames"
            h = round(img.shape[0] * width / img.shape[1])
            out.append(cv2.resize(img, (width, h), interpolation=cv2.INTER_AREA))
    finally:
        cap.release()
    return out


def raw_get(
    port: int, target: str, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """Sends ``GET target`` byte for byte (no client-side path normalisation) to 127.0.0.1; (status, body)."""
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    """Polls ``pred`` until it holds or ``timeout`` passes (a bound on waiting, not a timing assertion)."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate())


def transcode_h264(src: Path, dst: Path, gop: int = 25) -> int:
    """``src`` (any video OpenCV's mp4v writer made) re-encoded as H.264 in an MP4 with PyAV: what the
    recorder issue writes and what Chromium plays. Returns the number of frames written."""
    import av

    n = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        rate = vin.average_rate or 25
        vout = out.add_stream("libx264", rate=rate)
        vout.width, vout.height = vin.codec_context.width, vin.codec_context.height
        vout.pix_fmt = "yuv420p"
        vout.options = {"g": str(gop), "preset": "veryfast"}
        for frame in inp.decode(vin):
            img = frame.to_ndarray(format="rgb24")
            for pkt in vout.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
            n += 1
        for pkt in vout.encode():
            out.mux(pkt)
    return n
