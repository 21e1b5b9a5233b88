"""Scores teacher variants on the hand-captioned TUNING frames from cached detector views (no SSD run).

    python scripts/teacher_tune.py --cache ~/.cache/drivecap/handcheck/tune.json [--json OUT]

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

#: name -> TeacherSettings fields over the first teacher
VARIANTS: dict[str, dict[str, Any]] = {
    "first": {},
    "geometry v2": {"geometry": "v2"},
    "mirror mean": {"mirror": True},
    "mirror max": {"mirror": True, "mirror_score": "max"},
    "tiles": {"tiles": True},
    **{
        f"consistent {t} r{r} n{n}": {
            "consistent_threshold": t,
            "consistent_radius": r,
            "consistent_frames": n,
        }
        for t in (0.3, 0.35, 0.4)
        for r in (2, 3)
        for n in (1, 2, 3)
        if n <= 2 * r
    },
}


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
    ap.add_argument("--only", nargs="*", help="variant names (default: all)")
    ap.add_argument(
        "--extra", action="append", default=[], metavar="NAME=JSON", help="one more variant: fields as JSON"
    )
    args = ap.parse_args(argv)
    if args.hand.resolve() == H.HAND_CAPTIONS.resolve():
        raise SystemExit("the 32 check frames are not for tuning")
    hand = H.load_hand(args.hand)
    variants = {k: v for k, v in VARIANTS.items() if not args.only or k in args.only}
    for e in args.extra:
        name, _, blob = e.partition("=")
        variants[name] = json.loads(blob)
    table = {}
    for name, fields in variants.items():
        r = score(hand, args.cache, fields)
        table[name] = r
        sys.stdout.write(
            f"{name:28s} key F1 {r['keys']['f1']:.3f} (P {r['keys']['precision']:.3f} R {r['keys']['recall']:.3f})"
            f"  ahead F1 {r['ahead']['f1']:.3f}  exact {r['exact']:.3f}  {r['ms_per_frame']:7.1f} ms/frame  "
            + " ".join(f"{c[:6]}={v:.2f}" for c, v in r["by_clip"].items())
            + "\n"
        )
    if args.json:
        args.json.write_text(json.dumps({"hand": args.hand.name, "variants": table}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
