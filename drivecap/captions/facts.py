"""Structured scene facts: what is where relative to the ego lane, and the road's shape.

A :class:`Facts` is what the teacher (a detector) says about one frame and what a caption means. The caption
grammar (:mod:`drivecap.captions.grammar`) turns facts into a caption and back; evaluation compares the two
sides through *fact keys*, a flat set of strings.

Fact keys (the granularity every precision/recall figure uses):

- ``<family>:<place>`` for every object present, and also ``<family>:<place>:close`` when one of them
  is close. ``family`` is ``vehicle`` (car, truck, bus, motorcycle), ``person`` or ``bicycle``; ``place``
  is ``ahead`` (in the ego lane), ``left`` or ``right``. A close object gives both keys, so a close/far
  confusion still counts as finding the object.
- ``light:<colour>`` for a traffic light (colour ``red``, ``yellow``, ``green`` or ``unknown``), any place.
- ``stopsign`` for a stop sign, any place.
- ``road:curve left`` / ``road:curve right``. A straight or unknown road gives no key (captions do not
  say it).

The kind of vehicle (car or truck) is in the facts and the caption but not in the keys: the teacher itself
confuses them, and a driver cares more that something is there than what it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drivecap.errors import DrivecapError

#: Object kinds, most vulnerable first (the caption orders mentions of equal urgency this way).
KINDS: tuple[str, ...] = (
    "person",
    "bicycle",
    "motorcycle",
    "car",
    "truck",
    "bus",
    "traffic light",
    "stop sign",
)
VEHICLES: frozenset[str] = frozenset({"car", "truck", "bus", "motorcycle"})
#: Kinds that are road users (an obstacle when close ahead); the rest are signals.
ROAD_USERS: frozenset[str] = VEHICLES | {"person", "bicycle"}
PLACES: tuple[str, ...] = ("ahead", "left", "right")
DISTANCES: tuple[str, ...] = ("close", "far")
LIGHT_COLOURS: tuple[str, ...] = ("red", "yellow", "green", "unknown")
ROADS: tuple[str, ...] = ("straight", "curve left", "curve right", "unknown")

_MIRROR_PLACE = {"ahead": "ahead", "left": "right", "right": "left"}
_MIRROR_ROAD = {
    "straight": "straight",
    "unknown": "unknown",
    "curve left": "curve right",
    "curve right": "curve left",
}


class FactsError(DrivecapError):
    """A facts record (JSON) names a kind, place, distance, colour or road shape that does not exist."""


def family(kind: str) -> str:
    """The fact-key family of an object kind (see the module docstring)."""
    if kind in VEHICLES:
        return "vehicle"
    if kind == "traffic light":
        return "light"
    if kind == "stop sign":
        return "stopsign"
    return kind


def _check(what: str, value: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise FactsError(f"{what} {value!r} is not one of: {', '.join(allowed)}")


@dataclass(frozen=True, order=True)
class SceneObject:
    """One object: kind, place relative to the ego lane, distance and (traffic lights only) colour."""

    kind: str
    place: str
    distance: str = "far"
    colour: str = ""  # traffic lights only; "" for everything else

    def __post_init__(self) -> None:
        _check("object kind", self.kind, KINDS)
        _check("place", self.place, PLACES)
        _check("distance", self.distance, DISTANCES)
        if self.kind == "traffic light":
            if self.colour == "":
                object.__setattr__(self, "colour", "unknown")
            _check("traffic light colour", self.colour, LIGHT_COLOURS)
        elif self.colour:
            raise FactsError(
                f"colour {self.colour!r} given for a {self.kind}; only traffic lights have a colour"
            )

    def mirrored(self) -> SceneObject:
        return SceneObject(self.kind, _MIRROR_PLACE[self.place], self.distance, self.colour)

    def to_json(self) -> dict[str, str]:
        out = {"kind": self.kind, "place": self.place, "distance": self.distance}
        if self.colour:
            out["colour"] = self.colour
        return out


@dataclass(frozen=True)
class Facts:
    """The scene facts of one frame. Objects are a set: stored sorted and without repeats, so equal scenes
    compare equal and serialise identically."""

    objects: tuple[SceneObject, ...] = field(default=())
    road: str = "unknown"

    def __post_init__(self) -> None:
        objs = tuple(sorted(set(self.objects)))
        for o in objs:
            if not isinstance(o, SceneObject):
                raise FactsError(f"Facts.objects must hold SceneObject, got {type(o).__name__}")
        object.__setattr__(self, "objects", objs)
        _check("road shape", self.road, ROADS)

    # ---------------------------------------------------------------------------------------- views

    def mirrored(self) -> Facts:
        """The facts of the horizontally flipped frame: left <-> right, curve left <-> curve right."""
        return Facts(tuple(o.mirrored() for o in self.objects), _MIRROR_ROAD[self.road])

    @property
    def urgent(self) -> bool:
        """A road user close ahead, or a red light ahead: speech lets such a caption go first."""
        return any(
            o.place == "ahead"
            and (
                (o.kind in ROAD_USERS and o.distance == "close")
                or (o.kind == "traffic light" and o.colour == "red")
            )
            for o in self.objects
        )

    @property
    def keys(self) -> frozenset[str]:
        """The flat fact keys (see the module docstring for the granularity)."""
        out: set[str] = set()
        for o in self.objects:
            fam = family(o.kind)
            if fam == "light":
                out.add(f"light:{o.colour}")
            elif fam == "stopsign":
                out.add("stopsign")
            else:
                out.add(f"{fam}:{o.place}")
                if o.distance == "close":
                    out.add(f"{fam}:{o.place}:close")
        if self.road in ("curve left", "curve right"):
            out.add(f"road:{self.road}")
        return frozenset(out)

    # ------------------------------------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        """Plain data for JSONL: ``{"objects": [{kind, place, distance[, colour]}...], "road": ...}``."""
        return {"objects": [o.to_json() for o in self.objects], "road": self.road}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> Facts:
        """Inverse of :meth:`to_json` (also takes the JSON text); a bad record raises :class:`FactsError`."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise FactsError(f"facts are not valid JSON ({exc})") from None
        if not isinstance(data, Mapping):
            raise FactsError(f"facts must be a JSON object, got {type(data).__name__}")
        raw = data.get("objects", [])
        if not isinstance(raw, list):
            raise FactsError("facts.objects must be a list")
        objs = []
        for item in raw:
            if not isinstance(item, Mapping) or "kind" not in item or "place" not in item:
                raise FactsError(f"facts object {item!r} needs at least kind and place")
            objs.append(
                SceneObject(
                    str(item["kind"]),
                    str(item["place"]),
                    str(item.get("distance", "far")),
                    str(item.get("colour", "")),
                )
            )
        return cls(tuple(objs), str(data.get("road", "unknown")))

    @classmethod
    def from_keys(cls, keys: Iterable[str]) -> Facts:
        """Facts that give exactly these keys (vehicles become cars, lights and stop signs go ahead).

        For classifiers that predict keys (the per-fact baseline) and need a caption to compare."""
        objs: list[SceneObject] = []
        road = "unknown"
        keyset = set(keys)
        for key in keyset:
            parts = key.split(":")
            if parts[0] in ("vehicle", "person", "bicycle") and len(parts) in (2, 3) and parts[1] in PLACES:
                kind = "car" if parts[0] == "vehicle" else parts[0]
                close = len(parts) == 3 and parts[2] == "close"
                objs.append(SceneObject(kind, parts[1], "close" if close else "far"))
            elif parts[0] == "light" and len(parts) == 2 and parts[1] in LIGHT_COLOURS:
                objs.append(SceneObject("traffic light", "ahead", "far", parts[1]))
            elif key == "stopsign":
                objs.append(SceneObject("stop sign", "ahead"))
            elif parts[0] == "road" and len(parts) == 2 and parts[1] in ("curve left", "curve right"):
                road = parts[1]
            else:
                raise FactsError(f"unknown fact key {key!r}; see ALL_KEYS in drivecap.captions.facts")
        # A close key already implies its presence key; the far duplicate would be harmless but noisy.
        closes = {(o.kind, o.place) for o in objs if o.distance == "close"}
        objs = [o for o in objs if o.distance == "close" or (o.kind, o.place) not in closes]
        return cls(tuple(objs), road)


def _all_keys() -> tuple[str, ...]:
    keys: list[str] = []
    for fam in ("vehicle", "person", "bicycle"):
        for place in PLACES:
            keys += [f"{fam}:{place}", f"{fam}:{place}:close"]
    keys += [f"light:{c}" for c in LIGHT_COLOURS]
    keys += ["stopsign", "road:curve left", "road:curve right"]
    return tuple(keys)


#: Every fact key there is, in a fixed order (columns for per-fact classifiers and per-fact metrics).
ALL_KEYS: tuple[str, ...] = _all_keys()


def mirror_key(key: str) -> str:
    """The key of the mirrored frame's fact (left <-> right)."""
    parts = key.split(":")
    swapped = [
        {"left": "right", "right": "left", "curve left": "curve right", "curve right": "curve left"}.get(p, p)
        for p in parts
    ]
    return ":".join(swapped)
