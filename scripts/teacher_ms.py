"""Detector milliseconds per frame of each teacher view (whole picture, its mirror, 2x2 tiles), cv2 threads 1.

    nice python scripts/teacher_ms.py [--frames 8] [--clips street challenge03]

Frames evenly spread over each clip's training part; the median of the per-frame times of each view.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import cv2

    from drivecap.assets import CLIPS, AssetStore
    from drivecap.training import teacher as T
    from drivecap.training.geometry import geometry_for

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8, help="frames per clip")
    ap.add_argument("--clips", nargs="+", default=["street", "challenge03"])
    args = ap.parse_args(argv)
    store = AssetStore()
    net = T.Teacher.from_assets(T.TeacherSettings(threads=1))
    times: dict[str, list[float]] = {"whole": [], "mirror": [], "tiles": []}
    for clip in args.clips:
        path = store.clip(clip)
        (x0, x1), _size, _fps, n = T.clip_picture_columns(path)
        stop = CLIPS[clip].training_end(n)
        if stop <= 0:
            raise SystemExit(f"--clips {clip}: held out whole; time the detector on a training clip")
        geom = geometry_for(clip)
        cap = cv2.VideoCapture(str(path))
        for f in np.linspace(0, stop - 1, args.frames).astype(int):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(f))
            ok, img = cap.read()
            if not ok:
                continue
            pic = np.ascontiguousarray(img[:, x0:x1])
            for view in times:
                t0 = time.perf_counter()
                net.detect_views(pic, geom, min_score=T.CACHE_SCORE, views=(view,))
                times[view].append(1000.0 * (time.perf_counter() - t0))
        cap.release()
    med = {v: round(statistics.median(t), 1) for v, t in times.items()}
    out = {
        "frames": len(times["whole"]),
        "clips": args.clips,
        "median_ms": med,
        "teacher_ms_per_frame": {
            "first (whole)": med["whole"],
            "default (whole + mirror)": round(med["whole"] + med["mirror"], 1),
            "whole + tiles": round(med["whole"] + med["tiles"], 1),
            "whole + mirror + tiles": round(med["whole"] + med["mirror"] + med["tiles"], 1),
        },
    }
    sys.stdout.write(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
