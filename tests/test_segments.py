"""Loop recording: segments named by UTC start, quota, event locks, the index on disk, restart repairs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivecap.assets import AssetStore
from drivecap.outputs.probe import probe
from drivecap.outputs.recorder import H264Settings
from drivecap.outputs.segment_index import INDEX, check_folder
from drivecap.outputs.segments import SegmentRecorder

FPS = 25.0
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.fixture(scope="module")
def frames(store: AssetStore) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(store.clip("challenge02")))
    out = []
    try:
        while len(out) < 50:
            ok, img = cap.read()
            assert ok
            out.append(cv2.resize(img, (192, 108), interpolation=cv2.INTER_AREA))
    finally:
        cap.release()
    return out


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def record(
    folder: Path,
    frames: list[np.ndarray],
    seconds: float,
    *,
    clock: Clock,
    lock_at: tuple[float, ...] = (),
    t_offset: float = 0.0,
    **kw: object,
) -> SegmentRecorder:
    rec = SegmentRecorder(folder, FPS, H264Settings(preset="ultrafast"), clock=clock, **kw)  # type: ignore[arg-type]
    n = round(seconds * FPS)
    with rec:
        for i in range(n):
            t = i / FPS
            clock.t = T0 + t_offset + t
            rec.show("car ahead" if (i // 10) % 2 else None, t)
            rec.write_at(frames[i % len(frames)], t)
            for tl in lock_at:
                if abs(t - tl) < 0.5 / FPS:
                    rec.lock(t)
    return rec


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.mp4"))


def test_segments_are_named_by_utc_start_and_each_decodes(frames: list[np.ndarray], tmp_path: Path) -> None:
    rec = record(tmp_path, frames, 3.0, clock=Clock(), segment_s=1.0, max_bytes=1 << 30, min_free_bytes=0)
    names = [s.file for s in rec.index.segments]
    assert names == ["20270115T080000Z.mp4", "20270115T080001Z.mp4", "20270115T080002Z.mp4"]
    for s in rec.index.segments:
        p = probe(tmp_path / s.file)
        assert p.video_frames == 25
        assert s.state == "complete" and s.bytes == (tmp_path / s.file).stat().st_size
        assert "car ahead" in p.subtitle_texts  # each segment carries its own subtitle track
    listed, on_disk = check_folder(tmp_path)
    assert listed == on_disk


def test_quota_deletes_the_oldest_unlocked_and_keeps_locked_ones(
    frames: list[np.ndarray], tmp_path: Path
) -> None:
    probe_rec = record(tmp_path / "probe", frames, 1.0, clock=Clock(), segment_s=1.0, min_free_bytes=0)
    seg_bytes = probe_rec.index.segments[0].bytes
    quota = int(seg_bytes * 3.5)  # room for three segments
    folder = tmp_path / "loop"
    sizes: list[int] = []

    class Watch(SegmentRecorder):
        def write_at(self, frame: np.ndarray, t: float) -> int:
            n = super().write_at(frame, t)
            sizes.append(disk_bytes(self.folder))
            return n

    clock = Clock()
    rec = Watch(
        folder,
        FPS,
        H264Settings(preset="ultrafast"),
        clock=clock,
        segment_s=1.0,
        max_bytes=quota,
        min_free_bytes=0,
    )
    with rec:
        for i in range(round(9 * FPS)):
            t = i / FPS
            clock.t = T0 + t
            rec.show("car ahead", t)
            rec.write_at(frames[i % len(frames)], t)
            if i == round(2.5 * FPS):
                assert rec.lock(t) == ["20270115T080001Z.mp4", "20270115T080002Z.mp4"]
    names = [s.file for s in rec.index.segments]
    # The two locked segments survived six later ones; the loop went on in the room that was left.
    assert "20270115T080001Z.mp4" in names and "20270115T080002Z.mp4" in names
    assert "20270115T080000Z.mp4" not in names and "20270115T080008Z.mp4" in names
    assert rec.deleted and all(d not in names for d in rec.deleted)
    # Disk use never went above the quota (sampled after every frame, growing segment included).
    assert max(sizes) <= quota, (max(sizes), quota)
    listed, on_disk = check_folder(folder)
    assert listed == on_disk
    locked = {s.file for s in rec.index.segments if s.locked}
    assert locked == {"20270115T080001Z.mp4", "20270115T080002Z.mp4"}


def test_recording_pauses_with_one_warning_when_locked_segments_fill_the_quota(
    frames: list[np.ndarray], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe_rec = record(tmp_path / "probe", frames, 1.0, clock=Clock(), segment_s=1.0, min_free_bytes=0)
    quota = int(probe_rec.index.segments[0].bytes * 2.5)
    folder = tmp_path / "loop"
    lock_every = tuple(k + 0.5 for k in range(6))
    rec = record(
        folder,
        frames,
        6.0,
        clock=Clock(),
        lock_at=lock_every,
        segment_s=1.0,
        max_bytes=quota,
        min_free_bytes=0,
    )
    assert rec.paused
    assert all(s.locked for s in rec.index.segments)
    assert disk_bytes(folder) <= quota
    warnings = [r for r in caplog.records if "loop recording paused" in r.getMessage()]
    assert len(warnings) == 1 and "record.max_bytes" in warnings[0].getMessage()


def test_restart_repairs_index_and_files(frames: list[np.ndarray], tmp_path: Path) -> None:
    rec = record(tmp_path, frames, 3.0, clock=Clock(), segment_s=1.0, min_free_bytes=0, run="a")
    names = [s.file for s in rec.index.segments]
    # What a crash can leave: an entry whose file is gone, an MP4 the index does not know, a file that
    # does not decode, and a segment still marked recording.
    (tmp_path / names[0]).unlink()
    (tmp_path / "20270115T090000Z.mp4").write_bytes((tmp_path / names[1]).read_bytes())
    (tmp_path / "20270115T090100Z.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 40)
    data = json.loads((tmp_path / INDEX).read_text())
    data["segments"][2]["state"] = "recording"
    (tmp_path / INDEX).write_text(json.dumps(data))

    again = SegmentRecorder(tmp_path, FPS, clock=Clock(), run="b")
    rep = again.report
    assert rep.dropped_entries == [names[0]]
    assert rep.adopted == ["20270115T090000Z.mp4"]
    assert rep.removed == ["20270115T090100Z.mp4"]
    assert rep.recovered == [names[2]]
    assert not (tmp_path / "20270115T090100Z.mp4").exists()
    listed, on_disk = check_folder(tmp_path)
    assert listed == on_disk == {names[1], names[2], "20270115T090000Z.mp4"}
    seg2 = again.index.get(names[2])
    assert seg2 is not None and seg2.state == "recovered" and seg2.duration_s == pytest.approx(1.0, abs=0.05)


def test_unreadable_index_is_rebuilt_from_the_files(frames: list[np.ndarray], tmp_path: Path) -> None:
    record(tmp_path, frames, 2.0, clock=Clock(), segment_s=1.0, min_free_bytes=0)
    (tmp_path / INDEX).write_text('{"segments": [tru')
    again = SegmentRecorder(tmp_path, FPS, clock=Clock())
    assert sorted(again.report.adopted) == ["20270115T080000Z.mp4", "20270115T080001Z.mp4"]
    listed, on_disk = check_folder(tmp_path)
    assert listed == on_disk


def test_a_full_disk_mid_run_stops_that_segment_with_one_warning_and_keeps_the_others(
    frames: list[np.ndarray], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not Path("/dev/full").exists():
        pytest.fail("/dev/full is part of every Linux system this runs on")
    # The third segment's file is a symlink to /dev/full: every write to it fails with ENOSPC.
    (tmp_path / "20270115T080002Z.mp4").symlink_to("/dev/full")
    rec = record(tmp_path, frames, 5.0, clock=Clock(), segment_s=1.0, min_free_bytes=0)
    states = {s.file: s.state for s in rec.index.segments}
    assert states["20270115T080002Z.mp4"] == "cut"
    assert rec.failures == 1
    warnings = [
        r for r in caplog.records if r.levelname == "WARNING" and "20270115T080002Z" in r.getMessage()
    ]
    assert len(warnings) == 1 and "No space left on device" in warnings[0].getMessage()
    for name in (
        "20270115T080000Z.mp4",
        "20270115T080001Z.mp4",
        "20270115T080003Z.mp4",
        "20270115T080004Z.mp4",
    ):
        assert states[name] == "complete"
        assert probe(tmp_path / name).video_frames == 25


def test_speech_that_crosses_a_segment_boundary_goes_on_in_the_next(
    frames: list[np.ndarray], tmp_path: Path
) -> None:
    import av

    clock = Clock()
    rec = SegmentRecorder(
        tmp_path, FPS, H264Settings(preset="ultrafast"), clock=clock, segment_s=1.0, audio=True
    )
    tone = (0.5 * np.sin(np.arange(22050) / 5.0)).astype(np.float32)  # 1 s
    with rec:
        for i in range(50):
            clock.t = T0 + i / FPS
            if i == 12:
                rec.add_speech(tone, i / FPS)  # 0.48 s .. 1.48 s: half in each segment
            rec.write_at(frames[i], i / FPS)
    loud = []
    for s in rec.index.segments:
        with av.open(str(tmp_path / s.file)) as c:
            a = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(c.streams.audio[0])])
        loud.append(float(np.mean(np.abs(a) > 0.1)))
    assert loud[0] > 0.3 and loud[1] > 0.3, loud
