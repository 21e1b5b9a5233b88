#!/usr/bin/env python3
"""Loop recording under a long live run: `drivecap run` on a live MJPEG camera on 127.0.0.1 (a real clip,
25 fps, speech in wav mode) with a small quota, watched from outside once a second.

    python scripts/loop_soak.py --minutes 10 --segment-s 20 --max-mb 40 [--out DIR]

Reports: the largest disk use of the segment files seen (against the quota), every segment that was ever
locked and whether it is still there at the end, whether the index lists exactly the files at the end, and
the run's exit code. Exit 0 when every check holds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def folder_bytes(folder: Path) -> int:
    total = 0
    for p in folder.glob("*.mp4"):
        with contextlib.suppress(OSError):  # deleted between glob and stat
            total += p.stat().st_size
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--segment-s", type=float, default=20.0)
    ap.add_argument("--max-mb", type=float, default=40.0)
    ap.add_argument("--clip", default="challenge02")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    quota = int(args.max_mb * 1e6)
    from drivecap.assets import AssetStore
    from drivecap.bench.soak import MjpegCamera, clip_jpegs

    frames = clip_jpegs(AssetStore().clip(args.clip), limit=300, width=640)
    with tempfile.TemporaryDirectory(prefix="drivecap-loop-soak-") as tmp, MjpegCamera(frames, 25.0) as cam:
        out = args.out or Path(tmp)
        cmd = [
            sys.executable, "-m", "drivecap",
            "--set", f"record.segment_s={args.segment_s}",
            "--set", f"record.max_bytes={quota}",
            "--set", "record.min_free_bytes=0",
            "run", "--source", cam.url, "--out", str(out), "--no-window", "--speech", "wav",
            "--max-seconds", str(args.minutes * 60),
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        peak, samples, locked_ever = 0, 0, set()
        folder: Path | None = None
        while proc.poll() is None:
            time.sleep(1.0)
            if folder is None:
                folder = next(iter(out.glob("*.segments")), None)
                if folder is None:
                    continue
            peak = max(peak, folder_bytes(folder))
            samples += 1
            try:
                idx = json.loads((folder / "index.json").read_text())["segments"]
                locked_ever |= {s["file"] for s in idx if s["locked"]}
            except (OSError, ValueError, KeyError):
                pass  # between the atomic rename's steps: read again next second
        soak_out = proc.stdout.read() if proc.stdout else ""
        if folder is None:
            print("no segment folder was written", file=sys.stderr)
            return 1
        idx = json.loads((folder / "index.json").read_text())["segments"]
        listed = {s["file"] for s in idx}
        on_disk = {p.name for p in folder.glob("*.mp4")}
        kept = locked_ever <= on_disk
        figures = {
            "minutes": args.minutes,
            "segment_s": args.segment_s,
            "quota_bytes": quota,
            "peak_bytes": peak,
            "samples": samples,
            "segments_at_end": len(on_disk),
            "locked_ever": sorted(locked_ever),
            "locked_kept": kept,
            "index_equals_files": listed == on_disk,
            "run_exit": proc.returncode,
            "run_summary": soak_out.strip().splitlines()[-6:],
        }
    print(
        f"peak disk use {peak / 1e6:.1f} MB of a {quota / 1e6:.1f} MB quota ({samples} samples, once a second); "
        f"{len(on_disk)} segments at the end; locked {len(locked_ever)}, all kept: {kept}; "
        f"index = files: {listed == on_disk}; run exit {proc.returncode}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if peak <= quota and kept and listed == on_disk and proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
