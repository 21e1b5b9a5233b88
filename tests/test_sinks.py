"""Sinks: SRT/WebVTT cues and their validity, mp4v video that reopens, JSONL events, a headless window."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivecap.outputs.events import EventLog
from drivecap.outputs.subtitles import SubtitleSink, parse_srt, srt_time
from drivecap.outputs.video import VideoSink
from drivecap.outputs.window import WindowSink, display_available


def test_srt_time_format() -> None:
    assert srt_time(0) == "00:00:00,000"
    assert srt_time(3723.0456) == "01:02:03,046"


def _feed(sink: SubtitleSink) -> None:
    for t, text in (
        (0.0, None),
        (0.5, "clear road ahead"),
        (1.0, "clear road ahead"),
        (2.25, "car ahead"),
        (3.0, None),
        (4.0, "car <close> & ahead"),
    ):
        sink.show(text, t)


def test_srt_cues_span_from_first_shown_to_replacement(tmp_path: Path) -> None:
    with SubtitleSink(tmp_path / "a.srt") as s:
        _feed(s)
        s.finish(5.0)
    cues = parse_srt((tmp_path / "a.srt").read_text(encoding="utf-8"))
    assert cues == [
        (0.5, 2.25, "clear road ahead"),
        (2.25, 3.0, "car ahead"),
        (4.0, 5.0, "car <close> & ahead"),
    ]


def test_vtt_is_valid_webvtt(tmp_path: Path) -> None:
    with SubtitleSink(tmp_path / "a.vtt") as s:
        _feed(s)
        s.finish(5.0)
    text = (tmp_path / "a.vtt").read_text(encoding="utf-8")
    assert text.startswith("WEBVTT\n\n")
    assert "00:00:00.500 --> 00:00:02.250\nclear road ahead\n" in text
    assert "car &lt;close&gt; &amp; ahead" in text and "<close>" not in text
    assert text.endswith("\n\n")


def test_subtitles_complete_when_an_error_ends_the_run(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), SubtitleSink(tmp_path / "b.srt") as s:
        s.show("first", 0.0)
        s.show("second", 1.5)
        s.show("second", 2.0)
        raise RuntimeError("boom")
    cues = parse_srt((tmp_path / "b.srt").read_text())
    assert [c[2] for c in cues] == ["first", "second"]
    assert cues[1] == (1.5, 2.0, "second")  # the open cue ends at the last time seen


def test_parse_srt_rejects_truncated_files() -> None:
    with pytest.raises(ValueError):
        parse_srt("1\n00:00:00,000 --> 00:00:01,000\nhello\n\n2\n00:00:01,000 --> ")
    with pytest.raises(ValueError):
        parse_srt("1\n00:00:01,000 --> 00:00:00,500\nbackwards\n\n")


def _frames(n: int) -> list[np.ndarray]:
    out = []
    for i in range(n):
        img = np.zeros((120, 160, 3), np.uint8)
        cv2.rectangle(img, (i * 5, 30), (i * 5 + 30, 90), (0, 200, 255), -1)
        out.append(img)
    return out


def _count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_mp4v_video_reopens_with_every_frame(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    with VideoSink(path, fps=10) as v:
        for f in _frames(15):
            v.write(f)
    assert v.frames == 15 and _count_frames(path) == 15
    cap = cv2.VideoCapture(str(path))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (160, 120)
    cap.release()


def test_write_at_fills_dropped_live_frames(tmp_path: Path) -> None:
    path = tmp_path / "live.mp4"
    frames = _frames(3)
    with VideoSink(path, fps=10) as v:
        v.write_at(frames[0], 0.0)
        v.write_at(frames[1], 0.1)
        assert v.write_at(frames[2], 0.5) == 4  # 0.2-0.4 were dropped: repeated so the video keeps time
    assert v.filled == 3 and _count_frames(path) == 6


def test_video_closes_on_error(tmp_path: Path) -> None:
    path = tmp_path / "err.mp4"
    with pytest.raises(KeyError), VideoSink(path, fps=10) as v:
        for f in _frames(5):
            v.write(f)
        raise KeyError("x")
    assert _count_frames(path) == 5


def test_event_log_one_json_per_line_and_deterministic_mode(tmp_path: Path) -> None:
    ev = {
        "event": "caption",
        "id": 1,
        "text": "clear road ahead",
        "t": 0.5,
        "wall": {"decode_ms": 9.1},
        "score": np.float32(-1.5),
    }
    with (
        EventLog(tmp_path / "live.jsonl") as live,
        EventLog(tmp_path / "off.jsonl", deterministic=True) as off,
    ):
        live.write(ev)
        off.write(ev)
    live_ev = json.loads((tmp_path / "live.jsonl").read_text())
    off_lines = (tmp_path / "off.jsonl").read_text().splitlines()
    assert live_ev["wall"] == {"decode_ms": 9.1} and live_ev["score"] == -1.5
    assert len(off_lines) == 1 and "wall" not in json.loads(off_lines[0])


def test_window_never_crashes_headless(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    ok, why = display_available()
    assert not ok and why
    with caplog.at_level("INFO", logger="drivecap.outputs.window"), WindowSink("t") as w:
        w.write(_frames(1)[0])
    assert not w.active and not w.quit_requested
    assert any("window skipped" in r.getMessage() for r in caplog.records)
