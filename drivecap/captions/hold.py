"""Fact hysteresis: what the caption says changes only when the decoder has said it for a while.

The decoder sees one frame at a time, and on the frames where a car sits at the edge of "close" or a truck
looks like a bus its caption flips back and forth within a second ("car close on the right" / "car on the
right"). A driver hears every flip. :class:`FactHold` sits between the decoder and the screen and holds the
*facts*, not the text, so one flickering fact does not reset the rest of the caption:

* A road user, light, stop sign or road curve **enters** the caption once the decoder has reported it on
  every caption for ``enter_s`` seconds (its second sighting at the earliest), and **leaves** once it has
  been missing for ``leave_s`` seconds.
* Its attributes are held the same way: a vehicle goes from far to close (or car to truck) only after the
  new value has held for ``enter_s``, back from close to far only after ``leave_s``.
* Urgent facts (a road user close ahead, a red light ahead) enter after ``urgent_enter_s`` (default 0: at
  once). Leaving is never hurried: a person close ahead stays in the caption until ``leave_s`` without one.
* The first caption of a drive is taken as it is: there is nothing yet to flicker against.

Times are the caller's timeline (file position in replay, stream time live); the class has no clock, so a
replay gives the same captions every run. :meth:`FactHold.due` says when a pending change could next be
decided, so the pipeline can ask the gate for one more caption then instead of waiting for the scene to move.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drivecap.captions.facts import ROAD_USERS, VEHICLES, Facts, SceneObject, family

#: An identity: what stays the same while attributes change. ("vehicle", "right"), ("light", "red"),
#: ("stop sign", "ahead"), ("road", "curve left").
Ident = tuple[str, str]


def _ident(o: SceneObject) -> Ident:
    if o.kind in ROAD_USERS:
        return (family(o.kind), o.place)
    if o.kind == "traffic light":
        return ("light", o.colour)
    return (o.kind, o.place)


def _urgent(o: SceneObject) -> bool:
    return o.place == "ahead" and (
        (o.kind in ROAD_USERS and o.distance == "close") or (o.kind == "traffic light" and o.colour == "red")
    )


@dataclass
class _Held:
    """One attribute value that changes only after a different value has held for a while."""

    shown: str
    candidate: str | None = None
    since: float = 0.0

    def update(self, value: str, t: float, hold_s: float) -> None:
        if value == self.shown:
            self.candidate = None
        elif value != self.candidate:
            self.candidate, self.since = value, t
        if self.candidate is not None and t - self.since >= hold_s:
            self.shown, self.candidate = self.candidate, None

    def due(self, hold_s: float) -> float | None:
        return None if self.candidate is None else self.since + hold_s


@dataclass
class _Track:
    """One identity: seen since when, last seen when, shown or not, and its held attributes."""

    obj: SceneObject | None  # the latest sighting (None for a road curve, which has no object)
    run_start: float  # start of the current unbroken run of sightings
    last_seen: float
    shown: bool = False
    missing: bool = False  # shown, but not on the latest caption
    kind: _Held = field(default_factory=lambda: _Held(""))
    distance: _Held = field(default_factory=lambda: _Held("far"))

    @property
    def urgent(self) -> bool:
        return self.obj is not None and _urgent(self.obj)

    def shown_object(self) -> SceneObject | None:
        o = self.obj
        if o is not None and o.kind in ROAD_USERS:
            return SceneObject(self.kind.shown or o.kind, o.place, self.distance.shown, o.colour)
        return o


class FactHold:
    """Facts in (one decoded caption at a time), held facts out; see the module docstring."""

    def __init__(self, enter_s: float = 1.0, leave_s: float = 3.0, urgent_enter_s: float = 0.0) -> None:
        self.enter_s = enter_s
        self.leave_s = leave_s
        self.urgent_enter_s = urgent_enter_s
        self._tracks: dict[Ident, _Track] = {}
        self._started = False

    def update(self, facts: Facts, t: float) -> Facts:
        """The facts to show at time ``t`` given the decoder's facts for the frame at ``t``."""
        first = not self._started
        self._started = True
        seen: dict[Ident, SceneObject | None] = {}
        for o in facts.objects:
            key = _ident(o)
            prev = seen.get(key)
            # Two sightings of one identity (a far car and a close truck on the right): the closer one wins.
            if prev is None or (o.distance == "close" and prev.distance != "close"):
                seen[key] = o
        if facts.road in ("curve left", "curve right"):
            seen[("road", facts.road)] = None
        for key, sighting in seen.items():
            self._sighted(key, sighting, t, first)
        for key, tr in list(self._tracks.items()):
            if key in seen:
                continue
            # Not yet shown: the run of sightings is broken, it starts again at the next one. Shown: it
            # goes once it has been missing for leave_s.
            if not tr.shown or t - tr.last_seen >= self.leave_s:
                del self._tracks[key]
            else:
                tr.missing = True
        return self.shown()

    def _enter_wait(self, tr: _Track) -> float:
        return self.urgent_enter_s if tr.urgent else self.enter_s

    def _sighted(self, key: Ident, o: SceneObject | None, t: float, first: bool) -> None:
        tr = self._tracks.get(key)
        if tr is None:
            tr = self._tracks[key] = _Track(o, run_start=t, last_seen=t)
        tr.obj, tr.last_seen, tr.missing = o, t, False
        if not tr.shown:
            if first or t - tr.run_start >= self._enter_wait(tr):
                tr.shown = True
                if o is not None:
                    tr.kind, tr.distance = _Held(o.kind), _Held(o.distance)
            return
        if o is None or o.kind not in ROAD_USERS:
            return
        if o.kind in VEHICLES:
            tr.kind.update(o.kind, t, self.enter_s)
        tr.distance.update(o.distance, t, self._enter_wait(tr) if o.distance == "close" else self.leave_s)

    def shown(self) -> Facts:
        """The facts shown now (what :meth:`update` last returned)."""
        objs: list[SceneObject] = []
        road, road_seen = "unknown", -1.0
        for key, tr in self._tracks.items():
            if not tr.shown:
                continue
            obj = tr.shown_object()
            if obj is not None:
                objs.append(obj)
            elif tr.last_seen > road_seen:  # both curves held: the one seen last
                road, road_seen = key[1], tr.last_seen
        return Facts(tuple(objs), road)

    def due(self) -> float | None:
        """The earliest time at which a pending change (a fact entering or leaving, an attribute changing)
        could be decided by one more caption; None when nothing is pending."""
        times: list[float] = []
        for tr in self._tracks.values():
            if not tr.shown:
                times.append(tr.run_start + self._enter_wait(tr))
                continue
            if tr.missing:
                times.append(tr.last_seen + self.leave_s)
            kind_due = tr.kind.due(self.enter_s)
            dist_due = tr.distance.due(
                self.leave_s if tr.distance.candidate == "far" else self._enter_wait(tr)
            )
            times.extend(d for d in (kind_due, dist_due) if d is not None)
        return min(times) if times else None

    def reset(self) -> None:
        self._tracks.clear()
        self._started = False
