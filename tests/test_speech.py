"""Speech: the newest-wins / repeat / gap / urgent policy, WAV rendering through espeak-ng, and a TTS that
is missing going silent with one warning."""

from __future__ import annotations

import itertools
import wave
from pathlib import Path

import pytest

from drivecap.config import SpeechConfig
from drivecap.outputs.speech import SpeechPolicy, SpeechRequest, SpeechWorker
from drivecap.outputs.tts import EspeakBackend, estimate_duration_s
from drivecap.pipeline.capture import wait_until


def _req(text: str, cid: int, t: float, urgent: bool = False) -> SpeechRequest:
    return SpeechRequest(text, urgent, cid, t)


def test_policy_newest_caption_wins_and_min_gap_holds() -> None:
    p = SpeechPolicy(SpeechConfig(min_gap_s=2.0, repeat_window_s=10.0))
    p.offer(_req("clear road ahead", 1, 0.0))
    assert p.take(0.0).text == "clear road ahead"  # type: ignore[union-attr]
    p.offer(_req("car ahead", 2, 0.5))
    p.offer(_req("truck on the right", 3, 1.0))
    assert p.take(1.5) is None  # within the gap
    assert p.next_due(1.5) == pytest.approx(2.0)
    got = p.take(2.0)
    assert got is not None and got.caption_id == 3 and p.replaced == 1
    assert p.take(10.0) is None and not p.pending


def test_policy_drops_repeats_within_the_window_only() -> None:
    p = SpeechPolicy(SpeechConfig(min_gap_s=0.0, repeat_window_s=5.0))
    p.offer(_req("clear road ahead", 1, 0.0))
    assert p.take(0.0) is not None
    p.offer(_req("clear road ahead", 2, 3.0))
    assert p.take(3.0) is None and p.repeats == 1
    p.offer(_req("car ahead", 3, 3.5))
    assert p.take(3.5) is not None
    p.offer(_req("clear road ahead", 4, 4.0))  # A, B, A: still a repeat of A
    assert p.take(4.0) is None and p.repeats == 2
    p.offer(_req("clear road ahead", 5, 6.0))
    assert p.take(6.0) is not None


def test_policy_urgent_goes_first_and_skips_the_gap() -> None:
    p = SpeechPolicy(SpeechConfig(min_gap_s=3.0, repeat_window_s=10.0))
    p.offer(_req("clear road ahead", 1, 0.0))
    p.take(0.0)
    p.offer(_req("road curves left", 2, 0.5))
    p.offer(_req("person close ahead", 3, 0.6, urgent=True))
    p.offer(_req("car on the left", 4, 0.7))
    first = p.take(0.7)
    assert first is not None and first.urgent and first.caption_id == 3
    p.mark_busy(2.0)
    assert p.take(1.0) is None  # still speaking the urgent one
    second = p.take(3.7)
    assert second is not None and second.caption_id == 4  # the older normal caption 2 was superseded


def test_estimate_duration_grows_with_words() -> None:
    assert estimate_duration_s("car ahead", 175) < estimate_duration_s("car close ahead in your lane", 175)


def _wav_frames(path: Path) -> int:
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return w.getnframes()


def test_wav_backend_on_file_time_is_deterministic(tmp_path: Path) -> None:
    cfg = SpeechConfig(backend="wav", min_gap_s=1.0, repeat_window_s=4.0)
    captions = [
        (0.0, "clear road ahead"),
        (0.4, "car ahead"),
        (0.8, "car ahead , road curves left"),
        (2.0, "clear road ahead"),
        (3.0, "person close ahead"),
        (6.0, "clear road ahead"),
    ]
    runs = []
    for run in range(2):
        events: list[dict[str, object]] = []
        out = tmp_path / f"run{run}"
        with SpeechWorker(cfg, clock="source", out_dir=out, name="clip", on_event=events.append) as sw:
            t = 0.0
            pending = list(enumerate(captions, 1))
            while t < 10.0:
                while pending and pending[0][1][0] <= t:
                    cid, (_, text) = pending.pop(0)
                    sw.submit(text, text.startswith("person"), cid, t)
                sw.tick(t)
                t = round(t + 0.04, 2)
        runs.append(events)
        texts = [e["text"] for e in events]
        assert len(events) <= len(captions)
        # "clear road ahead" at 2.0 s repeats the one spoken at 0.0 s inside the 4 s window: dropped
        assert texts == [
            "clear road ahead",
            "car ahead , road curves left",
            "person close ahead",
            "clear road ahead",
        ]
        starts = [float(e["t"]) for e in events]  # type: ignore[arg-type]
        assert all(b - a >= 1.0 for a, b in itertools.pairwise(starts))
        for e in events:
            assert _wav_frames(out / str(e["file"])) > 1000
    assert runs[0] == runs[1]


def test_wall_clock_worker_speaks_newest_after_the_gap(tmp_path: Path) -> None:
    cfg = SpeechConfig(backend="wav", min_gap_s=0.6, repeat_window_s=30.0)
    events: list[dict[str, object]] = []
    with SpeechWorker(cfg, clock="wall", out_dir=tmp_path, name="live", on_event=events.append) as sw:
        sw.submit("clear road ahead", False, 1, 0.0, t_capture=1.0)
        assert wait_until(lambda: len(events) == 1, 20)
        sw.submit("car ahead", False, 2, 0.0)
        sw.submit("truck ahead", False, 3, 0.0)
        sw.submit("truck ahead", False, 4, 0.0)
        assert wait_until(lambda: len(events) == 2, 20)
    assert [e["text"] for e in events] == ["clear road ahead", "truck ahead"]
    assert len(list(tmp_path.glob("live.speech*.wav"))) == 2
    assert sw.metrics.samples("glass_to_speech"), "speech start recorded against the capture time"


def test_missing_tts_warns_once_and_goes_silent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng anywhere
    events: list[dict[str, object]] = []
    with caplog.at_level("WARNING", logger="drivecap.outputs.speech"):
        with SpeechWorker(
            SpeechConfig(backend="espeak", min_gap_s=0.0), backend=EspeakBackend(175), on_event=events.append
        ) as sw:
            for i in range(3):
                sw.submit(f"caption {i}", False, i, 0.0)
        assert sw.silent and events == []
    warnings = [r for r in caplog.records if "speech off" in r.getMessage()]
    assert len(warnings) == 1 and "espeak-ng" in warnings[0].getMessage()
