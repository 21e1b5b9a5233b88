"""Any caption text (unicode, control characters, very long, empty) keeps overlay, SRT, WebVTT and JSONL valid."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivecap.config import OverlayConfig
from drivecap.outputs.events import EventLog
from drivecap.outputs.overlay import HudInfo, Overlay
from drivecap.outputs.subtitles import SubtitleSink, parse_srt

# Every code point class, surrogates included, plus the strings that break subtitle formats.
nasty = st.sampled_from(
    [
        "\n",
        "\n\n",
        "\r\n",
        " --> ",
        "-->",
        "<b>",
        "&amp;",
        "\x00",
        "\x1b[31m",
        "\u2028",
        "\ufeff",
        "\ud800",
        "WEBVTT",
        "NOTE",
        "1",
        "00:00:01,000 --> 00:00:02,000",
    ]
)
texts = st.lists(st.one_of(st.text(max_size=60), nasty), max_size=8).map("".join) | st.text(
    min_size=300, max_size=2000
)
captions = st.lists(texts, min_size=1, max_size=6)

SRT_TIME = r"\d\d:\d\d:\d\d,\d\d\d"
VTT_TIME = r"\d\d:\d\d:\d\d\.\d\d\d"


def check_vtt(text: str, cues: int) -> None:
    assert text.startswith("WEBVTT\n\n")
    blocks = [b for b in text[len("WEBVTT\n\n") :].split("\n\n") if b]
    assert len(blocks) == cues
    for block in blocks:
        lines = block.split("\n")
        assert re.fullmatch(rf"{VTT_TIME} --> {VTT_TIME}", lines[1]), lines
        for payload in lines[2:]:
            assert payload and "-->" not in payload  # a blank or arrow line would end or fake a cue
    assert text.endswith("\n\n") or cues == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(caps=captions)
def test_any_caption_keeps_every_format_valid(tmp_path: Path, caps: list[str]) -> None:
    overlay = Overlay(OverlayConfig())
    frame = np.zeros((360, 640, 3), np.uint8)
    srt_path, vtt_path, ev_path = tmp_path / "c.srt", tmp_path / "c.vtt", tmp_path / "c.jsonl"
    with SubtitleSink(srt_path) as srt, SubtitleSink(vtt_path) as vtt, EventLog(ev_path) as log:
        for i, text in enumerate(caps):
            t = 1.0 + i
            overlay.set_caption(text, urgent=i % 2 == 0, t=t)
            overlay.draw(frame, t + 0.1, HudInfo(fps=25.0, encoder_ms=40.0, decoder_ms=5.0, gate="open"))
            assert frame.shape == (360, 640, 3) and frame.dtype == np.uint8
            srt.show(text, t)
            vtt.show(text, t)
            log.write({"type": "caption", "text": text, "i": i})
        srt.finish(len(caps) + 1.0)
        vtt.finish(len(caps) + 1.0)
    srt_cues = parse_srt(srt_path.read_text(encoding="utf-8"))
    for start, end, payload in srt_cues:
        assert 0 <= start < end
        assert "-->" not in payload and "\n\n" not in payload
    check_vtt(vtt_path.read_text(encoding="utf-8"), srt.cues)
    assert srt.cues == vtt.cues == len(srt_cues)
    lines = ev_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(caps)
    for i, line in enumerate(lines):
        assert json.loads(line)["i"] == i
