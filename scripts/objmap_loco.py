"""Box-supervised object maps on the conv5 grid, measured under leave-one-clip-out, training clips only.

    drivecap label --teacher first                                 # label records with the teacher's boxes
    drivecap --set encoder.threads=2 train --extract-only          # the conv5 feature cache (every 4th frame)
    python scripts/objmap_loco.py --heads none 1 3 --seeds 1 --json out.json

The decoder learns where things are from the caption alone: about ten words a frame, from four highway clips, so
it learns where the traffic of those clips was (a fold's left-out clip has it elsewhere). The teacher's boxes say
much more: at every position of the (512, h, w) conv5 map, whether a vehicle, a person, a bicycle, a traffic light
or a stop sign covers it, and whether it is close. A small head (``--heads 1``: a 1x1 conv, 512 -> 64 -> 8
channels; ``3``: a 3x3 conv first) is trained on those per-position targets, with the same weights at every
position, so a car learnt on the left of one clip is found on the right of another. Its sigmoid maps are pooled
into the decoder's 2x3 cells (mean and max of each channel) and put beside the mean-pooled conv5 cells; the merge
decoder is trained on that as before. ``none`` is the control (the shipped cells). In each fold the head, the
feature statistics and the decoder see the fold's training clips only; the epoch count is chosen by the mean of
the five folds. Nothing here reads a held-out frame.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from drivecap.captions.facts import family
from drivecap.config import load_config
from drivecap.training.data import Sample, Split, labels_dir, read_labels
from drivecap.training.features import load_clip_features

log = logging.getLogger("objmap_loco")

#: Head output channels: a road user of the family covers the position (and it is close), a light, a stop sign.
CHANNELS = (
    "vehicle",
    "vehicle:close",
    "person",
    "person:close",
    "bicycle",
    "bicycle:close",
    "light",
    "stopsign",
)
_INDEX = {c: i for i, c in enumerate(CHANNELS)}


def box_targets(rec: dict[str, Any], h: int, w: int, cover: float = 0.2) -> npt.NDArray[np.float32]:
    """(channels, h, w) targets of one label record: 1 where a kept box covers at least ``cover`` of the
    position's part of the encoder input, or where its centre lies. Boxes are picture fractions; the encoder
    sees the whole frame, side bars included, so x is mapped through the record's picture columns."""
    out = np.zeros((len(CHANNELS), h, w), np.float32)
    width = float(rec["size"][0])
    x0, x1 = (float(v) for v in rec["picture_x"])
    if rec.get("mirrored"):
        x0, x1 = width - x1, width - x0
    ys = np.arange(h + 1) / h
    xs = np.arange(w + 1) / w
    for b in rec.get("raw_boxes", []):
        fam = family(str(b["kind"]))
        bx1, by1, bx2, by2 = (float(v) for v in b["box"])
        fx1, fx2 = (x0 + bx1 * (x1 - x0)) / width, (x0 + bx2 * (x1 - x0)) / width
        oy = np.clip(np.minimum(by2, ys[1:]) - np.maximum(by1, ys[:-1]), 0, None) * h
        ox = np.clip(np.minimum(fx2, xs[1:]) - np.maximum(fx1, xs[:-1]), 0, None) * w
        hit = np.outer(oy, ox) >= cover
        cy = min(h - 1, max(0, int((by1 + by2) / 2 * h)))
        cx = min(w - 1, max(0, int((fx1 + fx2) / 2 * w)))
        hit[cy, cx] = True
        names = (
            [fam] if fam in ("light", "stopsign") else [fam] + ([f"{fam}:close"] * (b["distance"] == "close"))
        )
        for n in names:
            if n in _INDEX:
                out[_INDEX[n]][hit] = 1.0
    return out


def load_maps(
    home: Path, folder: Path, clips: list[str], ranges: dict[str, tuple[int, int | None]], stride: int
) -> tuple[list[Sample], npt.NDArray[np.float16], npt.NDArray[np.float32], list[tuple[float, float, float]]]:
    """Training-part label records (frame and mirror, not augmented) with their conv5 maps, box targets and
    picture columns (frame width, x0, x1; mirrored for mirror views)."""
    samples: list[Sample] = []
    maps: list[npt.NDArray[np.float16]] = []
    targets: list[npt.NDArray[np.float32]] = []
    columns: list[tuple[float, float, float]] = []
    for clip in clips:
        feats = load_clip_features(folder, clip)
        if feats is None:
            raise SystemExit(
                f"no cached features for {clip} in {folder}: run `drivecap train --extract-only`"
            )
        index = feats.index()
        lo, hi = ranges.get(clip, (0, None))
        h, w = feats.fmap.shape[2:]
        for rec in read_labels(labels_dir(home) / f"{clip}.jsonl"):
            fr = int(rec["frame"])
            if rec.get("augmented") or fr < lo or (hi is not None and fr >= hi) or fr % stride:
                continue
            i = index.get(fr)
            if i is None:
                continue
            m = bool(rec.get("mirrored", False))
            samples.append(
                Sample(clip, fr, m, str(rec["caption"]), rec.get("facts", {}), str(rec.get("split")))
            )
            maps.append((feats.fmap_mirror if m else feats.fmap)[i])
            targets.append(box_targets(rec, h, w))
            width = float(rec["size"][0])
            x0, x1 = (float(v) for v in rec["picture_x"])
            columns.append((width, width - x1, width - x0) if m else (width, x0, x1))
    return samples, np.stack(maps), np.stack(targets), columns


def _fit(head: Any, loss_fn: Any, x: np.ndarray, y: np.ndarray, seed: int, epochs: int, decay: float) -> Any:
    """AdamW (lr 1e-3) over shuffled batches of 64 for ``epochs`` epochs; the head is returned in eval mode."""
    import torch

    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=decay)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        head.train()
        for b in np.array_split(rng.permutation(len(x)), max(1, len(x) // 64)):
            opt.zero_grad()
            loss_fn(head(xt[b]), yt[b]).backward()
            opt.step()
    head.eval()
    return head


def train_head(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.float32], kernel: int, seed: int, epochs: int, threads: int
) -> Any:
    """A conv head (kernel x kernel conv 512 -> 64, ReLU, 1x1 conv -> channels) fitted with class-balanced BCE."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    c = x.shape[1]
    head = nn.Sequential(
        nn.Dropout(0.2),
        nn.Conv2d(c, 64, kernel, padding=kernel // 2),
        nn.ReLU(),
        nn.Conv2d(64, y.shape[1], 1),
    )
    pos = y.mean(axis=(0, 2, 3))
    pw = torch.from_numpy(np.clip((1 - pos) / np.maximum(pos, 1e-4), 1.0, 20.0).astype(np.float32))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pw.view(1, -1, 1, 1))
    return _fit(head, loss_fn, x, y, seed, epochs, 1e-2)


ROADS = ("curve left", "curve right")


def road_targets(samples: list[Sample]) -> npt.NDArray[np.int64]:
    """0 = straight or unknown, 1 = curve left, 2 = curve right (the label's smoothed road shape)."""
    return np.array(
        [1 + ROADS.index(r) if (r := str(x.facts.get("road", ""))) in ROADS else 0 for x in samples], np.int64
    )


def train_road_head(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], seed: int, epochs: int, threads: int
) -> Any:
    """The road's shape from the whole map: a 3x3 conv 512 -> 16, ReLU, then a linear layer over every position
    (the shape of the road is where its edges are), class-balanced cross-entropy."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    _, c, h, w = x.shape
    head = nn.Sequential(
        nn.Dropout(0.2),
        nn.Conv2d(c, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(16 * h * w, 3),
    )
    counts = np.bincount(y, minlength=3).astype(np.float32)
    weight = torch.from_numpy((counts.sum() / np.maximum(counts, 1.0) / 3).astype(np.float32))
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    return _fit(head, loss_fn, x, y, seed, epochs, 5e-2)


def road_probs(head: Any, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    import torch

    with torch.no_grad():
        return np.concatenate(
            [torch.softmax(head(torch.from_numpy(x[i : i + 256])), 1).numpy() for i in range(0, len(x), 256)]
        )


def road_f1(p: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> float:
    """Micro F1 of the curve keys (curve left / right) of the argmax against the labels."""
    pred = p.argmax(1)
    tp = float(((pred == y) & (y > 0)).sum())
    fp = float(((pred != y) & (pred > 0)).sum())
    fn = float(((pred != y) & (y > 0)).sum())
    return round(2 * tp / (2 * tp + fp + fn), 4) if tp + fp + fn else 0.0


def head_maps(head: Any, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    import torch

    with torch.no_grad():
        return np.concatenate(
            [torch.sigmoid(head(torch.from_numpy(x[i : i + 256]))).numpy() for i in range(0, len(x), 256)]
        )


def pooled(maps: np.ndarray, rows: int, cols: int, mode: str) -> npt.NDArray[np.float32]:
    """Cells of (N, C, h, w) maps as the cache's maps are pooled (float16 maps, as cached)."""
    from drivecap.training.data import _cells

    return _cells(maps if maps.dtype == np.float16 else maps.astype(np.float16), rows, cols, mode)


def zone_masks(
    samples: list[Sample], recs_px: list[tuple[float, float, float]], h: int, w: int
) -> np.ndarray:
    """(N, 3, h, w) masks of the positions whose centre is ahead / left / right of the ego lane, by the clip's
    lane geometry (the teacher's), from a little above the horizon end of the lane to the bonnet; x through the
    picture columns (``recs_px``: frame width, picture x0, x1 of each view, already mirrored for mirror views).
    A mirror view's zones are its frame's, flipped, with left and right swapped (lanes need not be centred)."""
    from drivecap.training.geometry import CLIP_GEOMETRY, LaneGeometry

    ys = (np.arange(h) + 0.5) / h
    xs = (np.arange(w) + 0.5) / w
    done: dict[tuple[str, float, float, float], np.ndarray] = {}

    def frame_zones(clip: str, width: float, x0: float, x1: float) -> np.ndarray:
        key = (clip, width, x0, x1)
        if key not in done:
            g = CLIP_GEOMETRY.get(clip, LaneGeometry())
            z = np.zeros((3, h, w), np.float32)
            for i, y in enumerate(ys):
                # Rows that overlap the road from a little above the lane's horizon end down to the bonnet;
                # the place is read at the row's centre held inside that span.
                if (i + 1) / h < g.top_y - 0.1 or i / h > g.bonnet_y:
                    continue
                yy = min(max(y, g.top_y), g.bonnet_y)
                for j, fx in enumerate(xs):
                    px = (fx * width - x0) / (x1 - x0)
                    if 0.0 <= px <= 1.0:
                        z[("ahead", "left", "right").index(g.place_of(px, yy)), i, j] = 1.0
            done[key] = z
        return done[key]

    out = np.empty((len(samples), 3, h, w), np.float32)
    for n, (x, (width, x0, x1)) in enumerate(zip(samples, recs_px, strict=True)):
        if x.mirrored:  # the frame's own columns, then its zones mirrored
            out[n] = frame_zones(x.clip, width, width - x1, width - x0)[[0, 2, 1], :, ::-1]
        else:
            out[n] = frame_zones(x.clip, width, x0, x1)
    return out


def zone_features(prob: np.ndarray, zones: np.ndarray) -> np.ndarray:
    """(N, 3 zones x channels x (max, mean)) of the head's maps inside each zone."""
    feats = []
    for z in range(zones.shape[1]):
        m = zones[:, z : z + 1]  # (N, 1, h, w)
        cnt = np.maximum(m.sum(axis=(2, 3)), 1.0)
        feats += [(prob * m).max(axis=(2, 3)), (prob * m).sum(axis=(2, 3)) / cnt]
    return np.concatenate(feats, axis=1).astype(np.float32)


def map_f1(p: npt.NDArray[np.float32], y: npt.NDArray[np.float32]) -> dict[str, float]:
    """Per-channel F1 of the head's maps at 0.5 against the box targets (a check that the head learnt)."""
    out = {}
    for k, name in enumerate(CHANNELS):
        pk, yk = p[:, k] >= 0.5, y[:, k] >= 0.5
        tp, fp, fn = float((pk & yk).sum()), float((pk & ~yk).sum()), float((~pk & yk).sum())
        out[name] = round(2 * tp / (2 * tp + fp + fn), 4) if tp + fp + fn else 0.0
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    p.add_argument(
        "--heads", nargs="+", default=["none", "1", "3"], help="none (control) or a conv kernel size"
    )
    p.add_argument(
        "--base-pool", default="avg", help="pooling of the conv5 cells beside the head's (POOL_MODES)"
    )
    p.add_argument(
        "--no-base", action="store_true", help="the head's cells alone, without the conv5 cells beside them"
    )
    p.add_argument(
        "--zones",
        action="store_true",
        help="also the head's maps pooled over the ego lane's ahead / left / right zones, joined to every cell",
    )
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--cols", type=int, default=3)
    p.add_argument("--seeds", type=int, default=1, help="decoders per fold (seeds 0..n-1, averaged)")
    p.add_argument("--head-epochs", type=int, default=12)
    p.add_argument(
        "--road", action="store_true", help="also a road-shape head whose 3 probabilities join every cell"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stride", type=int, default=4, help="every Nth training frame")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from drivecap.training.crossval import best_epoch_summary, fold_by_epoch
    from drivecap.training.features import configured_features
    from drivecap.training.pipeline import CV_EPOCHS, caption_vocab, train_ranges, training_clips
    from drivecap.training.train import TrainSettings

    cfg = load_config(None, args.set)
    home, folder = configured_features(cfg)
    clips = training_clips()
    vocab = caption_vocab()
    t0 = time.perf_counter()
    samples, maps16, targets, columns = load_maps(home, folder, clips, train_ranges(), args.stride)
    zones = zone_masks(samples, columns, *maps16.shape[2:]) if args.zones else None
    log.info("%d views, maps %s, loaded in %.0f s", len(samples), maps16.shape, time.perf_counter() - t0)
    base = pooled(maps16, args.rows, args.cols, args.base_pool)
    s = TrainSettings(
        kind="merge", rows=args.rows, cols=args.cols, max_epochs=max(CV_EPOCHS), threads=args.threads
    )
    report: dict[str, Any] = {
        "protocol": "leave-one-clip-out, training clips only, the labels in $DRIVECAP_HOME/labels, merge decoder "
        "on 2x3 cells, runtime numpy decoder with the mirror view; epochs chosen by the mean of five folds",
        "command": "python scripts/objmap_loco.py " + " ".join(sys.argv[1:]),
        "machine": f"{_cpu_name()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}",
        "input": [cfg.encoder.input_height, cfg.encoder.input_width],
        "settings": asdict(s),
        "road_head": args.road,
        "zones": args.zones,
        "base_pool": None if args.no_base else args.base_pool,
        "stride": args.stride,
        "seeds": args.seeds,
        "head_epochs": args.head_epochs,
        "channels": list(CHANNELS),
        "target_share": {c: round(float(targets[:, k].mean()), 4) for k, c in enumerate(CHANNELS)},
        "runs": {},
    }
    logmaps = np.log1p(maps16.astype(np.float32))
    roads = road_targets(samples)
    for head_kind in args.heads:
        t1 = time.perf_counter()
        folds: dict[str, dict[int, dict[str, float]]] = {}
        head_f1: dict[str, dict[str, float]] = {}
        road_head_f1: dict[str, float] = {}
        for clip in sorted({x.clip for x in samples}):
            keep = np.array([x.clip != clip for x in samples])
            cells = base
            if head_kind != "none" or args.road:
                mu = logmaps[keep].mean(axis=(0, 2, 3), keepdims=True)
                sd = logmaps[keep].std(axis=(0, 2, 3), keepdims=True) + 1e-3
                x = ((logmaps - mu) / sd).astype(np.float32)
            if head_kind != "none":
                head = train_head(x[keep], targets[keep], int(head_kind), 0, args.head_epochs, args.threads)
                prob = head_maps(head, x)
                head_f1[clip] = map_f1(prob[~keep], targets[~keep])
                mine = pooled(prob, args.rows, args.cols, "avgmax")
                cells = mine if args.no_base else np.concatenate([base, mine], axis=2)
                if zones is not None:
                    zf = zone_features(prob, zones)
                    cells = np.concatenate([cells, np.repeat(zf[:, None, :], cells.shape[1], axis=1)], axis=2)
            if args.road:
                rhead = train_road_head(x[keep], roads[keep], 0, args.head_epochs, args.threads)
                rp = road_probs(rhead, x)
                road_head_f1[clip] = road_f1(rp[~keep], roads[~keep])
                cells = np.concatenate([cells, np.repeat(rp[:, None, :], cells.shape[1], axis=1)], axis=2)
            data = Split(samples, cells)
            train, val = data.select(keep), data.select(~keep)
            folds[clip] = fold_by_epoch(train, val, vocab, s, args.seeds, CV_EPOCHS)
            log.info(
                "head %s fold %s: %s; head map F1 %s",
                head_kind,
                clip,
                {e: round(r["val_fact_f1"], 3) for e, r in folds[clip].items()},
                head_f1.get(clip),
            )
            if args.road:
                log.info("road head curve F1 on %s: %.3f", clip, road_head_f1[clip])
        report["runs"][head_kind] = {
            "channels": int(cells.shape[-1]),
            "samples": len(samples),
            "folds": folds,
            "head_map_f1_left_out": head_f1,
            "road_head_curve_f1_left_out": road_head_f1,
            **best_epoch_summary(folds, CV_EPOCHS),
            "seconds": round(time.perf_counter() - t1, 1),
        }
        log.info(
            "head %s: %s",
            head_kind,
            {k: v for k, v in report["runs"][head_kind].items() if k.startswith("best")},
        )
        if args.json:
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
