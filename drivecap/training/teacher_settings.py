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
    geometry: str = DEFAULT_GEOMETRY  # lane geometry version (geometry.GEOMETRIES)
    tiles: bool = False  # also detect 2x2 overlapping tiles of the road area at full resolution
    tile_overlap: float = 0.25  # share of a tile's width/height its neighbour also covers
    tile_above: float = 0.3  # the tiled road area starts this far (picture heights) above the horizon
    nms_iou: float = 0.5  # tile and whole-picture boxes of one family overlapping this much are one
    mirror: bool = False  # also detect the mirrored picture; keep whole-picture boxes both views hold
    mirror_iou: float = 0.4
    mirror_score: str = "mean"  # score of an agreed box: "mean" or "max" of the two views
    consistent_threshold: float | None = None  # lower score for consistent_kinds, if held over time
    consistent_kinds: tuple[str, ...] = ("person", "bicycle")
    consistent_radius: int = 3  # labelled frames either side that are looked at
    consistent_frames: int = 2  # how many of them must hold the same kind near the same place
    consistent_tolerance: float = 0.5  # "near": bottom centres within this share of the box height

    def __post_init__(self) -> None:
        if self.consistent_threshold is not None and self.consistent_threshold < CACHE_SCORE:
            raise ValueError(f"consistent_threshold must be >= the cache score {CACHE_SCORE}")
        if self.mirror_score not in ("mean", "max"):
            raise ValueError(f"mirror_score must be 'mean' or 'max', got {self.mirror_score!r}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"unknown geometry {self.geometry!r}; known: {', '.join(GEOMETRIES)}")

    @classmethod
    def first(cls, **kw: Any) -> TeacherSettings:
        """The first teacher (the labels before issue 11 item 3): one whole-picture look, geometry v1."""
        return cls(**{"geometry": "v1", "tiles": False, "mirror": False, "consistent_threshold": None, **kw})

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("threads")
        d["consistent_kinds"] = list(self.consistent_kinds)
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
        if self.mirror:
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
