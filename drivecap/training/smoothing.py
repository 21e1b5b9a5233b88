"""Temporal smoothing of per-frame facts (a majority over a window) and a flicker measure."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from drivecap.captions.facts import Facts, SceneObject

# ------------------------------------------------------------------------------------------ smoothing


@dataclass
class _Slot:
    """The per-frame indicators of one (family, place[, colour]) group, for majority smoothing."""

    any_: bool = False
    close: bool = False
    far: bool = False
    kinds: Counter[str] = field(default_factory=Counter)


def _group(o: SceneObject) -> tuple[str, str, str]:
    fam = "vehicle" if o.kind in ("car", "truck", "bus", "motorcycle") else o.kind
    return fam, o.place, o.colour


def smooth(frames: Sequence[Facts], window: int = 15) -> list[Facts]:
    """Majority vote over a centred window of ``window`` frames, per (family, place) group.

    A group is present when it is in more than half the window; it is close (or far) by its own majority, or by
    whichever is more common when neither has one. Car/truck/bus/motorcycle are voted on together and the kind
    is the commonest in the window (with hysteresis), so a vehicle whose kind flickers between car and truck
    stays one vehicle with one name.
    The road shape is the commonest known shape in the window (or unknown)."""
    if window < 1:
        raise ValueError("window must be >= 1")
    half = window // 2
    slots: list[dict[tuple[str, str, str], _Slot]] = []
    for f in frames:
        d: dict[tuple[str, str, str], _Slot] = {}
        for o in f.objects:
            s = d.setdefault(_group(o), _Slot())
            s.any_ = True
            s.close |= o.distance == "close"
            s.far |= o.distance == "far"
            s.kinds[o.kind] += 1
        slots.append(d)
    out: list[Facts] = []
    n = len(frames)
    last_kind: dict[tuple[str, str, str, str], str] = {}
    for i in range(n):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        need = (hi - lo) / 2
        groups: set[tuple[str, str, str]] = set()
        for j in range(lo, hi):
            groups |= slots[j].keys()
        objs: list[SceneObject] = []
        for g in sorted(groups):
            present = [slots[j][g] for j in range(lo, hi) if g in slots[j]]
            if len(present) <= need:
                continue
            n_close = sum(s.close for s in present)
            n_far = sum(s.far for s in present)
            dists = [d for d, c in (("close", n_close), ("far", n_far)) if c > need]
            if not dists:
                dists = ["close" if n_close >= n_far else "far"]
            for dist in dists:
                kinds: Counter[str] = Counter()
                for s in present:
                    kinds.update(s.kinds)
                # Ties go to the first name, for determinism; then hysteresis: the kind said on the frame
                # before stays while it has at least half the votes of the leader, so a car the detector
                # calls car, truck, car, truck... does not change its name every frame.
                kind = min(kinds, key=lambda k: (-kinds[k], k))
                prev = last_kind.get((*g, dist))
                if prev is not None and 2 * kinds.get(prev, 0) >= kinds[kind]:
                    kind = prev
                last_kind[(*g, dist)] = kind
                objs.append(SceneObject(kind, g[1], dist, g[2]))
        roads = Counter(frames[j].road for j in range(lo, hi) if frames[j].road != "unknown")
        road = min(roads, key=lambda r: (-roads[r], r)) if roads else "unknown"
        out.append(Facts(tuple(objs), road))
    return out


def flicker(sequence: Sequence[Any]) -> float:
    """Share of neighbouring pairs that differ (0 = steady, 1 = changes every frame)."""
    if len(sequence) < 2:
        return 0.0
    changes = sum(a != b for a, b in itertools.pairwise(sequence))
    return changes / (len(sequence) - 1)
