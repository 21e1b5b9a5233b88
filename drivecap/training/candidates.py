"""What `drivecap train` compares: decoder architectures (single-clip protocol) and the leave-one-clip-out
candidates, with the seeds and epoch counts its cross-validation checks."""

from __future__ import annotations

from typing import Any

ARCHS: dict[str, dict[str, Any]] = {
    "merge1x3": {"kind": "merge", "rows": 1, "cols": 3},
    "merge2x3": {"kind": "merge", "rows": 2, "cols": 3},
    "attention7x7": {"kind": "attention", "rows": 7, "cols": 7},
}


#: Decoder settings compared by leave-one-clip-out cross-validation (``--protocol loco``), all on the merge
#: model over 2x3-pooled conv5 cells (the single-clip comparison chose it over 1x3 and 7x7 attention):
#: plain; per-token loss weights lifting rare tokens (the road's shape); an auxiliary per-fact loss on the
#: image vector; both.
CANDIDATES: dict[str, dict[str, Any]] = {
    "merge2x3": {},
    "merge2x3+tokenweights": {"token_weight_power": 0.5},
    "merge2x3+auxfacts": {"aux_weight": 1.0},
    "merge2x3+auxfacts+tokenweights": {"aux_weight": 1.0, "token_weight_power": 0.5},
    # The street film's training views four times over (scripts/street_weight_loco.py chose 4 of 1, 2, 4, 8).
    "merge2x3+street4": {"street_repeat": 4},
    # Cells pooled as the mean and the max of their conv5 positions side by side (scripts/pool_loco.py).
    "merge2x3+avgmax": {"pool": "avgmax"},
    "merge2x3+gem3": {"pool": "gem3"},
    # Soft attention over every cell of the conv5 map (rows/cols 0 = the cached map's own grid: 7x7 at
    # 224x224, 7x12 at 224x384), Show-Attend-and-Tell style.
    "attention-grid": {"kind": "attention", "rows": 0, "cols": 0},
    "attention-grid+auxfacts": {"kind": "attention", "rows": 0, "cols": 0, "aux_weight": 1.0},
}
CV_SEEDS = (0, 1, 2)
CV_EPOCHS = (1, 2, 3, 4, 6, 8, 10, 12)
