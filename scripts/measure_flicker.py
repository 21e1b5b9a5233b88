"""Caption flicker on realtime replays of the held-out clips, fact hold on vs off (issue 11, item 4).

    python scripts/measure_flicker.py --out benchmarks/hold

For each held-out clip (project_video01, challenge01, and the street film from frame 1440, cut to a file
first) this runs ``drivecap bench CLIP --compare hold`` in realtime mode: hold on and hold off alternate in
one process, on the same encoder. A subtitle cue is one caption from when it was shown until another
replaced it (cues of the same text joined; the last cue of each run, cut by the end of the clip, left out).
Flicker = the share of cues shorter than 2 s. fps_out / source fps is reported beside it: the hold may ask the
gate for one more caption while a change is pending, and that costs a mirror-view encode.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HELD_OUT = ("project_video01", "challenge01", "street")
STREET_FROM = 1440  # the street film's held-out part


def street_tail(work: Path) -> Path:
    """Frames 1440 on of the street film as a file of their own (mp4v, same size and rate)."""
    import cv2

    from drivecap.assets import AssetStore

    out = work / "street_from1440.mp4"
    if out.is_file():
        return out
    cap = cv2.VideoCapture(str(AssetStore().clip("street")))
    fps = cap.get(cv2.CAP_PROP_FPS)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    cap.set(cv2.CAP_PROP_POS_FRAMES, STREET_FROM)
    work.mkdir(parents=True, exist_ok=True)
    w = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    while True:
        ok, img = cap.read()
        if not ok:
            break
        w.write(img)
    w.release()
    cap.release()
    return out


def bench(source: str, rounds: int, loops: int, sets: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "drivecap", "-q", *sets, "bench", source, "--compare", "hold"]
    cmd += ["--rounds", str(rounds), "--loops", str(loops), "--speech", "none", "--json", "--no-progress"]
    print("+", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def side_table(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for side in (data["compare"]["a"], data["compare"]["b"]):
        out[side["label"]] = {
            "cues": side["cues"],
            "fps_out_over_source": side["fps_out"] / side["source_fps"] if side["source_fps"] else None,
            "captions": side["frames"]["captions"],
            "glass_to_caption_p50_ms": side["glass_to_caption"]["p50_ms"],
            "gate_reasons": side["gate_reasons"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/hold"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/drivecap-flicker"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--loops", type=int, default=3, help="plays of the clip per run (the clips are 9-12 s)")
    ap.add_argument("--set", action="append", default=[], help="config overrides for every run")
    args = ap.parse_args(argv)
    sets = [x for kv in args.set for x in ("--set", kv)]
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    t0 = time.time()
    clips: dict[str, Any] = {}
    for name in HELD_OUT:
        src = str(street_tail(args.work)) if name == "street" else name
        clips[name if name != "street" else f"street (frames {STREET_FROM} on)"] = side_table(
            bench(src, args.rounds, args.loops, sets)
        )
    totals: dict[str, dict[str, Any]] = {}
    for label in ("hold on", "hold off"):
        short = sum(c[label]["cues"]["short"] for c in clips.values())
        count = sum(c[label]["cues"]["count"] for c in clips.values())
        fps = [c[label]["fps_out_over_source"] for c in clips.values()]
        totals[label] = {
            "cues": count,
            "short": short,
            "short_share": short / count if count else None,
            "fps_out_over_source_min": min(fps),
        }
    on, off = totals["hold on"]["short_share"], totals["hold off"]["short_share"]
    result = {
        "command": "python scripts/measure_flicker.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "rounds": args.rounds,
        "loops": args.loops,
        "load_before": load_before,
        "load_after": Path("/proc/loadavg").read_text().split()[:3],
        "wall_s": round(time.time() - t0, 1),
        "clips": clips,
        "totals": totals,
        "short_share_on_over_off": (on / off) if on is not None and off else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flicker.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(totals, indent=1))
    print("short-cue share, hold on / hold off:", result["short_share_on_over_off"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
