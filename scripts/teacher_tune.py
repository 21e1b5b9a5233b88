"""Scores teacher variants on the hand-captioned TUNING frames from cached detector views (no SSD run).

    python scripts/teacher_tune.py --cache ~/.cache/drivecap/handcheck/tune.json [--json OUT] [--no-tiles]

The views must be in the cache already (``python -m drivecap.training.handcheck --detect-only --hand
drivecap/training/hand_captions_tuning.jsonl --cache FILE --set ...``); a missing view is an error, not a
detector run. Variants are chosen by tuning-set key F1 only; the 32 check frames are never read here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from drivecap.training import handcheck as H
from drivecap.training.teacher_settings import TeacherSettings

TUNING = Path(H.__file__).with_name("hand_captions_tuning.jsonl")

ROAD_USERS = ("person", "bicycle", "car", "bus", "truck", "motorcycle")

#: An extra SSD pass per frame must earn this much tuning key F1 (mirror: 1 pass, tiles: 4), declared before
#: the tile figures were seen: the choice is the highest ``key F1 - COST_PER_PASS * (passes - 1)``.
COST_PER_PASS = 0.01


def grid() -> dict[str, dict[str, Any]]:
    """name -> TeacherSettings fields over the first teacher: every combination of the four changes."""
    consistency: dict[str, dict[str, Any]] = {"": {}}
    for t in (0.3, 0.35, 0.4):
        for r in (2, 3):
            for n in (1, 2):
                for kinds, tag in ((("person", "bicycle"), "pb"), (ROAD_USERS, "all")):
                    consistency[f" consistent {t} r{r} n{n} {tag}"] = {
                        "consistent_threshold": t,
                        "consistent_radius": r,
                        "consistent_frames": n,
                        "consistent_kinds": kinds,
                    }
    out: dict[str, dict[str, Any]] = {}
    for geometry in ("v1", "v2"):
        for mirror in ("off", "agree-mean", "agree-max", "union"):
            for cname, c in consistency.items():
                # The tiled area hangs from the horizon, so tiles were detected with the geometry chosen
                # first (v2 beat v1 by 0.08 key F1 without tiles); v1 with tiles is not in the grid.
                for tiles in (False, True) if geometry == "v2" else (False,):
                    name = f"geometry {geometry}" + (f" mirror {mirror}" if mirror != "off" else "") + cname
                    name += " tiles" if tiles else ""
                    out[name] = {"geometry": geometry, "mirror": mirror, "tiles": tiles, **c}
    return out


#: SSD passes per frame of each detector view (the tiles are 2x2).
VIEW_PASSES = {"whole": 1, "mirror": 1, "tiles": 4}


def passes(fields: dict[str, Any]) -> int:
    """SSD passes per frame of the variant."""
    return sum(VIEW_PASSES[v] for v in TeacherSettings.first(**fields).views())


class OfflineCache(H.ViewCache):
    def boxes(self, clip: str, frame: int, view: str, geom: Any, picture: Any) -> list[Any]:
        key = f"{clip}:{frame}:{self._view_key(view, geom)}"
        if key not in self.entries:
            raise SystemExit(f"{key} is not in the cache: detect it first (handcheck --detect-only)")
        return super().boxes(clip, frame, view, geom, picture)


def score(hand: list[H.HandFrame], cache: Path, fields: dict[str, Any]) -> dict[str, Any]:
    settings = TeacherSettings.first(**fields)
    vc = OfflineCache(cache, settings)
    keys = H.teacher_keys(hand, settings, vc)
    pairs = [(k, h.facts.keys) for k, h in zip(keys, hand, strict=True)]
    a = H.agreement(pairs)
    ms = vc.ms_per_view()
    by_clip: dict[str, list[tuple[frozenset[str], frozenset[str]]]] = {}
    for p, hf in zip(pairs, hand, strict=True):
        by_clip.setdefault(hf.clip, []).append(p)
    return {
        "fields": fields,
        "keys": a["keys"],
        "ahead": a["ahead"],
        "exact": a["exact"],
        "families": {f: v["f1"] for f, v in a["families"].items()},
        "by_clip": {c: H.agreement(p)["keys"]["f1"] for c, p in by_clip.items()},
        "ms_per_frame": round(sum(ms[v] for v in settings.views()), 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--hand", type=Path, default=TUNING)
    ap.add_argument("--json", type=Path, help="write the table here too")
    ap.add_argument("--only", nargs="*", help="variant names (default: the whole grid)")
    ap.add_argument("--no-tiles", action="store_true", help="leave out the variants with tiles")
    ap.add_argument("--verbose", action="store_true", help="a line per variant")
    ap.add_argument("--top", type=int, default=15, help="list the best N")
    ap.add_argument(
        "--extra", action="append", default=[], metavar="NAME=JSON", help="one more variant: fields as JSON"
    )
    args = ap.parse_args(argv)
    if args.hand.resolve() == H.HAND_CAPTIONS.resolve():
        raise SystemExit("the 32 check frames are not for tuning")
    hand = H.load_hand(args.hand)
    variants = {k: v for k, v in grid().items() if not args.only or k in args.only}
    if args.no_tiles:
        variants = {k: v for k, v in variants.items() if not v["tiles"]}
    for e in args.extra:
        name, _, blob = e.partition("=")
        variants[name] = json.loads(blob)
    table = {}
    for name, fields in variants.items():
        r = score(hand, args.cache, fields)
        r["passes"] = passes(fields)
        r["choice_score"] = round(r["keys"]["f1"] - COST_PER_PASS * (r["passes"] - 1), 4)
        table[name] = r
        if not args.verbose:
            continue
        sys.stdout.write(
            f"{name:28s} key F1 {r['keys']['f1']:.3f} (P {r['keys']['precision']:.3f} R {r['keys']['recall']:.3f})"
            f"  ahead F1 {r['ahead']['f1']:.3f}  exact {r['exact']:.3f}  {r['ms_per_frame']:7.1f} ms/frame  "
            + " ".join(f"{c[:6]}={v:.2f}" for c, v in r["by_clip"].items())
            + "\n"
        )
    best = max(table, key=lambda k: (table[k]["choice_score"], -table[k]["passes"]))
    sys.stdout.write(f"{len(table)} variants; chosen (key F1 - {COST_PER_PASS} per extra pass): {best}\n")
    for name in sorted(table, key=lambda k: -table[k]["choice_score"])[: args.top]:
        r = table[name]
        sys.stdout.write(
            f"  {r['choice_score']:.3f}  key F1 {r['keys']['f1']:.3f} (P {r['keys']['precision']:.3f} "
            f"R {r['keys']['recall']:.3f})  ahead F1 {r['ahead']['f1']:.3f}  {r['ms_per_frame']:7.1f} ms  {name}\n"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"hand": args.hand.name, "chosen": best, "cost_per_pass": COST_PER_PASS, "variants": table}
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
