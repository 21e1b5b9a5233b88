"""The PyAV recorder: H.264 fragmented MP4 with a mov_text subtitle track and an AAC speech track.

Real parts: frames of a real drive, real espeak-ng WAVs, every file read back with PyAV.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivecap.assets import AssetStore
from drivecap.outputs.audio import AudioTimeline, read_wav
from drivecap.outputs.probe import probe
from drivecap.outputs.recorder import H264Settings, Recorder, RecorderError

FPS = 25.0


@pytest.fixture(scope="module")
def frames(store: AssetStore) -> list[np.ndarray]:
    """60 real frames of a training drive at 320x180 (odd sizes are made from these where needed)."""
    cap = cv2.VideoCapture(str(store.clip("project_video02")))
    out = []
    try:
        while len(out) < 60:
            ok, img = cap.read()
            assert ok
            out.append(cv2.resize(img, (320, 180), interpolation=cv2.INTER_AREA))
    finally:
        cap.release()
    return out


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real utterance from espeak-ng (the engine behind every speech backend on Linux)."""
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        pytest.fail("espeak-ng is installed by scripts/setup.sh; it is missing here")
    path = tmp_path_factory.mktemp("wav") / "car_ahead.wav"
    subprocess.run([exe, "-s", "170", "-w", str(path), "--", "car close ahead"], check=True, timeout=60)
    return path


def decoded_audio(path: Path) -> np.ndarray:
    """The AAC track of ``path`` decoded to mono float32 samples."""
    import av

    chunks = []
    with av.open(str(path)) as c:
        for f in c.decode(c.streams.audio[0]):
            chunks.append(f.to_ndarray().reshape(-1))
    return np.concatenate(chunks)


def test_h264_file_has_every_frame_and_the_captions_as_a_mov_text_track(
    frames: list[np.ndarray], tmp_path: Path
) -> None:
    path = tmp_path / "drive.mp4"
    with Recorder(path, FPS, H264Settings(preset="ultrafast", crf=23)) as rec:
        for i, img in enumerate(frames):
            rec.show("car ahead" if i < 30 else "clear road ahead", i / FPS)
            rec.write(img)
    p = probe(path)
    assert p.streams == ["video:h264", "subtitle:mov_text"]
    assert p.video_frames == len(frames)
    assert (p.width, p.height) == (320, 180)
    # Both captions are in the file, in order, and nothing else is.
    assert set(p.subtitle_texts) == {"car ahead", "clear road ahead"}
    first_clear = p.subtitle_texts.index("clear road ahead")
    assert all(t == "car ahead" for t in p.subtitle_texts[:first_clear])
    assert all(t == "clear road ahead" for t in p.subtitle_texts[first_clear:])


def test_a_long_caption_is_written_in_pieces_so_a_crash_loses_only_the_last(
    frames: list[np.ndarray], tmp_path: Path
) -> None:
    import av

    path = tmp_path / "long.mp4"
    with Recorder(path, FPS, H264Settings(preset="ultrafast"), piece_s=0.2) as rec:
        for img in frames:  # 2.4 s of one caption
            rec.show("person ahead", 0.0)
            rec.write(img)
    with av.open(str(path)) as c:
        starts = [
            float(pkt.pts * pkt.time_base)
            for pkt in c.demux(c.streams.subtitles[0])
            if pkt.size > 2 and pkt.pts is not None and pkt.time_base is not None
        ]
    assert len(starts) >= 10  # pieces of 0.2 s over 2.4 s
    assert max(np.diff(starts)) <= 0.2 + 1e-3


def test_odd_frame_size_and_a_size_change_are_written(frames: list[np.ndarray], tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    with Recorder(path, FPS, H264Settings(preset="ultrafast"), subtitles=False) as rec:
        for img in frames[:10]:
            rec.write(cv2.resize(img, (321, 181)))
        for img in frames[10:20]:  # a reconnect at another resolution: scaled to the first
            rec.write(cv2.resize(img, (160, 90)))
    p = probe(path)
    assert p.video_frames == 20
    assert (p.width, p.height) == (322, 182)


def test_write_at_repeats_frames_to_fill_a_gap(frames: list[np.ndarray], tmp_path: Path) -> None:
    path = tmp_path / "gap.mp4"
    with Recorder(path, FPS, H264Settings(preset="ultrafast"), subtitles=False) as rec:
        assert rec.write_at(frames[0], 0.0) == 1
        assert rec.write_at(frames[1], 1.0) == 25  # 24 repeats of frame 1 up to t = 1.0 s
        assert rec.filled == 24
    assert probe(path).video_frames == 26


def test_written_frames_are_close_to_the_source(frames: list[np.ndarray], tmp_path: Path) -> None:
    import av

    path = tmp_path / "psnr.mp4"
    with Recorder(path, FPS, H264Settings(preset="ultrafast", crf=18), subtitles=False) as rec:
        for img in frames[:20]:
            rec.write(img)
    with av.open(str(path)) as c:
        decoded = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert len(decoded) == 20
    psnr = [cv2.PSNR(a, b) for a, b in zip(frames[:20], decoded, strict=True)]
    # A wrong colour matrix, swapped planes or a shifted frame would be far below this.
    assert min(psnr) > 30, psnr


def test_speech_is_an_aac_track_at_the_moment_each_utterance_started(
    frames: list[np.ndarray], speech_wav: Path, tmp_path: Path
) -> None:
    pcm = read_wav(speech_wav, 22050)
    assert len(pcm) > 22050 * 0.5
    path = tmp_path / "spoken.mp4"
    with Recorder(path, FPS, H264Settings(preset="ultrafast"), audio=True) as rec:
        assert rec.audio is not None
        rec.audio.add(pcm, 0.8)
        for img in frames:
            rec.write(img)
    p = probe(path)
    assert "audio:aac" in p.streams
    audio = decoded_audio(path)
    assert abs(len(audio) / 22050 - len(frames) / FPS) < 0.1  # the track runs with the video, no longer
    energy = np.abs(audio)
    onset = int(np.argmax(energy > 0.02)) / 22050
    # AAC's encoder delay (a frame of 1024 samples, ~46 ms) and espeak's own lead-in are all it may move by.
    assert 0.8 <= onset <= 0.8 + 0.25, onset
    assert energy[: int(0.75 * 22050)].max() < 0.005  # silence before the utterance


def test_offline_audio_is_the_same_whatever_the_renderer_timing(
    frames: list[np.ndarray], speech_wav: Path, tmp_path: Path
) -> None:
    """Reserved on file time, rendered later by another thread: the samples do not depend on when."""
    pcm = read_wav(speech_wav, 22050)
    outs = []
    for delay in (0.0, 0.3):
        path = tmp_path / f"det{delay}.mp4"
        with Recorder(path, FPS, H264Settings(preset="ultrafast"), audio=True, subtitles=False) as rec:
            assert rec.audio is not None
            for i, img in enumerate(frames):
                if i == 5:
                    key = rec.audio.reserve(i / FPS)
                    audio = rec.audio

                    def render(key: int = key, tl: AudioTimeline = audio, d: float = delay) -> None:
                        time.sleep(d)
                        tl.fill(key, pcm)

                    threading.Thread(target=render, daemon=True).start()
                rec.write(img)
        outs.append(decoded_audio(path))
    assert len(outs[0]) == len(outs[1])
    assert np.array_equal(outs[0], outs[1])
    assert np.abs(outs[0]).max() > 0.05  # the utterance is there, not two equal silences


def test_audio_timeline_moves_a_late_live_utterance_instead_of_dropping_it() -> None:
    tl = AudioTimeline(1000)
    tl.render(500)  # 0.5 s already written
    tl.add(np.ones(100, dtype=np.float32) * 0.5, 0.2)  # started at 0.2 s, arrived late
    block = tl.render(200)
    assert tl.moved_late == 1
    assert np.count_nonzero(block) == 100 and block[0] == 0.5


def test_audio_timeline_mixes_overlapping_utterances_and_clips() -> None:
    tl = AudioTimeline(1000)
    tl.add(np.full(300, 0.7, dtype=np.float32), 0.0)
    tl.add(np.full(300, 0.7, dtype=np.float32), 0.1)
    out = tl.render(500)
    assert out[50] == pytest.approx(0.7)
    assert out[150] == 1.0  # 1.4 clipped, not wrapped
    assert out[350] == pytest.approx(0.7) and out[450] == 0.0


def test_read_wav_resamples_to_the_track_rate(speech_wav: Path) -> None:
    import wave

    with wave.open(str(speech_wav)) as w:
        src_rate, n = w.getframerate(), w.getnframes()
    pcm = read_wav(speech_wav, 48000)
    assert abs(len(pcm) - n * 48000 / src_rate) <= 1
    assert np.abs(pcm).max() <= 1.0


def test_a_full_disk_is_a_one_line_error_naming_the_file(frames: list[np.ndarray], tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.fail("/dev/full is part of every Linux system this runs on")
    path = tmp_path / "drive.mp4"
    path.symlink_to("/dev/full")  # every write fails with ENOSPC, a real full disk
    rec = Recorder(path, FPS, H264Settings(preset="ultrafast"))
    with pytest.raises(RecorderError) as info:
        for img in frames:
            rec.write(img)
        rec.close()
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "No space left on device" in msg


def test_a_full_disk_in_a_loop_segment_stops_writing_without_raising(
    frames: list[np.ndarray], tmp_path: Path
) -> None:
    """Not strict (a loop segment): the recorder says why in ``failed`` and the segment recorder warns."""
    path = tmp_path / "seg.mp4"
    path.symlink_to("/dev/full")
    rec = Recorder(path, FPS, H264Settings(preset="ultrafast"), strict=False)
    for img in frames:
        rec.write(img)
    assert rec.failed is not None and "No space left" in rec.failed
    assert rec.frames < len(frames)  # it stopped, it did not pretend


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(RecorderError, match="preset 'turbo'"):
        Recorder("x.mp4", FPS, H264Settings(preset="turbo"))


@pytest.mark.slow
def test_the_recording_plays_in_headless_chromium_with_its_audio(
    frames: list[np.ndarray], speech_wav: Path, tmp_path: Path
) -> None:
    """Debian's chromium, driven by Playwright: readyState 4, time advancing, the audio track decoded."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(
            "chromium is installed by scripts/setup.sh (apt-get install chromium); it is missing here"
        )
    path = tmp_path / "drive.mp4"
    with Recorder(path, FPS, H264Settings(preset="ultrafast"), audio=True) as rec:
        assert rec.audio is not None
        rec.audio.add(read_wav(speech_wav, 22050), 0.1)
        for i, img in enumerate(frames):
            rec.show("car ahead", i / FPS)
            rec.write(img)
    page_file = tmp_path / "play.html"
    page_file.write_text(f'<html><body><video id="v" src="{path.name}" autoplay></video></body></html>')
    state = (
        "(() => { const v = document.getElementById('v'); return {ready: v.readyState, t: v.currentTime, "
        "error: v.error ? v.error.code : null, audio: v.webkitAudioDecodedByteCount} })()"
    )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        )
        try:
            page = browser.new_page()
            page.goto(page_file.as_uri())
            page.wait_for_function(
                "(() => { const v = document.getElementById('v'); return v.error || (v.readyState >= 4 "
                "&& v.currentTime > 0.5) })()",
                timeout=30_000,
            )
            s = page.evaluate(state)
        finally:
            browser.close()
    assert s["error"] is None, s  # mp4v gives MEDIA_ERR_SRC_NOT_SUPPORTED (4) here
    assert s["ready"] == 4 and s["t"] > 0.5
    assert s["audio"] > 0, s  # the AAC track is there and Chromium decodes it


def test_captions_with_live_gaps_never_span_a_fragment(frames: list[np.ndarray], tmp_path: Path) -> None:
    """The live pattern: the caption is shown at the time the next write_at fills up to (dropped frames),
    across keyframes. FFmpeg aborts the process on a subtitle sample spanning two fragments; this runs it."""
    path = tmp_path / "gaps.mp4"
    t = 0.0
    with Recorder(path, FPS, H264Settings(preset="ultrafast", keyint_s=0.5), piece_s=0.2) as rec:
        for i, img in enumerate(frames):
            t += (1 + (i % 4) * 3) / FPS  # 1 to 10 frame periods between delivered frames
            rec.show(f"caption {i // 3}", t)
            rec.write_at(img, t)
    p = probe(path)
    assert p.video_frames == rec.frames > len(frames)
    assert "caption 0" in p.subtitle_texts and f"caption {(len(frames) - 1) // 3}" in p.subtitle_texts


def test_srt_writes_a_long_caption_in_cues_of_at_most_cue_max_s(tmp_path: Path) -> None:
    from drivecap.outputs.subtitles import SubtitleSink, parse_srt

    path = tmp_path / "long.srt"
    with SubtitleSink(path, max_cue_s=2.0) as srt:
        for i in range(176):  # 7 s of one caption at 25 fps
            srt.show("person close ahead", i / FPS)
            if i == 100:
                # Mid-run, the file already holds the caption up to the last piece (what a crash keeps).
                done = parse_srt(path.read_text(encoding="utf-8"))
                assert done and done[-1][1] >= 2.0
        srt.finish(176 / FPS)
    cues = parse_srt(path.read_text(encoding="utf-8"))
    assert len(cues) == 4 and {c[2] for c in cues} == {"person close ahead"}
    assert all(b - a <= 2.0 + 1e-9 for a, b, _ in cues)
    assert all(cues[k][1] == cues[k + 1][0] for k in range(3))  # contiguous: no gap, no overlap
