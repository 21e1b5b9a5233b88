"""What the teacher does: its thresholds, lane geometry version, detector views and rules (``TeacherSettings``).

Kept apart from ``teacher.py`` so the view rules (``teacher_views.py``) and the label command can name the
settings without importing the detector."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from drivecap.training.geometry import DEFAULT_GEOMETRY, GEOMETRIES, LaneGeometry
from drivecap.training.teacher_views import road_region

MIRROR_MODES = ("off", "agree-mean", "agree-max", "union")

#: Detections are cached at this score, below every threshold, so thresholds can be tuned without the SSD.
CACHE_SCORE = 0.3


@dataclass(frozen=True)
class TeacherSettings:
    """What the teacher does. The fields after ``threads`` are issue 11 item 3's changes (``teacher_views.py``);
    ``TeacherSettings.first()`` is the first teacher, whose labels they reproduce."""

    score_threshold: float = 0.4  # SSD score below which a box is ignored
    person_threshold: float = 0.45  # people: a little stricter (poles and signs fire as people)
    signal_threshold: float = 0.35  # lights and stop signs score low even when right
    input_size: int = 300
    threads: int = 1  # cv2 threads (not part of what the teacher says)
    # Issue 11 item 3. The defaults are the variant chosen on the 24 tuning frames (hand_captions_tuning.jsonl,
    # scripts/teacher_tune.py): geometry v2, mirror union, people/bicycles/vehicles down to 0.3 when one of the
    # 2 labelled frames either side holds them; no tiles (+0.027 key F1 for 4 more SSD passes a frame).
    geometry: str = DEFAULT_GEOMETRY  # lane geometry version (geometry.GEOMETRIES)
    tiles: bool = False  # also detect 2x2 overlapping tiles of the road area at full resolution
    tile_overlap: float = 0.25  # share of a tile's width/height its neighbour also covers
    tile_above: float = 0.3  # the tiled road area starts this far (picture heights) above the horizon
    nms_iou: float = 0.5  # tile / mirror and whole-picture boxes of one family overlapping this much are one
    #: also detect the mirrored picture: "agree-mean" / "agree-max" keep the whole-picture boxes both views hold
    #: (score: the mean / max of the two), "union" keeps the boxes of both (same-family NMS), "off" neither
    mirror: str = "union"
    mirror_iou: float = 0.4
    consistent_threshold: float | None = (
        0.3  # lower score for consistent_kinds, if held over time (None: off)
    )
    consistent_kinds: tuple[str, ...] = ("person", "bicycle", "car", "bus", "truck", "motorcycle")
    consistent_radius: int = 2  # labelled frames either side that are looked at
    consistent_frames: int = 1  # how many of them must hold the same kind near the same place
    consistent_tolerance: float = 0.5  # "near": bottom centres within this share of the box height

    def __post_init__(self) -> None:
        if self.consistent_threshold is not None and self.consistent_threshold < CACHE_SCORE:
            raise ValueError(f"consistent_threshold must be >= the cache score {CACHE_SCORE}")
        if self.mirror not in MIRROR_MODES:
            raise ValueError(f"mirror must be one of {', '.join(MIRROR_MODES)}, got {self.mirror!r}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"unknown geometry {self.geometry!r}; known: {', '.join(GEOMETRIES)}")

    @classmethod
    def first(cls, **kw: Any) -> TeacherSettings:
        """The first teacher (the labels before issue 11 item 3): one whole-picture look, geometry v1."""
        return cls(**{"geometry": "v1", "tiles": False, "mirror": "off", "consistent_threshold": None, **kw})

    def to_json(self) -> dict[str, Any]:
        """The fields that shape the labels: not threads, nor the parameters of a change that is off."""
        d = asdict(self)
        d.pop("threads")
        d["consistent_kinds"] = list(self.consistent_kinds)
        off = {
            "tiles": ("tile_overlap", "tile_above"),
            "mirror": ("mirror_iou",),
            "consistent_threshold": ("consistent_kinds", "consistent_radius", "consistent_frames"),
        }
        for switch, params in off.items():
            if d[switch] in (False, None, "off"):
                for p in params:
                    d.pop(p)
        if d["consistent_threshold"] is None:
            d.pop("consistent_tolerance")
        if not self.tiles and self.mirror != "union":
            d.pop("nms_iou")
        return d

    def digest(self) -> str:
        """12 hex digits naming what the teacher says (thresholds, geometry, views, rules; not threads)."""
        blob = json.dumps({"cache_score": CACHE_SCORE, **self.to_json()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def views(self) -> tuple[str, ...]:
        """The detector views these settings need (``teacher_views.VIEWS``)."""
        out = ["whole"]
        if self.tiles:
            out.append("tiles")
        if self.mirror != "off":
            out.append("mirror")
        return tuple(out)

    def detection_key(self, geom: LaneGeometry) -> str:
        """'' for the first teacher's whole-picture cache, else 8 hex digits of what the cached boxes depend on."""
        if self.views() == ("whole",):
            return ""
        d: dict[str, Any] = {"cache_score": CACHE_SCORE, "input_size": self.input_size, "views": self.views()}
        if self.tiles:
            d |= {"overlap": self.tile_overlap, "region": road_region(geom, self.tile_above)}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]
