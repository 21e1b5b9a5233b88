"""The teacher checked by eye: its facts against 32 training frames captioned by hand.

    python -m drivecap.training.handcheck [--json] [--variant NAME ...]

``hand_captions.jsonl`` (beside this file) holds 32 frames from the *training* parts of the clips (six from each
highway/forest clip, eight from the street film's frames 0-1439, evenly spread), each captioned by a person
looking at the frame, in the caption grammar. Places follow the teacher's convention: "ahead" is the ego lane
(on the street film: the streetcar's tracks), left and right are as seen from the camera; "close" is a road user
taller than the clip's close height (12% of the picture, 22% on the street film); horse-drawn carriages are not
a kind the grammar has and are left out; tiny far vehicles (under about 3% of the picture height) are left out,
as the teacher drops them.

The teacher's label of a frame is recomputed as ``drivecap label`` makes it: SSD boxes on the frame and its
neighbours, the same thresholds and geometry, the road shape from the lane finder, and the 15-frame majority
vote, over a window centred on the frame (the vehicle-kind hysteresis of a whole clip is not reproduced; kinds
are not in the fact keys). Agreement is over fact keys: micro precision, recall and F1 against the hand facts,
per key family, and the share of frames whose key sets match exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drivecap.captions.facts import Facts

HAND_CAPTIONS = Path(__file__).with_name("hand_captions.jsonl")
WINDOW = 15


@dataclass(frozen=True)
class HandFrame:
    clip: str
    frame: int
    facts: Facts


def load_hand(path: Path = HAND_CAPTIONS) -> list[HandFrame]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out.append(HandFrame(str(rec["clip"]), int(rec["frame"]), Facts.from_json(rec["facts"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}:{n}: not a hand-caption record ({exc})") from None
    return out


def agreement(pairs: Sequence[tuple[frozenset[str], frozenset[str]]]) -> dict[str, Any]:
    """(teacher keys, hand keys) per frame -> micro P/R/F1, per family, exact-match share."""

    def prf(tp: int, fp: int, fn: int) -> dict[str, float | int]:
        p = tp / (tp + fp) if tp + fp else 1.0
        r = tp / (tp + fn) if tp + fn else 1.0
        return {
            "precision": round(p, 3),
            "recall": round(r, 3),
            "f1": round(2 * p * r / (p + r) if p + r else 0.0, 3),
            "hand_keys": tp + fn,
        }

    fams: dict[str, list[int]] = {}
    tp = fp = fn = 0
    for teacher, hand in pairs:
        for key in teacher | hand:
            fam = key.split(":")[0]
            c = fams.setdefault(fam, [0, 0, 0])
            if key in teacher and key in hand:
                c[0] += 1
                tp += 1
            elif key in teacher:
                c[1] += 1
                fp += 1
            else:
                c[2] += 1
                fn += 1
    a_tp = sum(len({k for k in t & h if ":ahead" in k}) for t, h in pairs)
    a_fp = sum(len({k for k in t - h if ":ahead" in k}) for t, h in pairs)
    a_fn = sum(len({k for k in h - t if ":ahead" in k}) for t, h in pairs)
    return {
        "frames": len(pairs),
        "exact": round(sum(t == h for t, h in pairs) / len(pairs), 3) if pairs else 0.0,
        "keys": prf(tp, fp, fn),
        "ahead": prf(a_tp, a_fp, a_fn),
        "families": {f: prf(*c) for f, c in sorted(fams.items())},
    }


DetectFn = Callable[[Any, Any], list[Any]]


def teacher_keys(hand: Sequence[HandFrame], detect: DetectFn | None = None) -> list[frozenset[str]]:
    """The teacher's smoothed fact keys for each hand frame (see the module docstring)."""
    import cv2

    from drivecap.assets import CLIPS, AssetStore
    from drivecap.training import lanes
    from drivecap.training import teacher as T
    from drivecap.training.geometry import geometry_for
    from drivecap.training.smoothing import smooth

    store = AssetStore()
    settings = T.TeacherSettings()
    net = T.Teacher.from_assets(settings)
    out: list[frozenset[str]] = []
    for hf in hand:
        path = store.clip(hf.clip)
        geom = geometry_for(hf.clip)
        (x0, x1), _size, _fps, n = T.clip_picture_columns(path)
        stop = CLIPS[hf.clip].held_out_from or n  # never read a held-out frame
        lo, hi = max(0, hf.frame - WINDOW // 2), min(stop, hf.frame + WINDOW // 2 + 1)
        cap = cv2.VideoCapture(str(path))
        cap.set(cv2.CAP_PROP_POS_FRAMES, lo)
        frames, raw = [], []
        for i in range(lo, hi):
            ok, img = cap.read()
            if not ok:
                break
            pic = np.asarray(img[:, x0:x1], dtype=np.uint8)
            boxes = detect(net, pic) if detect is not None else net.detect(pic, min_score=T.CACHE_SCORE)
            frames.append(i)
            raw.append(T.keep_boxes(boxes, settings, geom))
        cap.release()
        roads = (
            lanes.clip_road_shapes(path, frames, (x0, x1), geom)
            if geom.lane_markings
            else ["unknown"] * len(frames)
        )
        facts = [T.facts_from_boxes(k, r) for k, r in zip(raw, roads, strict=True)]
        centre = frames.index(hf.frame)
        out.append(smooth(facts, WINDOW)[centre].keys)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the teacher against the hand-captioned training frames")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--per-frame", action="store_true", help="also list each frame's keys")
    args = ap.parse_args(argv)
    hand = load_hand()
    keys = teacher_keys(hand)
    pairs = [(k, h.facts.keys) for k, h in zip(keys, hand, strict=True)]
    res: dict[str, Any] = {"teacher": agreement(pairs)}
    by_clip: dict[str, list[tuple[frozenset[str], frozenset[str]]]] = {}
    for (t, h), hf in zip(pairs, hand, strict=True):
        by_clip.setdefault(hf.clip, []).append((t, h))
    res["by_clip"] = {c: agreement(p)["keys"] for c, p in by_clip.items()}
    if args.per_frame:
        res["frames"] = [
            {"clip": hf.clip, "frame": hf.frame, "teacher": sorted(t), "hand": sorted(h)}
            for (t, h), hf in zip(pairs, hand, strict=True)
        ]
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
    else:
        a = res["teacher"]
        print(
            f"teacher vs hand, {a['frames']} frames: key F1 {a['keys']['f1']} (P {a['keys']['precision']}, "
            f"R {a['keys']['recall']}), 'ahead' F1 {a['ahead']['f1']}, exact {a['exact']}"
        )
        for c, k in res["by_clip"].items():
            print(f"  {c}: F1 {k['f1']} (P {k['precision']}, R {k['recall']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
