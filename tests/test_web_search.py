"""The drive browser's search box answers from the fleet's caption index (the same query code as `drivecap search`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drivecap.assets import AssetStore
from drivecap.fleet.search import search_captions
from drivecap.web.server import WebServer
from tests.conftest import run_cli, write_short_clip
from tests.web_helpers import raw_get


@pytest.mark.slow
def test_search_box_finds_what_the_index_holds(tmp_path: Path, store: AssetStore) -> None:
    out = tmp_path / "out"
    clip = write_short_clip(store, tmp_path / "drive.mp4", 30, 4, 30.0)
    replay = run_cli(
        "--set", "gate.min_interval_s=0", "--set", "gate.max_age_s=0.3",
        "replay", str(clip), "--out", str(out / "drive"), "--stride", "3", "--no-progress",
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr[-2000:]
    index = run_cli("index", str(out))
    assert index.returncode == 0, index.stderr[-2000:]
    rows = search_captions(out / "index.sqlite", limit=50)
    assert rows, "the replay's captions are in the index"
    word = rows[0]["text"].split()[0].strip(".,").lower()
    with WebServer("127.0.0.1", 0, root=out) as srv:
        status, body = raw_get(srv.port, "/api/drives")
        assert status == 200 and json.loads(body)["search"] is True
        status, body = raw_get(srv.port, f"/api/search?q={word}")
        assert status == 200
        hits = json.loads(body)
        hits = hits["results"]
        want = search_captions(out / "index.sqlite", text=word, limit=50)
        assert len(hits) == len(want) > 0
        assert all(word in h["text"].lower() and h["playable"] and h["drive"] == "drive/drive" for h in hits)
