"""The teacher checked by eye: its facts against 32 training frames captioned by hand.

    python -m drivecap.training.handcheck [--json] [--per-frame] [--hand PATH] [--first] [--set FIELD=VALUE ...]
                                          [--cache FILE] [--labels DIR] [--record NAME]

``hand_captions.jsonl`` (beside this file) holds 32 frames from the *training* parts of the clips (six from each
highway/forest clip, eight from the street film's frames 0-1439, evenly spread), each captioned by a person
looking at the frame, in the caption grammar. Places follow the teacher's convention: "ahead" is the ego lane
(on the street film: the streetcar's tracks), left and right are as seen from the camera; "close" is a road user
taller than the clip's close height (12% of the picture, 22% on the street film); horse-drawn carriages are not
a kind the grammar has and are left out; tiny far vehicles (under about 3% of the picture height) are left out,
as the teacher drops them. The tuning frames also follow these: a cyclist is a bicycle and a person; people
inside a car are left out; "ahead" on the street film is within the streetcar's width of its rails; gently
bending highway stretches have road "unknown", a forest-road bend is a curve.

``hand_captions_tuning.jsonl`` holds 24 *other* training frames captioned the same way (street 0-1439: 9,
challenge03: 6, three from each highway clip), the TUNING set on which teacher variants are chosen
(``scripts/teacher_tune.py``); the 32 frames above are the CHECK set, scored once per chosen teacher.
``--hand`` picks the file, ``--first`` the first teacher, ``--set FIELD=VALUE`` any ``TeacherSettings`` field,
``--cache FILE`` keeps the detector's views so that variants are scored without the SSD.

The teacher's label of a frame is recomputed as ``drivecap label`` makes it: SSD boxes (every view the settings
ask for) on the frame and its neighbours (and ``consistent_radius`` more either side for the temporal
consistency rule), the same thresholds and geometry, the road shape from the lane finder, and the 15-frame majority
vote, over a window centred on the frame (the vehicle-kind hysteresis of a whole clip is not reproduced; kinds
are not in the fact keys). Agreement is over fact keys: micro precision, recall and F1 against the hand facts,
per key family, and the share of frames whose key sets match exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drivecap.captions.facts import Facts

HAND_CAPTIONS = Path(__file__).with_name("hand_captions.jsonl")  # the CHECK frames: never tuned on
HAND_CAPTIONS_TUNING = Path(__file__).with_name(
    "hand_captions_tuning.jsonl"
)  # the frames variants are chosen on
#: The teachers' measured agreement with the hand captions, one JSON line per (teacher digest, hand file), written
#: by ``--record NAME``; the model card quotes it.
TEACHER_CHECKS = Path(__file__).with_name("teacher_checks.jsonl")
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


def label_agreement(labels_dir: Path, hand_path: Path = HAND_CAPTIONS) -> dict[str, Any]:
    """The facts of the label files themselves (as ``drivecap train`` reads them) against the hand frames: no
    detector runs. Hand frames whose clip has no label file, or no record of that frame, are counted as
    ``missing`` and left out of the agreement."""
    hand = load_hand(hand_path)
    want = {(h.clip, h.frame) for h in hand}
    found: dict[tuple[str, int], frozenset[str]] = {}
    for clip in sorted({h.clip for h in hand}):
        path = labels_dir / f"{clip}.jsonl"
        if not path.is_file():
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                rec = json.loads(line)
                if not rec.get("mirrored") and (rec["clip"], rec["frame"]) in want:
                    found[(rec["clip"], rec["frame"])] = Facts.from_json(rec["facts"]).keys
    pairs = [(found[(h.clip, h.frame)], h.facts.keys) for h in hand if (h.clip, h.frame) in found]
    return agreement(pairs) | {"hand": hand_path.name, "missing": len(hand) - len(pairs)}


def recorded_checks(path: Path = TEACHER_CHECKS) -> list[dict[str, Any]]:
    """The records of ``--record``: teacher name, digest, hand file, agreement, date."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def labels_digest(labels_dir: Path) -> str:
    """The teacher settings digest the label files of ``labels_dir`` were made with (``stats.json``), or
    "mixed" / "unknown"."""
    path = labels_dir / "stats.json"
    if not path.is_file():
        return "unknown"
    stats = json.loads(path.read_text(encoding="utf-8"))
    digests = {str(v.get("teacher", "unknown")) for v in stats.values() if isinstance(v, dict)}
    return digests.pop() if len(digests) == 1 else ("mixed" if digests else "unknown")


def record_check(
    result: dict[str, Any], name: str, digest: str, source: str, path: Path = TEACHER_CHECKS
) -> dict[str, Any]:
    """Keep ``result`` (an ``agreement`` of teacher ``name`` with one hand file) as its record, replacing an
    older record of the same digest, hand file and source ("labels": the label files; "teacher": recomputed)."""
    rec = {
        "name": name,
        "digest": digest,
        "hand": result["hand"],
        "source": source,
        "date": time.strftime("%Y-%m-%d"),
        "frames": result["frames"],
        "exact": result["exact"],
        "keys": result["keys"],
        "ahead": result["ahead"],
    }
    same = (digest, rec["hand"], source)
    rows = [r for r in recorded_checks(path) if (r["digest"], r["hand"], r["source"]) != same]
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in [*rows, rec]), encoding="utf-8")
    return rec


#: Frames either side of the smoothing window that are detected for the temporal consistency rule (the most
#: ``consistent_radius`` may be here; a larger radius is cut to it).
MARGIN = 4


class ViewCache:
    """The detector's views of the hand frames' neighbourhoods, optionally on disk (``--cache``, JSON), so that
    variants of the teacher are scored without running the SSD again. An entry is keyed by clip, frame, view
    and what the view depends on (tile layout); it keeps the time the detector took for it."""

    def __init__(self, path: Path | None = None, settings: Any = None) -> None:
        from drivecap.training import teacher as T

        self.path = path
        self.settings = settings or T.TeacherSettings()
        self.entries: dict[str, dict[str, Any]] = {}
        if path is not None and path.is_file():
            self.entries = json.loads(path.read_text(encoding="utf-8"))
        self._net: Any = None
        self.dirty = False

    def _view_key(self, view: str, geom: Any) -> str:
        from drivecap.training import teacher as T
        from drivecap.training.teacher_views import road_region

        s = self.settings
        if view == "tiles":
            region = [round(v, 4) for v in road_region(geom, s.tile_above)]
            return f"{view}:{s.input_size}:{s.tile_overlap}:{region}:{T.CACHE_SCORE}"
        return f"{view}:{s.input_size}:{T.CACHE_SCORE}"

    def boxes(self, clip: str, frame: int, view: str, geom: Any, picture: Callable[[], Any]) -> list[Any]:
        from drivecap.training import teacher as T
        from drivecap.training.geometry import Box

        key = f"{clip}:{frame}:{self._view_key(view, geom)}"
        hit = self.entries.get(key)
        if hit is None:
            if self._net is None:
                self._net = T.Teacher.from_assets(self.settings)
            t0 = time.perf_counter()
            got = self._net.detect_views(picture(), geom, min_score=T.CACHE_SCORE, views=(view,))[view]
            ms = 1000.0 * (time.perf_counter() - t0)
            hit = {"boxes": [b.to_json() for b in got], "ms": round(ms, 2)}
            self.entries[key] = hit
            self.dirty = True
        return [Box.from_json(b) for b in hit["boxes"]]

    def ms_per_view(self) -> dict[str, float]:
        """Mean detector milliseconds of each view over the cached entries."""
        sums: dict[str, list[float]] = {}
        for key, e in self.entries.items():
            if "ms" in e:
                sums.setdefault(key.split(":")[2], []).append(float(e["ms"]))
        return {v: round(sum(m) / len(m), 1) for v, m in sorted(sums.items())}

    def save(self) -> None:
        if self.path is not None and self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.entries, separators=(",", ":")), encoding="utf-8")
            self.dirty = False


class _Reader:
    """Frames of one video's picture columns, opened only when a frame is needed."""

    def __init__(self, path: Path, columns: tuple[int, int]) -> None:
        self.path, self.columns = path, columns
        self.cap: Any = None
        self.pos = -1

    def read(self, i: int) -> Any:
        import cv2

        if self.cap is None:
            self.cap = cv2.VideoCapture(str(self.path))
        if i != self.pos:  # seek only when not reading on (as the first handcheck did: one seek a window)
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, img = self.cap.read()
        self.pos = i + 1
        if not ok:
            raise SystemExit(f"{self.path.name}: cannot read frame {i}")
        x0, x1 = self.columns
        return np.ascontiguousarray(img[:, x0:x1], dtype=np.uint8)

    def at(self, i: int) -> Callable[[], Any]:
        return lambda: self.read(i)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()


def teacher_keys(
    hand: Sequence[HandFrame], settings: Any = None, cache: ViewCache | None = None
) -> list[frozenset[str]]:
    """The teacher's smoothed fact keys for each hand frame (see the module docstring)."""
    from drivecap.assets import CLIPS, AssetStore
    from drivecap.training import lanes
    from drivecap.training import teacher as T
    from drivecap.training.geometry import geometry_for
    from drivecap.training.smoothing import smooth

    store = AssetStore()
    settings = settings or T.TeacherSettings()
    cache = cache or ViewCache(None, settings)
    margin = min(MARGIN, settings.consistent_radius) if settings.consistent_threshold is not None else 0
    out: list[frozenset[str]] = []
    for hf in hand:
        path = store.clip(hf.clip)
        geom = geometry_for(hf.clip, settings.geometry)
        ckey = f"{hf.clip}:columns"
        if ckey not in cache.entries:
            (x0, x1), _size, _fps, n = T.clip_picture_columns(path)
            cache.entries[ckey] = {"picture_x": [x0, x1], "frames": n}
        x0, x1 = cache.entries[ckey]["picture_x"]
        stop = CLIPS[hf.clip].training_end(int(cache.entries[ckey]["frames"]))  # never a held-out frame
        lo, hi = max(0, hf.frame - WINDOW // 2), min(stop, hf.frame + WINDOW // 2 + 1)
        dlo, dhi = max(0, lo - margin), min(stop, hi + margin)
        reader = _Reader(path, (x0, x1))
        views = [
            {v: cache.boxes(hf.clip, i, v, geom, reader.at(i)) for v in settings.views()}
            for i in range(dlo, dhi)
        ]
        reader.close()
        kept = T.frame_objects(views, settings, geom)[lo - dlo : hi - dlo]
        frames = list(range(lo, hi))
        roads = ["unknown"] * len(frames)
        if geom.lane_markings:
            rkey = f"{hf.clip}:{hf.frame}:roads"
            if rkey not in cache.entries:
                cache.entries[rkey] = {"roads": lanes.clip_road_shapes(path, frames, (x0, x1), geom)}
                cache.dirty = True
            roads = list(cache.entries[rkey]["roads"])
        facts = [T.facts_from_boxes(k, r) for k, r in zip(kept, roads, strict=True)]
        out.append(smooth(facts, WINDOW)[frames.index(hf.frame)].keys)
        cache.save()
    return out


def parse_settings(first: bool, sets: Sequence[str]) -> Any:
    """TeacherSettings (the first teacher's with ``first``) with ``--set field=value`` overrides."""
    from dataclasses import fields

    from drivecap.training import teacher as T

    types = {f.name: f.type for f in fields(T.TeacherSettings)}
    kw: dict[str, Any] = {}
    for item in sets:
        name, sep, value = item.partition("=")
        if not sep or name not in types:
            raise SystemExit(
                f"--set {item!r}: use FIELD=VALUE with a TeacherSettings field ({', '.join(types)})"
            )
        t = str(types[name])
        if value.lower() in ("none", "off", "") and "None" in t:
            kw[name] = None
        elif "bool" in t:
            kw[name] = value.lower() in ("1", "true", "yes", "on")
        elif "tuple" in t:
            kw[name] = tuple(v for v in value.split(",") if v)
        elif "float" in t:
            kw[name] = float(value)
        elif "int" in t:
            kw[name] = int(value)
        else:
            kw[name] = value
    try:
        return T.TeacherSettings.first(**kw) if first else T.TeacherSettings(**kw)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"--set: {exc}") from None


def _score_labels(labels: Path, hand: Path, record: str | None, as_json: bool) -> int:
    """``--labels``: the label files' agreement with the hand file (and its record with ``--record``)."""
    if not labels.is_dir():
        raise SystemExit(f"--labels {labels}: not a folder (run `drivecap label` first)")
    res = label_agreement(labels, hand)
    digest = labels_digest(labels)
    if record:
        record_check(res, record, digest, "labels")
    if as_json:
        json.dump(res | {"digest": digest}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(
            f"labels in {labels} (teacher {digest}) vs hand, {res['frames']} frames: key F1 "
            f"{res['keys']['f1']}, 'ahead' F1 {res['ahead']['f1']}, exact {res['exact']}\n"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the teacher against the hand-captioned training frames")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--per-frame", action="store_true", help="also list each frame's keys")
    ap.add_argument(
        "--hand", type=Path, default=HAND_CAPTIONS, help="hand captions (default: the 32 check frames)"
    )
    ap.add_argument("--first", action="store_true", help="the first teacher (TeacherSettings.first())")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a TeacherSettings field (repeatable)",
    )
    ap.add_argument("--cache", type=Path, help="detector views of the frames, kept in this JSON file")
    ap.add_argument(
        "--detect-only", action="store_true", help="only fill --cache with the views; score nothing"
    )
    ap.add_argument(
        "--labels",
        type=Path,
        metavar="DIR",
        help="score the label files in DIR (a $DRIVECAP_HOME/labels) instead of recomputing the teacher",
    )
    ap.add_argument(
        "--record",
        metavar="NAME",
        help=f"keep the result as teacher NAME's record in {TEACHER_CHECKS.name} (the model card quotes it)",
    )
    args = ap.parse_args(argv)
    if args.labels is not None:
        return _score_labels(args.labels, args.hand, args.record, args.json)
    hand = load_hand(args.hand)
    settings = parse_settings(args.first, args.set)
    cache = ViewCache(args.cache, settings)
    keys = teacher_keys(hand, settings, cache)
    if args.detect_only:
        return 0
    pairs = [(k, h.facts.keys) for k, h in zip(keys, hand, strict=True)]
    res: dict[str, Any] = {"teacher": agreement(pairs)}
    ms = cache.ms_per_view()
    res["settings"] = settings.to_json() | {"digest": settings.digest()}
    res["hand"] = args.hand.name
    res["detector_ms_per_frame"] = (
        round(sum(ms.get(v, float("nan")) for v in settings.views()), 1) if ms else None
    )
    res["detector_ms_per_view"] = ms
    by_clip: dict[str, list[tuple[frozenset[str], frozenset[str]]]] = {}
    for (t, h), hf in zip(pairs, hand, strict=True):
        by_clip.setdefault(hf.clip, []).append((t, h))
    res["by_clip"] = {c: agreement(p)["keys"] for c, p in by_clip.items()}
    if args.per_frame:
        res["frames"] = [
            {"clip": hf.clip, "frame": hf.frame, "teacher": sorted(t), "hand": sorted(h)}
            for (t, h), hf in zip(pairs, hand, strict=True)
        ]
    if args.record:
        record_check(res["teacher"] | {"hand": args.hand.name}, args.record, settings.digest(), "teacher")
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        a = res["teacher"]
        sys.stdout.write(
            f"teacher vs hand, {a['frames']} frames: key F1 {a['keys']['f1']} (P {a['keys']['precision']}, "
            f"R {a['keys']['recall']}), 'ahead' F1 {a['ahead']['f1']}, exact {a['exact']}, "
            f"detector {res['detector_ms_per_frame']} ms/frame\n"
        )
        for c, k in res["by_clip"].items():
            sys.stdout.write(f"  {c}: F1 {k['f1']} (P {k['precision']}, R {k['recall']})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
