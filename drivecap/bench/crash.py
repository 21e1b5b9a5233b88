"""Crash safety, for real: ``drivecap replay`` / ``drivecap run`` in a subprocess, SIGKILLed at a random
moment, and what it left behind checked the way a user would open it.

After each kill: every MP4 decodes with PyAV up to within ``max_loss_s`` of the moment of the kill (the
moment is read from the run's own event log, which is flushed per line: the last frame it logged was being
output when the process died); SRT/VTT parse strictly up to their last complete cue and JSONL up to its
last complete line; for a live run (loop recording) the segment index and the files agree once the next
run has started (its start-up repair, ``SegmentRecorder.recover``). Live kills reuse one output folder, so
every restart also repairs what the previous kill left.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from drivecap.outputs.probe import probe
from drivecap.outputs.recorder import RecorderError
from drivecap.outputs.segment_index import INDEX, check_folder
from drivecap.outputs.segments import SegmentRecorder
from drivecap.outputs.subtitles import parse_srt

MAX_LOSS_S = 1.5


@dataclass
class KillResult:
    kind: str
    kill_after_s: float
    logged_s: float = 0.0  # video time of the last frame the event log shows as output
    decoded_s: float = 0.0  # video time up to which the MP4(s) decode
    lost_s: float = 0.0
    srt_cues: int = 0
    vtt_cues: int = 0
    jsonl_lines: int = 0
    segments: int = 0
    index_matches: bool | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        seg = f", {self.segments} segments, index = files {self.index_matches}" if self.kind == "live" else ""
        return (
            f"{self.kind}: killed after {self.kill_after_s:.2f} s; logged {self.logged_s:.2f} s, decodes "
            f"{self.decoded_s:.2f} s (lost {self.lost_s:.2f} s); srt {self.srt_cues} cues, vtt "
            f"{self.vtt_cues}, jsonl {self.jsonl_lines} lines{seg}"
            + ("" if self.ok else f"; PROBLEMS: {'; '.join(self.problems)}")
        )


def complete_part(text: str) -> str:
    """A subtitle file up to its last complete cue (a killed writer may leave half a block after it)."""
    cut = text.rfind("\n\n")
    return text[: cut + 2] if cut >= 0 else ""


def parse_vtt(text: str) -> int:
    """Cues in strict WebVTT as SubtitleSink writes it; raises ValueError on anything malformed."""
    if not text:  # killed before the first cue: the header is written (buffered) with it
        return 0
    if not text.startswith("WEBVTT\n\n"):
        raise ValueError("no WEBVTT header")
    blocks = [b for b in text[len("WEBVTT\n\n") :].split("\n\n") if b.strip()]
    t = r"\d\d:\d\d:\d\d\.\d\d\d"
    for n, b in enumerate(blocks, 1):
        lines = b.split("\n")
        if len(lines) < 3 or lines[0] != str(n) or not re.fullmatch(f"{t} --> {t}", lines[1]):
            raise ValueError(f"VTT block {n} malformed: {b!r}")
    return len(blocks)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete line (a killed writer may leave a partial last one, without its newline)."""
    raw = path.read_text(encoding="utf-8")
    lines = raw.split("\n")
    complete = lines[:-1]  # the piece after the last newline is partial or empty
    return [json.loads(line) for line in complete if line]


def check_text_outputs(folder: Path, name: str, res: KillResult) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for ext in ("srt", "vtt", "jsonl"):
        p = folder / f"{name}.{ext}"
        if not p.is_file():
            res.problems.append(f"{p.name} missing")
            continue
        try:
            if ext == "srt":
                res.srt_cues = len(parse_srt(complete_part(p.read_text(encoding="utf-8"))) or [])
            elif ext == "vtt":
                res.vtt_cues = parse_vtt(complete_part(p.read_text(encoding="utf-8")))
            else:
                events = read_jsonl(p)
                res.jsonl_lines = len(events)
        except (ValueError, UnicodeDecodeError) as exc:
            res.problems.append(f"{p.name} does not parse: {exc}")
    return events


def _spawn(args: list[str], env: dict[str, str] | None, log_file: Path) -> subprocess.Popen[bytes]:
    full = dict(os.environ)
    full.update(env or {})
    with open(log_file, "ab") as err:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "drivecap", *args], stdout=subprocess.DEVNULL, stderr=err, env=full
        )


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float, gates: int = 1) -> float:
    """Until the run's event log shows ``gates`` gate events (frames through the model); returns when the
    first one was seen (monotonic)."""
    t_end = time.monotonic() + timeout
    t_first: float | None = None
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            tail = (path.parent / "stderr.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(
                f"drivecap exited with {proc.returncode} before {gates} frames were output: {' | '.join(tail)}"
            )
        n = (
            path.read_text(encoding="utf-8", errors="replace").count('"event":"gate"')
            if path.is_file()
            else 0
        )
        if n and t_first is None:
            t_first = time.monotonic()
        if n >= gates and t_first is not None:
            return t_first
        time.sleep(0.05)
    raise RuntimeError(f"fewer than {gates} frames output within {timeout:.0f} s")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def kill_replay(
    cli_sets: list[str],
    clip: str,
    out: Path,
    delay_s: float,
    fps: float,
    env: dict[str, str] | None = None,
    after_frames: int = 1,
    stride: int = 1,
) -> KillResult:
    """``drivecap replay`` (offline: every frame logged as it is output) killed ``delay_s`` after its
    ``after_frames``-th output frame. With ``replay.stride`` N in ``cli_sets`` pass ``stride=N``: only every
    N-th frame is logged, so the moment of the kill is taken as up to N-1 frames after the last one logged."""
    out.mkdir(parents=True, exist_ok=True)
    name = Path(clip).stem
    proc = _spawn(
        [*cli_sets, "replay", clip, "--out", str(out), "--mode", "offline", "--no-progress"],
        env,
        out / "stderr.log",
    )
    res = KillResult("replay", delay_s)
    try:
        _wait_for(out / f"{name}.jsonl", proc, 300, gates=max(1, after_frames // stride))
        time.sleep(delay_s)
    finally:
        if proc.poll() is None:
            _kill(proc)
    events = check_text_outputs(out, name, res)
    frames = [e["frame"] for e in events if e.get("event") == "gate"]
    res.logged_s = (max(frames) + stride) / fps if frames else 0.0
    try:
        p = probe(out / f"{name}.mp4")
        res.decoded_s = p.video_frames / fps
    except RecorderError as exc:
        if res.logged_s > MAX_LOSS_S:  # before the first fragment is complete, no frame is what is right
            res.problems.append(str(exc))
    res.lost_s = max(0.0, res.logged_s - res.decoded_s)
    if res.lost_s > MAX_LOSS_S:
        res.problems.append(f"video lost {res.lost_s:.2f} s > {MAX_LOSS_S} s")
    return res


def kill_live(
    cli_sets: list[str], url: str, out: Path, delay_s: float, env: dict[str, str] | None = None
) -> KillResult:
    """``drivecap run URL --out`` (loop recording) killed ``delay_s`` after its first output frame."""
    from drivecap.pipeline.runner import safe_name
    from drivecap.pipeline.sources import parse_source

    name = safe_name(parse_source(url).name, "live")
    out.mkdir(parents=True, exist_ok=True)
    for p in out.glob(f"{name}.*"):  # one kill's text outputs at a time (the segments folder stays)
        if p.is_file():
            p.unlink()
    proc = _spawn(
        [*cli_sets, "run", "--source", url, "--out", str(out), "--no-window"], env, out / "stderr.log"
    )
    res = KillResult("live", delay_s)
    try:
        _wait_for(out / f"{name}.jsonl", proc, 300)
        time.sleep(delay_s)
        t_kill = time.time()
    finally:
        if proc.poll() is None:
            _kill(proc)
    events = check_text_outputs(out, name, res)
    folder = out / f"{name}.segments"
    try:
        idx = json.loads((folder / INDEX).read_text(encoding="utf-8"))["segments"]
        # This run's segments: the index is in start order and every run stamps its own id.
        mine = [s for s in idx if idx and s.get("run") == idx[-1].get("run")]
        res.segments = len(mine)
        # The video time at the kill: the run's first segment started with its first output frame (its
        # start_utc is the wall clock then) and the live video runs on the wall clock from there.
        if mine:
            t0 = dt.datetime.fromisoformat(mine[0]["start_utc"]).timestamp() - mine[0]["t_start"]
            res.logged_s = max(0.0, t_kill - t0)
        for s in mine[:-1]:  # closed at rotation: every one must decode
            probe(folder / s["file"], decode=False)
        if mine:
            last = mine[-1]
            try:
                pr = probe(folder / last["file"], decode=True)
                res.decoded_s = last["t_start"] + pr.video_frames / max(1e-6, _fps_of(events))
            except RecorderError:  # killed before its first fragment was complete: up to its start
                res.decoded_s = last["t_start"]
    except (OSError, ValueError, KeyError, RecorderError) as exc:
        res.problems.append(f"segments: {exc}")
    res.lost_s = max(0.0, res.logged_s - res.decoded_s)
    if res.lost_s > MAX_LOSS_S:
        res.problems.append(f"video lost {res.lost_s:.2f} s > {MAX_LOSS_S} s")
    # The restart's repair, then the check (as the next `drivecap run` does first).
    SegmentRecorder(folder, _fps_of(events) or 25.0)
    listed, on_disk = check_folder(folder)
    res.index_matches = listed == on_disk
    if not res.index_matches:
        res.problems.append(f"index {sorted(listed)} != files {sorted(on_disk)}")
    return res


def _fps_of(events: list[dict[str, Any]]) -> float:
    return float(next((e.get("fps", 0.0) for e in events if e.get("event") == "start"), 0.0) or 0.0)


def random_delays(n: int, low: float, high: float, seed: int | None = None) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.uniform(low, high), 2) for _ in range(n)]


def summary(results: list[KillResult]) -> dict[str, Any]:
    by_kind: dict[str, Any] = {}
    for kind in sorted({r.kind for r in results}):
        rs = [r for r in results if r.kind == kind]
        by_kind[kind] = {
            "kills": len(rs),
            "ok": sum(r.ok for r in rs),
            "max_lost_s": round(max(r.lost_s for r in rs), 2),
            "results": [asdict(r) for r in rs],
        }
    return by_kind
