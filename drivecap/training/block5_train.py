"""Joint training of a low-rank ``block5_conv3`` delta and the merge decoder, scored by leave-one-clip-out.

See :mod:`drivecap.training.block5` for what is cached and why only the last layer is trained. Each fold trains
the delta and the decoder on four training clips from the cached (x, z) maps and captions the fifth with the
runtime (numpy) decoder on ``pool5(relu(z + delta(x)))`` pooled as the runtime pools (mirror view on), after
each checked epoch. Rank 0 is the control: the same code and maps with no delta (the decoder alone).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from drivecap.config import Config
from drivecap.decoder.vocab import Vocab
from drivecap.encoders.base import cosine, grid_bounds
from drivecap.training.block5 import Block5Maps, maps_for_samples
from drivecap.training.crossval import decode_members, fold_scores, split_by_clip
from drivecap.training.data import Sample, Split, load_split
from drivecap.training.model import CaptionModel
from drivecap.training.train import TrainSettings, encode_captions, fact_targets, feature_stats

log = logging.getLogger(__name__)


@dataclass
class DeltaSettings:
    rank: int = 16
    delta_lr: float = 1e-3
    delta_weight_decay: float = 0.0
    aux_weight: float = 0.0
    #: loss weight of the street film's views against the highway clips' (1 = all views alike)
    street_weight: float = 1.0


class Block5Delta(nn.Module):
    """``cells(pool5(relu(z + up(down(x)) + bias)))``; ``up`` starts at 0 (the ImageNet features)."""

    def __init__(self, channels: int, rank: int, grid: tuple[int, int], rows: int, cols: int) -> None:
        super().__init__()
        self.rank = rank
        self.down = nn.Conv2d(channels, rank, 3, padding=1, bias=False) if rank else None
        self.up = nn.Conv2d(rank, channels, 1, bias=True) if rank else None
        if self.up is not None:
            nn.init.zeros_(self.up.weight)
            assert self.up.bias is not None
            nn.init.zeros_(self.up.bias)
        self.rb = grid_bounds(grid[0], rows)
        self.cb = grid_bounds(grid[1], cols)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        pre = z if self.down is None or self.up is None else z + self.up(self.down(x))
        f = torch.nn.functional.max_pool2d(torch.relu(pre), 2)
        cells = [f[:, :, r0:r1, c0:c1].mean(dim=(2, 3)) for r0, r1 in self.rb for c0, c1 in self.cb]
        return torch.stack(cells, dim=1)  # (B, cells, C)

    def arrays(self) -> dict[str, npt.NDArray[np.float32]]:
        """down (rank, C, 3, 3), up (C, rank), bias (C,): what :mod:`drivecap.encoders.delta` ships."""
        if self.down is None or self.up is None or self.up.bias is None:
            return {}
        return {
            "down": self.down.weight.detach().numpy().astype(np.float32),
            "up": self.up.weight.detach().numpy()[:, :, 0, 0].astype(np.float32),
            "bias": self.up.bias.detach().numpy().astype(np.float32),
        }


def _batch(maps: Block5Maps, idx: npt.NDArray[np.int64]) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(maps.x[idx].astype(np.float32)),
        torch.from_numpy(maps.z[idx].astype(np.float32)),
    )


@torch.no_grad()
def delta_cells(delta: Block5Delta, maps: Block5Maps, batch: int = 128) -> npt.NDArray[np.float32]:
    delta.eval()
    out = []
    for i in range(0, len(maps.x), batch):
        idx = np.arange(i, min(i + batch, len(maps.x)))
        out.append(delta(*_batch(maps, idx)).numpy())
    return np.concatenate(out).astype(np.float32)


def weighted_caption_loss(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, pad_id: int, smoothing: float
) -> torch.Tensor:
    """Token cross-entropy (label smoothing, pads ignored) with each view's tokens weighted by ``weights``
    (B,), divided by the number of real tokens: with all weights 1 it is the usual mean over tokens."""
    tok = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=pad_id,
        label_smoothing=smoothing,
        reduction="none",
    ).reshape(target.shape)
    real = (target != pad_id).float()
    return (tok * real * weights[:, None]).sum() / real.sum()


def train_delta_fixed(
    train: Split,
    maps: Block5Maps,
    vocab: Vocab,
    s: TrainSettings,
    ds: DeltaSettings,
    epochs: int,
    on_epoch: Callable[[int, CaptionModel, Block5Delta], None] | None = None,
) -> tuple[CaptionModel, Block5Delta]:
    """:func:`drivecap.training.train.train_fixed` with the delta in front of the decoder, trained jointly."""
    torch.manual_seed(s.seed)
    torch.set_num_threads(s.threads)
    rng = np.random.default_rng(s.seed)
    grid = (maps.x.shape[2] // 2, maps.x.shape[3] // 2)
    delta = Block5Delta(maps.x.shape[1], ds.rank, grid, s.rows, s.cols)
    keys = fact_targets([x.caption for x in train.samples]) if ds.aux_weight > 0 else None
    model = CaptionModel(
        s.arch(len(vocab), maps.x.shape[1]),
        dropout=s.dropout,
        aux_outputs=0 if keys is None else keys.shape[1],
    )
    mean, std = feature_stats(delta_cells(delta, maps))
    model.feat_mean.copy_(torch.from_numpy(mean))
    model.feat_std.copy_(torch.from_numpy(std))
    ids = encode_captions(vocab, [x.caption for x in train.samples], s.max_words)
    groups: list[dict[str, Any]] = [
        {"params": list(model.parameters()), "lr": s.lr, "weight_decay": s.weight_decay}
    ]
    if ds.rank:
        groups.append(
            {"params": list(delta.parameters()), "lr": ds.delta_lr, "weight_decay": ds.delta_weight_decay}
        )
    opt = torch.optim.AdamW(groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.max_epochs, eta_min=s.lr * 0.05)
    aux_loss = nn.BCEWithLogitsLoss()
    # Per-view weights (the street film, the only footage with people and cyclists ahead, can be weighted up),
    # normalised so that the mean weight is 1 and the learning rate means the same whatever the weighting.
    vw = np.array([ds.street_weight if x.clip == "street" else 1.0 for x in train.samples], np.float32)
    view_w = torch.from_numpy(vw / vw.mean())
    params = [p for g in groups for p in g["params"]]
    for epoch in range(min(epochs, s.max_epochs)):
        model.train()
        delta.train()
        order = rng.permutation(len(train))
        for i in range(0, len(order), s.batch_size):
            b = order[i : i + s.batch_size]
            seq = ids[torch.from_numpy(b)]
            t = int((seq != vocab.pad_id).sum(dim=1).max())
            seq = seq[:, :t]
            logits, aux = model.forward_aux(delta(*_batch(maps, b)), seq[:, :-1])
            loss = weighted_caption_loss(
                logits, seq[:, 1:], view_w[torch.from_numpy(b)], vocab.pad_id, s.label_smoothing
            )
            if aux is not None and keys is not None:
                loss = loss + ds.aux_weight * aux_loss(aux, keys[torch.from_numpy(b)])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
        sched.step()
        model.eval()
        delta.eval()
        if on_epoch is not None:
            on_epoch(epoch, model, delta)
    return model, delta


def _subset(maps: Block5Maps, mask: npt.NDArray[np.bool_]) -> Block5Maps:
    return Block5Maps(maps.x[mask], maps.z[mask])


def _scorer(
    res: dict[int, dict[str, float]],
    checks: Sequence[int],
    val: Split,
    vmaps: Block5Maps,
    s: TrainSettings,
    vocab: Vocab,
) -> Callable[[int, CaptionModel, Block5Delta], None]:
    """Scores the left-out clip after each checked epoch (1-based) into ``res``."""

    def score(epoch: int, model: CaptionModel, delta: Block5Delta) -> None:
        if epoch + 1 in checks:
            vs = Split(val.samples, delta_cells(delta, vmaps))
            res[epoch + 1] = fold_scores(decode_members([model.export()], s, vocab, vs), vs)

    return score


def loco_delta(
    home: Path,
    cfg: Config,
    folder: Path,
    encoder_sha256: str,
    ranks: Sequence[int],
    ds: DeltaSettings,
    epochs: int = 12,
    threads: int = 2,
    checks: Sequence[int] = (1, 2, 3, 4, 6, 8, 10, 12),
    augmented: tuple[list[Sample], Block5Maps] | None = None,
) -> dict[str, Any]:
    """Leave-one-clip-out over the training clips for each rank; one seed (0), merge decoder on 2x3 cells.

    ``augmented`` views (image-space augmentation, :func:`drivecap.training.block5.load_augmented_views`) join
    the training part of each fold: only those of the fold's training clips, never of the left-out clip."""
    from drivecap.training.features import features_dir
    from drivecap.training.pipeline import caption_vocab, train_ranges, training_clips

    h, w = cfg.encoder.input_height, cfg.encoder.input_width
    conv5 = features_dir(home, encoder_sha256, h, w)
    data = load_split(home, conv5, training_clips(), 2, 3, train_ranges(), with_flipped=True, stride=4)
    t0 = time.perf_counter()
    maps = maps_for_samples(folder, data.samples)
    log.info("%d views, block-5 maps loaded in %.0f s", len(data), time.perf_counter() - t0)
    vocab = caption_vocab()
    checks = [e for e in checks if e <= epochs]
    s = TrainSettings(kind="merge", rows=2, cols=3, max_epochs=epochs, threads=threads)
    # The rank-0 cells are the encoder's own conv5 cells (same frames, here through OpenVINO): a sanity check.
    grid = (maps.x.shape[2] // 2, maps.x.shape[3] // 2)
    c0 = delta_cells(Block5Delta(maps.x.shape[1], 0, grid, 2, 3), maps)
    cos = np.array([cosine(a, b) for a, b in zip(c0, data.cells, strict=True)])
    out: dict[str, Any] = {
        "views": len(data),
        "settings": asdict(s),
        "delta_settings": asdict(ds),
        "rank0_vs_conv5_cache_cosine_min": round(float(cos.min()), 6),
        "augmented_views": 0 if augmented is None else len(augmented[0]),
        "ranks": {},
    }
    clips = list(split_by_clip(data))
    for rank in ranks:
        dsr = replace(ds, rank=rank)
        folds: dict[str, dict[int, dict[str, float]]] = {}
        t1 = time.perf_counter()
        for clip in clips:
            is_val = np.array([x.clip == clip for x in data.samples])
            train, val = data.select(~is_val), data.select(is_val)
            tmaps, vmaps = _subset(maps, ~is_val), _subset(maps, is_val)
            if augmented is not None:
                keep = np.array([x.clip != clip for x in augmented[0]])
                train = Split(
                    train.samples + [x for x, k in zip(augmented[0], keep, strict=True) if k],
                    np.concatenate(
                        [train.cells, np.zeros((int(keep.sum()), *train.cells.shape[1:]), np.float32)]
                    ),
                )
                am = _subset(augmented[1], keep)
                tmaps = Block5Maps(np.concatenate([tmaps.x, am.x]), np.concatenate([tmaps.z, am.z]))
            res: dict[int, dict[str, float]] = {}
            train_delta_fixed(train, tmaps, vocab, s, dsr, epochs, _scorer(res, checks, val, vmaps, s, vocab))
            folds[clip] = res
            log.info(
                "rank %d fold %s: F1 %s (%.0f s)",
                rank,
                clip,
                {e: round(r["val_fact_f1"], 3) for e, r in res.items()},
                time.perf_counter() - t1,
            )
        mean = {
            e: {
                "all": round(float(np.mean([folds[c][e]["val_fact_f1"] for c in clips])), 4),
                "dashcam": round(
                    float(np.mean([folds[c][e]["val_fact_f1"] for c in clips if c != "street"])), 4
                ),
                "min_dashcam": round(
                    float(min(folds[c][e]["val_fact_f1"] for c in clips if c != "street")), 4
                ),
            }
            for e in checks
        }
        out["ranks"][str(rank)] = {
            "folds": {
                c: {str(e): {k: round(v, 4) for k, v in r.items()} for e, r in f.items()}
                for c, f in folds.items()
            },
            "mean_by_epoch": {str(e): m for e, m in mean.items()},
            "seconds": round(time.perf_counter() - t1, 1),
        }
    return out


__all__ = [
    "Block5Delta",
    "DeltaSettings",
    "delta_cells",
    "loco_delta",
    "train_delta_fixed",
    "weighted_caption_loss",
]
