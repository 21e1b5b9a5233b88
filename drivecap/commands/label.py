"""``drivecap label``: teacher facts and captions for every frame of the dashcam clips (JSONL, one file a clip).

The SSD pass is the slow part (about a tenth of a second a frame for the whole picture; the default teacher
also looks at tiles and/or the mirrored picture, see ``TeacherSettings``); its boxes are cached under
``<out>/.detections/`` at a low score, so re-labelling with other thresholds, lane geometry or smoothing
(``--force``) does not run the detector again (``--redetect`` does). A cache holding other detector views has
another name (``<clip>.s<stride>.<key>.json``). Every record and ``stats.json`` name the teacher's settings
digest; labels made by another teacher are labelled again, never mixed. ``--teacher first`` is the first teacher.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from drivecap.config import Config
from drivecap.errors import DrivecapError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "label",
        help="label dashcam frames with the SSD teacher: facts + caption per frame (JSONL)",
        description="Runs the SSD-MobileNetV2 teacher over every frame of the clips and writes one JSONL record "
        "per frame (and one per mirrored frame) to OUT/<clip>.jsonl (training frames) and "
        "OUT/heldout/<clip>.jsonl (held-out frames).",
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="label folder (default: $DRIVECAP_HOME/labels)")
    p.add_argument(
        "--clips", nargs="+", metavar="CLIP", help="only these clips (default: all, held-out included)"
    )
    p.add_argument("--stride", type=int, default=1, help="label every Nth frame (default 1: every frame)")
    p.add_argument(
        "--window", type=int, default=15, help="smoothing window in labelled frames (odd; 1 = none)"
    )
    p.add_argument("--force", action="store_true", help="label clips again even if their files exist")
    p.add_argument(
        "--redetect",
        action="store_true",
        help="run the detector and lane finder again instead of using their caches",
    )
    p.add_argument("--no-lanes", action="store_true", help="do not estimate road curvature (road: unknown)")
    p.add_argument(
        "--teacher",
        choices=("default", "first"),
        default="default",
        help="'first': the first teacher (whole picture only, lane geometry v1), to reproduce the older labels",
    )
    p.set_defaults(func=run)


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from drivecap.assets import CLIPS, AssetStore, drivecap_home
    from drivecap.training import teacher as T
    from drivecap.training.geometry import geometry_for

    if args.stride < 1:
        raise DrivecapError(f"--stride {args.stride} is not allowed: use 1 or more")
    if args.window < 1 or args.window % 2 == 0:
        raise DrivecapError(f"--window {args.window} is not allowed: use an odd number >= 1")
    home = drivecap_home(cfg.paths.home)
    out: Path = args.out or home / "labels"
    store = AssetStore(home)
    names = args.clips or list(CLIPS)
    for n in names:
        if n not in CLIPS:
            raise DrivecapError(f"--clips {n!r} is not a known clip; known: {', '.join(CLIPS)}")

    settings = T.TeacherSettings.first() if args.teacher == "first" else T.TeacherSettings()
    digest = settings.digest()
    teacher: T.Teacher | None = None
    all_stats: dict[str, Any] = {}
    stats_path = out / "stats.json"
    if stats_path.is_file():
        try:
            all_stats = json.loads(stats_path.read_text())
        except ValueError:
            all_stats = {}
    for name in names:
        clip = CLIPS[name]
        targets = []
        if clip.held_out_from != 0:
            targets.append(out / f"{name}.jsonl")
        if clip.held_out_from is not None:
            targets.append(out / "heldout" / f"{name}.jsonl")
        # Labels are reused only when the same teacher made them (its settings digest is in stats.json and in
        # every record): old and new teacher outputs never mix silently.
        made_by = all_stats.get(name, {}).get("teacher", T.TeacherSettings.first().digest())
        if not args.force and all(t.is_file() for t in targets):
            if made_by == digest:
                print(
                    f"{name}: already labelled in {', '.join(map(str, targets))} (use --force to label again)"
                )
                continue
            log.warning("%s: labelled by teacher %s, not %s: labelling again", name, made_by, digest)
        path = store.clip(name)
        geom = geometry_for(name, settings.geometry)
        key = settings.detection_key(geom)
        # The first teacher's cache (whole picture only) keeps its name; more views name theirs by a key.
        cache = out / ".detections" / f"{name}.s{args.stride}{'.' + key if key else ''}.json"
        det = None
        if cache.is_file() and not args.redetect:
            det = T.ClipDetections.from_json(json.loads(cache.read_text()))
            if det.key != key:
                log.warning(
                    "%s: %s holds detections of another kind (%r); detecting again", name, cache, det.key
                )
                det = None
            else:
                log.info("%s: detections from %s", name, cache)
        if det is None:
            if teacher is None:
                pb, pbtxt = store.ssd_model()
                teacher = T.Teacher(pb, pbtxt, settings)
            det = T.detect_clip(teacher, name, path, args.stride, geom=geom)
            _write_json(cache, det.to_json())
        roads = None
        if not args.no_lanes and geom.lane_markings:
            from drivecap.training import lanes

            lane_cache = out / ".lanes" / f"{name}.s{args.stride}.json"
            if args.redetect:
                lane_cache.unlink(missing_ok=True)
            roads = lanes.clip_road_shapes(
                path,
                det.frames,
                det.picture_x,
                geom,
                cache=lane_cache,
            )
        records, stats = T.label_records(det, geom, settings, roads, args.window, clip.held_out_from)
        written = []
        for split, target in (
            ("train", out / f"{name}.jsonl"),
            ("heldout", out / "heldout" / f"{name}.jsonl"),
        ):
            if records[split]:
                _write_jsonl(target, records[split])
                written.append(f"{target} ({len(records[split])} records)")
        all_stats[name] = stats
        _write_json(stats_path, all_stats)
        fr = stats["frames"]
        print(
            f"{name}: {fr['train']} train + {fr['heldout']} held-out frames, {stats['ms_per_frame']} ms/frame, "
            f"caption flicker {stats['flicker_caption']['raw']:.3f} -> {stats['flicker_caption']['smoothed']:.3f}; "
            + "; ".join(written)
        )
    return 0
