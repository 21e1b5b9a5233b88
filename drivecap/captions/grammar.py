"""The caption grammar: scene facts -> one short driver caption, and a parser back from caption to facts.

A caption is a list of *mentions* separated by `` , `` (the comma is a token of its own), most urgent first:

1. road users close ahead ("person close ahead", "car close ahead")
2. a red light anywhere, a stop sign ahead ("red light ahead", "stop sign ahead")
3. road users farther ahead ("truck ahead")
4. road users close on a side ("car close on the left")
5. other lights, stop signs on a side ("green light on the right")
6. road users farther away on a side ("bus on the right")
7. the road's shape ("road curves left"); a straight or unknown road is not said.

Mentions of equal urgency go in the order of :data:`~drivecap.captions.facts.KINDS` (vulnerable first). The
same kind at the same distance on both sides is one mention, "car on both sides": so nothing in the order
depends on left versus right, and the mirrored frame's caption is exactly the caption with left and right
swapped (:func:`mirror_caption`). Mentions are added while the caption stays within :data:`MAX_WORDS` words
(commas not counted); one that does not fit is left out and shorter ones after it may still go in. No mention
at all gives "clear road ahead".

What a caption cannot say is dropped by :func:`simplify`: repeats, a far object beside a close one of the same
kind and place, the distance of lights and signs, a straight road, whatever did not fit. ``parse(render(f)) ==
simplify(f)`` holds for every ``f``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drivecap.captions.facts import KINDS, ROAD_USERS, Facts, SceneObject

MAX_WORDS = 12
CLEAR = "clear road ahead"
SEP = ","

#: Every token :func:`render` can produce (the comma included), in a fixed order.
VOCABULARY: list[str] = [
    ",",
    "ahead",
    "both",
    "bicycle",
    "bus",
    "car",
    "clear",
    "close",
    "curves",
    "green",
    "left",
    "light",
    "motorcycle",
    "on",
    "person",
    "red",
    "right",
    "road",
    "sides",
    "sign",
    "stop",
    "the",
    "traffic",
    "truck",
    "yellow",
]

_KIND_RANK = {k: i for i, k in enumerate(KINDS)}
_COLOUR_RANK = {"red": 0, "yellow": 1, "green": 2, "unknown": 3, "": 4}
_PLACE_WORDS = {
    "ahead": ["ahead"],
    "left": ["on", "the", "left"],
    "right": ["on", "the", "right"],
    "both": ["on", "both", "sides"],
}
_ROAD_USER_WORDS = {"person", "bicycle", "motorcycle", "car", "truck", "bus"}
_COLOUR_WORDS = {"red", "yellow", "green"}


@dataclass(frozen=True)
class _Mention:
    kind: str  # an object kind, or "road"
    place: str  # ahead | left | right | both; for the road: curve left | curve right
    distance: str = "far"
    colour: str = ""

    @property
    def tier(self) -> int:
        if self.kind == "road":
            return 6
        if self.kind in ROAD_USERS:
            if self.place == "ahead":
                return 0 if self.distance == "close" else 2
            return 3 if self.distance == "close" else 5
        if (self.kind == "traffic light" and self.colour == "red") or (
            self.kind == "stop sign" and self.place == "ahead"
        ):
            return 1
        return 4

    def sort_key(self) -> tuple[int, int, int, int]:
        # Place ranks ahead before both; left and right rank the same (they never tie: see the module doc).
        place_rank = {"ahead": 0, "both": 1}.get(self.place, 2)
        return (self.tier, _KIND_RANK.get(self.kind, len(KINDS)), _COLOUR_RANK[self.colour], place_rank)

    def words(self) -> list[str]:
        if self.kind == "road":
            return ["road", "curves", self.place.split()[1]]
        if self.kind == "traffic light":
            head = ["traffic", "light"] if self.colour == "unknown" else [self.colour, "light"]
        elif self.kind == "stop sign":
            head = ["stop", "sign"]
        else:
            head = [self.kind]
        if self.distance == "close":
            head.append("close")
        return head + _PLACE_WORDS[self.place]

    def objects(self) -> list[SceneObject]:
        if self.kind == "road":
            return []
        places = ["left", "right"] if self.place == "both" else [self.place]
        return [SceneObject(self.kind, p, self.distance, self.colour) for p in places]


def _mentions(facts: Facts) -> list[_Mention]:
    """All mentions the facts call for, most urgent first, before the word budget."""
    atoms: set[tuple[str, str, str, str]] = set()
    for o in facts.objects:
        # Lights and signs are said without a distance: the teacher's box height says little about them.
        dist = o.distance if o.kind in ROAD_USERS else "far"
        atoms.add((o.kind, o.place, dist, o.colour))
    # A close object already says that kind is there; a far one of the same kind and place adds nothing.
    atoms = {a for a in atoms if not (a[2] == "far" and (a[0], a[1], "close", a[3]) in atoms)}
    mentions: list[_Mention] = []
    for kind, place, dist, colour in atoms:
        if place == "right" and (kind, "left", dist, colour) in atoms:
            continue  # said once, with the left one, as "on both sides"
        if place == "left" and (kind, "right", dist, colour) in atoms:
            place = "both"
        mentions.append(_Mention(kind, place, dist, colour))
    if facts.road in ("curve left", "curve right"):
        mentions.append(_Mention("road", facts.road))
    mentions.sort(key=_Mention.sort_key)
    return mentions


def _chosen(facts: Facts) -> list[_Mention]:
    out: list[_Mention] = []
    used = 0
    for m in _mentions(facts):
        n = len(m.words())
        if used + n <= MAX_WORDS:
            out.append(m)
            used += n
    return out


def render(facts: Facts) -> str:
    """The one caption for these facts (deterministic): lower-case words and `` , `` between mentions."""
    chosen = _chosen(facts)
    if not chosen:
        return CLEAR
    return f" {SEP} ".join(" ".join(m.words()) for m in chosen)


def simplify(facts: Facts) -> Facts:
    """The facts the caption of ``facts`` actually says (what :func:`parse` gives back from it)."""
    chosen = _chosen(facts)
    objs = [o for m in chosen for o in m.objects()]
    roads = [m.place for m in chosen if m.kind == "road"]
    return Facts(tuple(objs), roads[0] if roads else "unknown")


# ---------------------------------------------------------------------------------------------- parsing

_TOKEN = re.compile(r"[a-z]+|,")


def tokenize(text: str) -> list[str]:
    """Caption text -> tokens: lower-case words and the comma; any other character separates words."""
    return _TOKEN.findall(text.lower())


def detokenize(tokens: list[str]) -> str:
    return " ".join(tokens)


_SPACE_BEFORE_COMMA = re.compile(r"\s+,")


def for_people(text: str) -> str:
    """The token form the model speaks in -> the sentence a driver reads and hears.

    ``car close on the left , road curves left`` -> ``Car close on the left, road curves left.`` The model, the
    JSONL ``tokens`` field and evaluation keep the token form; :func:`parse` reads both forms.
    """
    s = _SPACE_BEFORE_COMMA.sub(",", " ".join(text.split()))
    if not s:
        return ""
    s = s[0].upper() + s[1:]
    return s if s[-1] in ".!?" else s + "."


class _Open:
    """The mention being read by :func:`parse`."""

    def __init__(self, kind: str, colour: str = "") -> None:
        self.kind = kind
        self.colour = colour
        self.place = ""
        self.distance = "far"


def parse(text: str) -> Facts:
    """Caption -> facts. Exact inverse of :func:`render` on its captions (up to :func:`simplify`).

    Tolerant of what a decoder may produce: unknown words are skipped, a missing comma between mentions is
    fine (a new object word starts a new mention), a mention without a place says nothing, repeats merge.
    """
    tokens = tokenize(text)
    objs: list[SceneObject] = []
    road = "unknown"
    cur: _Open | None = None

    def close_mention() -> None:
        nonlocal road
        if cur is None or not cur.place:
            return
        if cur.kind == "road":
            if cur.place in ("left", "right"):
                road = f"curve {cur.place}"
            return
        if cur.kind == "clear":
            return
        places = ["left", "right"] if cur.place == "both" else [cur.place]
        dist = cur.distance if cur.kind in ROAD_USERS else "far"
        colour = (cur.colour or "unknown") if cur.kind == "traffic light" else ""
        objs.extend(SceneObject(cur.kind, p, dist, colour) for p in places)

    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        start: _Open | None = None
        step = 1
        if tok == SEP:
            close_mention()
            cur = None
        elif tok in _COLOUR_WORDS and nxt == "light":
            start, step = _Open("traffic light", tok), 2
        elif tok == "traffic" and nxt == "light":
            start, step = _Open("traffic light", "unknown"), 2
        elif tok == "stop" and nxt == "sign":
            start, step = _Open("stop sign"), 2
        elif tok in _ROAD_USER_WORDS:
            start = _Open(tok)
        elif tok == "clear":
            start = _Open("clear")
        elif tok == "road":
            if cur is None or cur.kind != "clear":
                start = _Open("road")
        elif cur is not None:
            if tok == "close":
                cur.distance = "close"
            elif tok == "ahead":
                cur.place = "ahead"
            elif tok in ("left", "right"):
                cur.place = tok
            elif tok in ("both", "sides"):
                cur.place = "both"
        if start is not None:
            close_mention()
            cur = start
        i += step
    close_mention()
    return Facts(tuple(objs), road)


_MIRROR_WORD = {"left": "right", "right": "left"}


def mirror_caption(text: str) -> str:
    """The caption of the horizontally flipped frame: left <-> right (tokens re-joined with single spaces)."""
    return detokenize([_MIRROR_WORD.get(t, t) for t in tokenize(text)])


def mentions_side(text: str) -> bool:
    """Whether a caption says left or right (only such frames count for flip consistency)."""
    return any(t in _MIRROR_WORD or t == "both" for t in tokenize(text))
