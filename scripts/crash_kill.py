#!/usr/bin/env python3
"""SIGKILL `drivecap replay` and a live `drivecap run` at random moments and check what they left.

    python scripts/crash_kill.py --kills 10 [--seed 1] [--out DIR] [--json FILE]

Replay: a real clip (offline, every frame). Live: a 25 fps MJPEG camera on 127.0.0.1 serving a real
clip, loop recording into segments of 2 s in one folder for all kills (every restart repairs what the
previous kill left). Prints one line per kill and a summary; exit 0 when every kill passed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from drivecap.assets import AssetStore
from drivecap.bench.crash import kill_live, kill_replay, random_delays, summary
from drivecap.bench.soak import MjpegCamera, clip_jpegs
from drivecap.pipeline.inference import load_models  # noqa: F401  (fails early when the encoder is missing)

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10, help="kills per kind (default 10)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kinds", default="replay,live")
    ap.add_argument("--out", type=Path, help="keep the outputs here (default: a temporary folder)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides for the runs"
    )
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--clip", default="challenge02", help="clip the replay and the camera use")
    ap.add_argument("--stride", type=int, default=5, help="replay: encode every N-th frame (all are written)")
    ap.add_argument("--fps", type=float, default=29.97, help="the clip's frame rate (challenge02: 29.97)")
    args = ap.parse_args()
    store = AssetStore()
    clip = str(store.clip(args.clip))
    sets = [
        "--config", str(REPO / "config.yaml"),
        "--set", "speech.backend=wav",
        "--set", f"replay.stride={args.stride}",
        *[a for kv in args.set for a in ("--set", kv)],
    ]  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory(prefix="drivecap-kill-") as tmp:
        base = args.out or Path(tmp)
        kinds = args.kinds.split(",")
        if "replay" in kinds:
            for i, d in enumerate(random_delays(args.kills, 1.0, 8.0, args.seed)):
                r = kill_replay(
                    sets, clip, base / f"replay{i}", d, fps=args.fps, after_frames=50, stride=args.stride
                )
                results.append(r)
                print(r.line(), flush=True)
        if "live" in kinds:
            with MjpegCamera(clip_jpegs(clip, limit=250, width=640), fps=25.0) as cam:
                live_sets = [*sets, "--set", "record.segment_s=2", "--set", "capture.read_timeout_s=2"]
                for d in random_delays(args.kills, 1.0, 8.0, args.seed + 1):
                    r = kill_live(live_sets, cam.url, base / "live", d)
                    results.append(r)
                    print(r.line(), flush=True)
    s = summary(results)
    for kind, k in s.items():
        print(f"{kind}: {k['ok']} of {k['kills']} kills passed; most video lost {k['max_lost_s']:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(s, indent=1) + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
