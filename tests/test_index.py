"""The caption index and its search on event logs shaped like replays' (the fleet tests use real ones)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from drivecap.fleet import FAILED_DIR, MANIFEST_NAME
from drivecap.fleet.index import build_index, build_index_stats
from drivecap.fleet.search import SearchError, list_drives, search_captions
from drivecap.outputs.thumbnails import thumbnail_path
from tests.conftest import assert_one_line_error, run_cli


def _log(folder: Path, name: str, captions: list[tuple[float, str, bool]], recorded: float | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [{"event": "start", "source": name, "fps": 10.0, "frames": 100}]
    for i, (t, text, urgent) in enumerate(captions, start=1):
        lines.append({"event": "gate", "frame": int(t * 10), "t": t, "open": True})
        lines.append(
            {"event": "caption", "id": i, "frame": int(t * 10), "t": t, "text": text, "urgent": urgent}
        )
    lines.append({"event": "end", "frames_in": 100, "frames_out": 100, "captions": len(captions)})
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    if recorded is not None:
        (folder / MANIFEST_NAME).write_text(
            json.dumps(
                {"drive": name, "source": f"/drives/{name}.mp4", "sha256": "ab" * 32, "recorded": recorded}
            )
        )
    return path


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    root = tmp_path / "out"
    _log(
        root / "monday",
        "monday",
        [(1.0, "car close ahead , person on the left", True), (3.5, "clear road ahead", False)],
        recorded=1000.0,
    )
    _log(
        root / "tuesday",
        "tuesday",
        [
            (0.5, "person close ahead", True),
            (2.0, "car on the left , red light ahead", True),
            (4.0, "road curves left", False),
        ],
        recorded=2000.0,
    )
    _log(root, "single", [(2.0, "truck on the right", False)], recorded=None)  # a plain `drivecap replay`
    os.utime(root / "single.jsonl", (500.0, 500.0))
    thumb = thumbnail_path(root / "tuesday", "tuesday", 1)
    thumb.parent.mkdir()
    thumb.write_bytes(b"\xff\xd8\xff\xd9")
    (root / "notes.jsonl").write_text('{"something": "else"}\n')  # not an event log: skipped
    (root / FAILED_DIR).mkdir()
    (root / FAILED_DIR / "wednesday.json").write_text(
        json.dumps(
            {
                "drive": "wednesday",
                "source": "/drives/wednesday.mp4",
                "reason": "cannot open video file",
                "recorded": 3000.0,
            }
        )
    )
    return root


def test_index_tables_facts_and_wal(out: Path) -> None:
    db, stats = build_index_stats(out)
    assert db == out / "index.sqlite"
    assert (stats.drives, stats.failed, stats.captions, stats.skipped_logs) == (3, 1, 6, 1)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = con.execute(
        "SELECT name, folder, status, frames, duration_s, captions, source FROM drives ORDER BY name"
    ).fetchall()
    assert rows == [
        ("monday", "monday", "ok", 100, 10.0, 2, "/drives/monday.mp4"),
        ("single", "", "ok", 100, 10.0, 1, None),
        ("tuesday", "tuesday", "ok", 100, 10.0, 3, "/drives/tuesday.mp4"),
        ("wednesday", "", "failed", None, None, 0, "/drives/wednesday.mp4"),
    ]
    facts = con.execute(
        "SELECT f.kind, f.family, f.place, f.distance, f.colour FROM facts f JOIN captions c ON c.id = f.caption_id "
        "WHERE c.text = 'car on the left , red light ahead' ORDER BY f.kind"
    ).fetchall()
    assert facts == [("car", "vehicle", "left", "far", ""), ("traffic light", "light", "ahead", "far", "red")]
    keys = {k for (k,) in con.execute("SELECT key FROM fact_keys")}
    assert {"vehicle:ahead:close", "person:left", "light:red", "road:curve left", "vehicle:right"} <= keys
    con.close()


def test_search_text_facts_urgent_drive_newest_first(out: Path) -> None:
    build_index(out)
    hits = search_captions(out, text="person ahead")
    # every word must be in the caption, anywhere: monday's "car close ahead , person on the left" has both
    assert [(h["drive"], h["t"]) for h in hits] == [("tuesday", 0.5), ("monday", 1.0)]
    assert hits[0] == {
        "drive": "tuesday",
        "t": 0.5,
        "frame": 5,
        "text": "person close ahead",
        "urgent": True,
        "thumbnail": os.path.join("tuesday", "tuesday.thumbs", "00001.jpg"),
        "folder": "tuesday",
    }
    assert hits[1]["thumbnail"] is None
    assert [h["text"] for h in search_captions(out, fact="person:ahead:close")] == ["person close ahead"]
    assert [h["drive"] for h in search_captions(out, fact="person:left")] == ["monday"]
    assert [h["text"] for h in search_captions(out, fact="car:left")] == ["car on the left , red light ahead"]
    assert [h["text"] for h in search_captions(out, fact="light:red")] == [
        "car on the left , red light ahead"
    ]
    assert [h["drive"] for h in search_captions(out, fact="vehicle:right")] == ["single"]
    urgent = search_captions(out, urgent=True)
    assert [h["drive"] for h in urgent] == [
        "tuesday",
        "tuesday",
        "monday",
    ]  # newest drive first, then by time
    assert all(h["urgent"] for h in urgent)
    assert [h["t"] for h in search_captions(out, urgent=False, drive="tuesday")] == [4.0]
    assert len(search_captions(out, limit=2)) == 2
    everything = search_captions(out)
    assert [h["drive"] for h in everything] == ["tuesday"] * 3 + ["monday"] * 2 + ["single"]
    assert search_captions(out, text="bicycle") == []
    drives = list_drives(out)
    assert drives[0]["name"] == "wednesday" and drives[0]["status"] == "failed"
    assert drives[0]["reason"] == "cannot open video file"


def test_rebuild_replaces_the_index_and_an_open_reader_keeps_the_old_one(out: Path) -> None:
    db = build_index(out)
    reader = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    assert reader.execute("SELECT count(*) FROM captions").fetchone()[0] == 6
    _log(out / "thursday", "thursday", [(1.0, "bus close ahead", True)], recorded=4000.0)
    build_index(out)
    assert reader.execute("SELECT count(*) FROM captions").fetchone()[0] == 6  # still the old file
    reader.close()
    assert [h["drive"] for h in search_captions(out, text="bus")] == ["thursday"]
    assert search_captions(out)[0]["drive"] == "thursday"
    assert not list(out.glob(".index.sqlite*"))  # no temp file left


def test_a_log_cut_mid_line_keeps_the_captions_before_the_cut(out: Path) -> None:
    path = out / "monday" / "monday.jsonl"
    text = path.read_text()
    cut = text.index('"clear road ahead"')
    path.write_text(text[:cut])
    build_index(out)
    assert [h["text"] for h in search_captions(out, drive="monday")] == [
        "car close ahead , person on the left"
    ]


def test_bad_queries_and_folders(out: Path, tmp_path: Path) -> None:
    with pytest.raises(SearchError, match="drivecap index"):
        search_captions(out, text="car")  # not built yet
    build_index(out)
    with pytest.raises(SearchError, match="unknown fact 'dragon:ahead'"):
        search_captions(out, fact="dragon:ahead")
    with pytest.raises(SearchError, match="third part"):
        search_captions(out, fact="car:ahead:far")
    with pytest.raises(SearchError, match="no words"):
        search_captions(out, text="!!")
    # FTS5 syntax in the user's words is only words
    assert search_captions(out, text='person" OR car NEAR(') == []
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(SearchError, match="rebuild it"):
        search_captions(junk)


def test_index_and_search_commands(out: Path, tmp_path: Path) -> None:
    proc = run_cli("index", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "3 drives, 6 captions, 1 failed" in proc.stdout
    proc = run_cli("search", str(out), "red light", "--json")
    assert proc.returncode == 0, proc.stderr
    (hit,) = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert hit["drive"] == "tuesday" and hit["t"] == 2.0
    proc = run_cli("search", str(out), "--fact", "person:ahead:close", "--urgent")
    assert proc.returncode == 0 and proc.stdout.startswith("tuesday\t"), proc.stdout
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert_one_line_error(run_cli("index", str(a_file)), str(a_file), "not a folder")
    assert_one_line_error(run_cli("search", str(tmp_path / "nowhere"), "car"), "nowhere", "drivecap index")
    assert_one_line_error(run_cli("search", str(out), "--fact", "person:up"), "person:up")


def test_thumbnail_sink_writes_a_small_jpeg_of_the_frame(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    from drivecap.outputs.thumbnails import ThumbnailSink

    img = np.zeros((360, 640, 3), np.uint8)
    img[:, 320:] = (0, 0, 255)  # right half red
    with ThumbnailSink(tmp_path, "drive") as sink:
        path = sink.write(7, img)
    assert path == tmp_path / "drive.thumbs" / "00007.jpg"
    back = cv2.imread(str(path))
    assert back.shape == (180, 320, 3)
    assert back[90, 300, 2] > 200 and back[90, 20, 2] < 30
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder would go")
    assert ThumbnailSink(blocked, "d").write(1, img) is None  # logged, the run goes on
