"""Capture: source classification, real files and folders, the latest-frame slot, and a live HTTP MJPEG
camera on 127.0.0.1 that goes away and comes back."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivecap.assets import AssetStore
from drivecap.config import CaptureConfig
from drivecap.frames import Frame
from drivecap.pipeline.capture import CaptureThread, LatestSlot, wait_until
from drivecap.pipeline.sources import (
    CaptureError,
    ImageFolderSource,
    VideoCaptureSource,
    gstreamer_available,
    iter_frames,
    open_source,
    parse_source,
)

sys.path.insert(0, str(Path(__file__).parent))
import itertools

from mjpeg_server import MjpegServer, jpeg_frames_from_video


@pytest.fixture(scope="module")
def real_frames(store: AssetStore) -> list[np.ndarray]:
    """12 real frames of a training drive at 320x180."""
    cap = cv2.VideoCapture(str(store.clip("project_video02")))
    out: list[np.ndarray] = []
    while len(out) < 12:
        ok, img = cap.read()
        assert ok
        out.append(cv2.resize(img, (320, 180), interpolation=cv2.INTER_AREA))
    cap.release()
    return out


@pytest.fixture(scope="module")
def small_video(tmp_path_factory: pytest.TempPathFactory, real_frames: list[np.ndarray]) -> Path:
    path = tmp_path_factory.mktemp("vid") / "drive.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (320, 180))
    for f in real_frames:
        w.write(f)
    w.release()
    return path


def test_parse_source_classifies_every_kind(tmp_path: Path, small_video: Path) -> None:
    assert parse_source("0").kind == "camera"
    assert parse_source("2").name == "camera2"
    url = parse_source("http://127.0.0.1:8080/video.mjpg")
    assert (url.kind, url.live) == ("url", True)
    assert parse_source("rtsp://user:pw@cam.local:554/stream1").name == "cam.local:554_stream1"
    gst = parse_source("nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! appsink")
    assert gst.kind == "gstreamer"
    f = parse_source(str(small_video))
    assert (f.kind, f.name, f.live) == ("file", "drive", False)
    assert parse_source(str(tmp_path)).kind == "folder"
    with pytest.raises(CaptureError, match="not a camera index"):
        parse_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(CaptureError, match="ftp://"):
        parse_source("ftp://example/x.mp4")


def test_gstreamer_source_says_whether_opencv_has_it() -> None:
    src = open_source("videotestsrc num-buffers=1 ! appsink", CaptureConfig())
    with pytest.raises(CaptureError) as err:
        src.open()
    msg = str(err.value)
    assert "\n" not in msg
    if gstreamer_available():
        assert "cannot open GStreamer pipeline" in msg  # built with it: the bogus caps make it fail to open
    else:
        assert "built without GStreamer" in msg


def test_missing_camera_is_a_one_line_error() -> None:
    src = open_source("57", CaptureConfig())
    with pytest.raises(CaptureError, match="camera 57"):
        src.open()


def test_video_file_frames_in_order_with_timestamps(small_video: Path) -> None:
    src = VideoCaptureSource(parse_source(str(small_video)))
    frames = list(iter_frames(src))
    assert [f.index for f in frames] == list(range(12))
    assert src.fps == pytest.approx(10.0)
    assert [round(f.t_source, 3) for f in frames] == [round(i / 10, 3) for i in range(12)]
    assert all(f.image.shape == (180, 320, 3) for f in frames)
    looped = []
    for f in iter_frames(VideoCaptureSource(parse_source(str(small_video))), loop=True):
        looped.append(f)
        if len(looped) == 30:
            break
    ts = [f.t_source for f in looped]
    assert all(b > a for a, b in itertools.pairwise(ts)), "positions keep increasing across loops"
    assert looped[12].t_source == pytest.approx(1.2)


def test_image_folder_in_name_order_skipping_junk(tmp_path: Path, real_frames: list[np.ndarray]) -> None:
    for i in (2, 0, 1):
        cv2.imwrite(str(tmp_path / f"img{i:02d}.jpg"), real_frames[i])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "img03.jpg").write_bytes(b"garbage")
    src = open_source(str(tmp_path), CaptureConfig(folder_fps=5.0))
    assert isinstance(src, ImageFolderSource)
    frames = list(iter_frames(src))
    assert len(frames) == 3
    assert [f.t_source for f in frames] == [0.0, 0.2, 0.4]
    # name order: img00 first, and it is the first real frame (JPEG loses a little)
    assert np.mean(np.abs(frames[0].image.astype(int) - real_frames[0].astype(int))) < 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptureError, match="has no"):
        open_source(str(tmp_path / "empty"), CaptureConfig()).open()


def test_latest_slot_keeps_only_the_newest_and_counts_overwrites() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.get(0) == 3
    assert slot.overwritten == 2
    assert slot.get(0.01) is None
    slot.put(4)
    slot.close()
    assert slot.get(0) == 4
    assert slot.get(0) is None and slot.closed


def test_deeper_slot_drops_the_oldest_first() -> None:
    slot: LatestSlot[int] = LatestSlot(depth=2)
    assert [slot.put(i) for i in range(4)] == [False, False, True, True]
    assert (slot.get(0), slot.get(0), slot.overwritten) == (2, 3, 2)
    slot.put(9)
    assert slot.discard() == 1 and slot.get(0.01) is None


def test_capture_thread_reads_a_file_to_its_end(small_video: Path) -> None:
    slot: LatestSlot[Frame] = LatestSlot()
    got: list[Frame] = []
    th = CaptureThread(open_source(str(small_video), CaptureConfig()), [slot], CaptureConfig(), pace=True)
    th.start_and_wait_open(5)
    while (f := slot.get(1.0)) is not None or not slot.closed:
        if f is not None:
            got.append(f)
    th.join(5)
    assert th.frames_read == 12 and th.error is None
    assert len(got) + slot.overwritten == 12
    idx = [f.index for f in got]
    assert idx == sorted(idx) and idx[-1] == 11
    caps = [f.t_capture for f in got]
    assert all(b >= a for a, b in itertools.pairwise(caps))


def test_live_mjpeg_camera_is_read_and_reconnected_after_restart(store: AssetStore) -> None:
    frames = jpeg_frames_from_video(store.clip("project_video02"), limit=20, width=320)
    cfg = CaptureConfig(reconnect_initial_s=0.1, reconnect_max_s=0.4, read_timeout_s=1.0)
    events: list[dict[str, object]] = []
    with MjpegServer(frames, fps=25) as server:
        slot: LatestSlot[Frame] = LatestSlot()
        src = open_source(server.url, cfg)
        th = CaptureThread(src, [slot], cfg, on_event=events.append)
        th.start_and_wait_open(5)
        try:
            assert wait_until(lambda: th.frames_read >= 10, 10)
            first = slot.get(1)
            assert first is not None and first.image.shape == (180, 320, 3)
            server.stop()
            assert wait_until(lambda: any(e["event"] == "source_lost" for e in events), 10)
            n_lost = th.frames_read
            server.start()
            assert wait_until(lambda: th.frames_read >= n_lost + 10, 20), "capture resumes after the restart"
            assert th.reconnects >= 1
            back = [e for e in events if e["event"] == "source_back"]
            assert back and float(back[0]["gap_s"]) > 0  # type: ignore[arg-type]
            later = slot.get(1)
            assert later is not None and later.index > first.index and later.t_source > first.t_source
        finally:
            th.stop()
            th.join(5)
    assert not th.is_alive()
