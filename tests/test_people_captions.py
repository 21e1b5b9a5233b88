"""Captions are written for people wherever a person reads or hears them; the token form stays for machines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from drivecap.assets import AssetStore
from drivecap.captions.grammar import for_people, parse, tokenize
from drivecap.config import load_config
from drivecap.outputs.overlay import Overlay
from drivecap.outputs.subtitles import parse_srt
from drivecap.outputs.tts import backend_for_job, live_backend
from drivecap.pipeline.core import Outputs
from drivecap.pipeline.inference import load_models
from drivecap.pipeline.runner import Pipeline
from drivecap.pipeline.sources import open_source
from tests.conftest import REPO, run_cli, write_short_clip


@pytest.mark.parametrize(
    ("tokens", "people"),
    [
        ("car close on the left , road curves left", "Car close on the left, road curves left."),
        ("clear road ahead", "Clear road ahead."),
        ("person close ahead , red light ahead", "Person close ahead, red light ahead."),
        ("  car ahead ,  truck on the right ", "Car ahead, truck on the right."),
        ("", ""),
    ],
)
def test_for_people(tokens: str, people: str) -> None:
    assert for_people(tokens) == people
    assert for_people(people) == people  # already a sentence: unchanged
    if tokens.strip():
        assert tokenize(people) == tokenize(tokens) and parse(people) == parse(tokens)


def _sentence(text: str) -> bool:
    return bool(text) and text[0].isupper() and text.endswith(".") and " ," not in text


@pytest.mark.slow
def test_real_replay_writes_people_text_and_keeps_tokens(
    tmp_path: Path, store: AssetStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped model on real frames: the overlay draws, and SRT/VTT hold, sentences; JSONL keeps tokens."""
    clip = write_short_clip(store, tmp_path / "drive.mp4", 30, 4, 30.0)
    cfg = load_config(
        REPO / "config.yaml", ["gate.min_interval_s=0", "gate.max_age_s=0.3", "speech.backend=none"]
    )
    drawn: list[str] = []
    real_set_caption = Overlay.set_caption

    def spy(self: Overlay, text: str | None, *args: Any, **kwargs: Any) -> None:
        drawn.append(text or "")
        real_set_caption(self, text, *args, **kwargs)

    monkeypatch.setattr(Overlay, "set_caption", spy)
    enc, cap = load_models(cfg)
    with enc:
        s = Pipeline(
            cfg, enc, cap, Outputs(tmp_path / "out", "drive", window=False), mode="offline", stride=3
        ).run(open_source(str(clip), cfg.capture))
    assert s.captions >= 2
    events = [json.loads(x) for x in (tmp_path / "out" / "drive.jsonl").read_text().splitlines()]
    caps = [e for e in events if e["event"] == "caption"]
    assert caps and all(_sentence(e["text"]) for e in caps)
    assert all(e["tokens"] == " ".join(tokenize(e["tokens"])) for e in caps)  # the model's token form
    assert all(for_people(e["tokens"]) == e["text"] for e in caps)
    assert [t for t in drawn if t] and all(_sentence(t) for t in drawn if t)
    cues = parse_srt((tmp_path / "out" / "drive.srt").read_text(encoding="utf-8"))
    assert cues and all(_sentence(c[2]) for c in cues)
    vtt = (tmp_path / "out" / "drive.vtt").read_text(encoding="utf-8")
    assert all(c[2] in vtt for c in cues)


def test_speech_default_depends_on_the_job() -> None:
    assert load_config(None).speech.backend == "auto"
    for job in ("replay", "bench", "fleet"):
        assert backend_for_job("auto", job) == ("none", None)
    assert backend_for_job("wav", "replay") == ("wav", None)
    assert backend_for_job("none", "run") == ("none", None)
    backend, warning = backend_for_job("auto", "run")
    expect, why = live_backend()
    assert backend == expect
    assert (warning is None) == (backend != "none")
    if warning is not None:
        assert why in warning and "--speech" in warning


def test_live_run_without_sound_warns_once_and_goes_on(tmp_path: Path, store: AssetStore) -> None:
    backend, _ = live_backend()
    clip = write_short_clip(store, tmp_path / "cam.mp4", 8, 4, 30.0)
    proc = run_cli(
        "--set", "encoder.warmup_runs=0", "run", "--source", str(clip), "--no-window", "--max-frames", "8"
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [ln for ln in proc.stderr.splitlines() if "captions are shown but not spoken" in ln]
    assert len(warnings) == (1 if backend == "none" else 0)
    replay = run_cli("replay", str(clip), "--out", str(tmp_path / "r"), "--no-progress")
    assert replay.returncode == 0 and "not spoken" not in replay.stderr
