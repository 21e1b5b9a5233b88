"""Fleet scale figures: ``python -m drivecap.fleet.bench --out benchmarks/fleet``.

Throughput: a plain shell-style loop of ``drivecap replay`` (one process per drive, as a user would script
it) against ``drivecap fleet --workers 1`` and ``--workers 2`` over the same drives, ``encoder.threads=1``
everywhere. The machine may be shared, so the runs are interleaved: the drives are split into rounds and each
round runs loop, fleet 1, fleet 2 back to back; figures are sums over the rounds and the load average is
recorded beside each run. Wall time includes everything a user waits for (process start, model loading).

Index: ``drivecap index`` over 1x, 5x and 11x copies of the replayed drives' folders (the logs are real
replay output), its peak RSS and time, and the peak RSS of a search on the largest one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from drivecap.assets import AssetStore

# Cuts of real clips: (clip, first frame, frames). Training and held-out clips alike: throughput only.
CUTS = (
    ("project_video02", 0, 300),
    ("project_video02", 300, 300),
    ("project_video03", 0, 300),
    ("project_video03", 600, 300),
    ("challenge02", 0, 300),
    ("challenge03", 0, 300),
    ("challenge03", 600, 300),
    ("street", 0, 300),
    ("street", 900, 300),
    ("project_video01", 0, 221),
    ("challenge01", 0, 251),
)
FPS = 10.0  # written rate: 300 frames = 30 s of drive
SIZE = (640, 360)
SET = ["--set", "encoder.threads=1"]


def cut_drives(folder: Path, store: AssetStore) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (clip, start, n) in enumerate(CUTS):
        path = folder / f"drive{i:02d}_{clip}.mp4"
        out.append(path)
        if path.is_file():
            continue
        cap = cv2.VideoCapture(str(store.clip(clip)))
        cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, SIZE)
        for _ in range(n):
            ok, img = cap.read()
            if not ok:
                break
            w.write(cv2.resize(img, SIZE, interpolation=cv2.INTER_AREA))
        w.release()
        cap.release()
    return out


def frame_count(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return n


def _drivecap(*args: str) -> list[str]:
    return [sys.executable, "-m", "drivecap", "-q", *SET, *args]


def timed(cmd: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd[:8])}... failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return wall, proc.returncode


def load() -> float:
    return round(os.getloadavg()[0], 2)


METHODS = ("loop", "fleet1", "fleet2")


def run_throughput(
    drives: list[Path], work: Path, rounds: int, methods: tuple[str, ...] = METHODS
) -> dict[str, Any]:
    groups = [drives[i::rounds] for i in range(rounds)]
    runs: list[dict[str, Any]] = []
    for r, group in enumerate(groups):
        frames = sum(frame_count(p) for p in group)
        for method in methods:
            out = work / f"{method}-r{r}"
            shutil.rmtree(out, ignore_errors=True)
            la = load()
            if method == "loop":
                t0 = time.perf_counter()
                for p in group:
                    timed(_drivecap("replay", str(p), "--out", str(out / p.stem), "--no-progress"))
                wall = time.perf_counter() - t0
            else:
                n = method[-1]
                wall, _ = timed(
                    _drivecap("fleet", *map(str, group), "--out", str(out), "--workers", n, "--no-progress")
                )
            runs.append(
                {
                    "round": r,
                    "method": method,
                    "drives": len(group),
                    "frames": frames,
                    "wall_s": round(wall, 2),
                    "fps": round(frames / wall, 3),
                    "load_before": la,
                    "load_after": load(),
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    tot: dict[str, dict[str, float]] = {}
    for m in methods:
        rs = [x for x in runs if x["method"] == m]
        frames = sum(x["frames"] for x in rs)
        wall = sum(x["wall_s"] for x in rs)
        tot[m] = {"frames": frames, "wall_s": round(wall, 2), "fps": round(frames / wall, 3)}
    res: dict[str, Any] = {"runs": runs, "totals": tot, "source_s": next(iter(tot.values()))["frames"] / FPS}
    if "fleet1" in tot and "fleet2" in tot:
        res["fleet2_over_fleet1"] = round(tot["fleet2"]["fps"] / tot["fleet1"]["fps"], 3)
    if "loop" in tot and "fleet1" in tot:
        res["ray_overhead_1_worker"] = round(tot["fleet1"]["wall_s"] / tot["loop"]["wall_s"] - 1.0, 4)
    if "loop" in tot and "fleet2" in tot:
        res["fleet2_over_loop"] = round(tot["fleet2"]["fps"] / tot["loop"]["fps"], 3)
    return res


def _child_peak(cmd: list[str]) -> tuple[float, float, str]:
    """(wall s, peak RSS MiB, stdout) of one child process (a fresh process: its own peak)."""
    wrapper = (
        "import resource,subprocess,sys,time;t=time.perf_counter();"
        "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
        "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);"
        "print(p.stdout[-300:]);sys.exit(p.returncode)"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=True)
    first, _, rest = proc.stdout.partition("\n")
    wall, rss_kb = first.split()
    return float(wall), int(rss_kb) / 1024, rest.strip()


def run_index(
    source_outs: list[Path], work: Path, copies_list: tuple[int, ...] = (1, 5, 11)
) -> list[dict[str, Any]]:
    drive_dirs = sorted(
        p for o in source_outs for p in o.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    rows = []
    for copies in copies_list:
        root = work / f"index-x{copies}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for c in range(copies):
            for j, d in enumerate(drive_dirs):
                dest = root / f"{d.name}-s{j:02d}-c{c:02d}"
                dest.mkdir()
                name = d.name
                # The log under the new drive name (what a replay of a copied file would write).
                shutil.copy(d / f"{name}.jsonl", dest / f"{dest.name}.jsonl")
        wall, rss, outp = _child_peak([sys.executable, "-m", "drivecap", "index", str(root)])
        s_wall, s_rss, _ = _child_peak(
            [sys.executable, "-m", "drivecap", "search", str(root), "car", "--limit", "1000"]
        )
        db = root / "index.sqlite"
        rows.append(
            {
                "drives": copies * len(drive_dirs),
                "index_wall_s": round(wall, 2),
                "index_peak_rss_mib": round(rss, 1),
                "search_wall_s": round(s_wall, 2),
                "search_peak_rss_mib": round(s_rss, 1),
                "db_mib": round(db.stat().st_size / 2**20, 2),
                "summary": outp,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def analyse(work: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Where each run's wall time went: inside drives (the replays' own summaries) or around them.

    The time around the drives (process starts and model loading for the loop; Ray start, actors, scheduling
    for the fleet) is the overhead that does not depend on how loaded the machine is while frames are
    processed; the encoder's p50 per run shows how loaded it was."""
    out: dict[str, Any] = {}
    for run in runs:
        folder = work / f"{run['method']}-r{run['round']}"
        walls, infer = [], []
        for f in sorted(folder.glob("*/*.summary.json")):
            d = json.loads(f.read_text())
            walls.append(d["wall_s"])
            infer.append(d["stages"]["infer"]["p50_ms"])
        workers = 1 if run["method"] in ("loop", "fleet1") else 2
        inside = sum(walls) / workers
        infer.sort()
        out[f"{run['method']}-r{run['round']}"] = {
            "wall_s": run["wall_s"],
            "drive_wall_sum_s": round(sum(walls), 2),
            "outside_drives_s": round(run["wall_s"] - inside, 2),
            "outside_share": round(1 - inside / run["wall_s"], 4),
            "encoder_infer_p50_ms_median_over_drives": round(infer[len(infer) // 2], 1) if infer else None,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m drivecap.fleet.bench", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/fleet"), help="where results.json goes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/drivecap-fleet-bench"), help="scratch folder")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}"
    )
    ap.add_argument("--analyse-only", action="store_true", help="re-read --work and --out/results.json")
    args = ap.parse_args(argv)
    res: dict[str, Any]
    if args.analyse_only:
        res = json.loads((args.out / "results.json").read_text())
        res["throughput"]["breakdown"] = analyse(args.work, res["throughput"]["runs"])
        (args.out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps(res["throughput"]["breakdown"], indent=1))
        return 0
    drives = cut_drives(args.work / "drives", AssetStore())
    res = {"cpus": os.cpu_count(), "drives": [p.name for p in drives], "fps_written": FPS}
    if not args.skip_throughput:
        methods = tuple(m for m in args.methods.split(",") if m)
        if not methods or any(m not in METHODS for m in methods):
            ap.error(f"--methods {args.methods!r}: use a comma-separated subset of {', '.join(METHODS)}")
        res["throughput"] = run_throughput(drives, args.work, args.rounds, methods)
        res["throughput"]["breakdown"] = analyse(args.work, res["throughput"]["runs"])
    res["index"] = run_index(sorted(args.work.glob("fleet2-r*")), args.work)
    res["peak_rss_this_process_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.get("throughput", {}).items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
