"""The training loop: teacher-forced cross-entropy with label smoothing, AdamW, early stopping on a held-out
training clip (validation is by whole clip, never by random frames: neighbouring frames are near copies)."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from drivecap.decoder.lstm import Arch
from drivecap.decoder.vocab import Vocab
from drivecap.training.data import Split
from drivecap.training.model import CaptionModel

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    kind: str = "merge"  # merge | attention
    rows: int = 1
    cols: int = 3
    embed_dim: int = 32
    hidden_dim: int = 96
    image_dim: int = 96
    attention_dim: int = 48
    dropout: float = 0.4
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    lr: float = 2e-3
    batch_size: int = 64
    max_epochs: int = 30
    patience: int = 5
    max_words: int = 16  # caption tokens kept (12 words + commas)
    seed: int = 0
    threads: int = 1
    #: per-token loss weights: (token frequency / median frequency) ** -power, clipped to [1, max]; 0 = off
    token_weight_power: float = 0.0
    token_weight_max: float = 4.0
    #: weight of an auxiliary per-fact loss on the image vector (training only; 0 = off)
    aux_weight: float = 0.0
    #: the street film's training views repeated this many times in all (oversampling the only footage with
    #: people and cyclists ahead, issue 11 item 2; 1 = off)
    street_repeat: int = 1
    #: how each cell pools its part of the conv5 map (``drivecap.decoder.bundle.POOL_MODES``)
    pool: str = "avg"

    def arch(self, vocab_size: int, feature_dim: int = 512) -> Arch:
        return Arch(
            self.kind,
            feature_dim,
            self.rows * self.cols,
            self.embed_dim,
            self.hidden_dim,
            self.image_dim,
            self.attention_dim,
            vocab_size,
        )


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def encode_captions(vocab: Vocab, captions: list[str], max_words: int) -> torch.Tensor:
    seqs = [vocab.encode(c, max_words) for c in captions]
    t = max(len(s) for s in seqs)
    out = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s)
    return out


def feature_stats(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over all training cells; the std is floored so that dead channels stay 0."""
    flat = cells.reshape(-1, cells.shape[-1])
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    floor = max(float(np.median(std)) * 0.1, 1e-3)
    return mean.astype(np.float32), np.maximum(std, floor).astype(np.float32)


def decode_split(
    model: CaptionModel, cells: np.ndarray, vocab: Vocab, max_tokens: int, batch: int = 256
) -> list[str]:
    model.eval()
    out: list[str] = []
    for i in range(0, len(cells), batch):
        seqs, _ = model.greedy(
            torch.from_numpy(cells[i : i + batch]), max_tokens, vocab.start_id, vocab.end_id
        )
        out += [" ".join(vocab.decode(s)) for s in seqs]
    return out


def token_weights(vocab: Vocab, ids: torch.Tensor, power: float, cap: float) -> torch.Tensor | None:
    """Cross-entropy class weights that lift rare target tokens (e.g. the road's shape, said last and in
    fewer captions than "on the", "car"): ``(freq / median freq) ** -power`` clipped to ``[1, cap]``.

    Tokens never seen in the targets keep weight 1; ``power`` 0 means no weighting (returns None)."""
    if power <= 0:
        return None
    counts = torch.bincount(ids[:, 1:].reshape(-1), minlength=len(vocab)).double()
    counts[vocab.pad_id] = 0
    seen = counts > 0
    med = counts[seen].median()
    w = torch.ones(len(vocab), dtype=torch.float64)
    w[seen] = (counts[seen] / med).pow(-power).clamp(1.0, cap)
    return w.float()


def fact_targets(captions: list[str]) -> torch.Tensor:
    """(N, len(ALL_KEYS)) 0/1 targets: the facts each caption says (what evaluation scores)."""
    from drivecap.captions.facts import ALL_KEYS
    from drivecap.captions.grammar import parse

    col = {k: i for i, k in enumerate(ALL_KEYS)}
    y = torch.zeros((len(captions), len(ALL_KEYS)))
    for r, c in enumerate(captions):
        for k in parse(c).keys:
            if k in col:
                y[r, col[k]] = 1.0
    return y


def train_fixed(
    train: Split,
    vocab: Vocab,
    s: TrainSettings,
    epochs: int,
    on_epoch: Callable[[int, CaptionModel], None] | None = None,
) -> CaptionModel:
    """Trains for ``epochs`` epochs of a cosine schedule spanning ``s.max_epochs``, without looking at any
    validation data; ``on_epoch(epoch, model)`` (model in eval mode) is called after each epoch.

    Cross-validation calls it with ``epochs = s.max_epochs`` and scores every epoch; the final model is the same
    run stopped at the chosen epoch count (same seed, same schedule), so the two see identical updates."""
    torch.manual_seed(s.seed)
    torch.set_num_threads(s.threads)
    rng = np.random.default_rng(s.seed)
    if s.street_repeat != 1:
        train = train.repeat_clip("street", s.street_repeat)
    keys = fact_targets([x.caption for x in train.samples]) if s.aux_weight > 0 else None
    model = CaptionModel(
        s.arch(len(vocab), train.cells.shape[-1]),
        dropout=s.dropout,
        aux_outputs=0 if keys is None else keys.shape[1],
    )
    mean, std = feature_stats(train.cells)
    model.feat_mean.copy_(torch.from_numpy(mean))
    model.feat_std.copy_(torch.from_numpy(std))
    ids = encode_captions(vocab, [x.caption for x in train.samples], s.max_words)
    x_all = torch.from_numpy(train.cells)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.max_epochs, eta_min=s.lr * 0.05)
    aux_loss = nn.BCEWithLogitsLoss()
    weight = token_weights(vocab, ids, s.token_weight_power, s.token_weight_max)
    loss_fn = nn.CrossEntropyLoss(weight=weight, ignore_index=vocab.pad_id, label_smoothing=s.label_smoothing)
    for epoch in range(min(epochs, s.max_epochs)):
        model.train()
        order = rng.permutation(len(train))
        for i in range(0, len(order), s.batch_size):
            b = torch.from_numpy(order[i : i + s.batch_size])
            seq = ids[b]
            t = int((seq != vocab.pad_id).sum(dim=1).max())
            seq = seq[:, :t]
            logits, aux = model.forward_aux(x_all[b], seq[:, :-1])
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1))
            if aux is not None and keys is not None:
                loss = loss + s.aux_weight * aux_loss(aux, keys[b])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
        sched.step()
        model.eval()
        if on_epoch is not None:
            on_epoch(epoch, model)
    model.eval()
    return model


Scorer = Callable[[list[str], Split], dict[str, float]]


def fit(
    train: Split,
    val: Split,
    vocab: Vocab,
    s: TrainSettings,
    scorer: Scorer,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> tuple[CaptionModel, History]:
    """Trains; keeps the weights of the epoch with the best validation ``score`` (from ``scorer``)."""
    torch.manual_seed(s.seed)
    torch.set_num_threads(s.threads)
    rng = np.random.default_rng(s.seed)
    model = CaptionModel(s.arch(len(vocab), train.cells.shape[-1]), dropout=s.dropout)
    mean, std = feature_stats(train.cells)
    model.feat_mean.copy_(torch.from_numpy(mean))
    model.feat_std.copy_(torch.from_numpy(std))
    ids = encode_captions(vocab, [x.caption for x in train.samples], s.max_words)
    x_all = torch.from_numpy(train.cells)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.max_epochs, eta_min=s.lr * 0.05)
    loss_fn = nn.CrossEntropyLoss(ignore_index=vocab.pad_id, label_smoothing=s.label_smoothing)
    hist = History()
    best_state: dict[str, torch.Tensor] | None = None
    bad = 0
    t0 = time.perf_counter()
    for epoch in range(s.max_epochs):
        model.train()
        order = rng.permutation(len(train))
        total, count = 0.0, 0
        for i in range(0, len(order), s.batch_size):
            b = torch.from_numpy(order[i : i + s.batch_size])
            seq = ids[b]
            # Only as many steps as the longest caption in the batch needs.
            t = int((seq != vocab.pad_id).sum(dim=1).max())
            seq = seq[:, :t]
            logits = model(x_all[b], seq[:, :-1])
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            total += float(loss.detach()) * len(b)
            count += len(b)
        sched.step()
        row: dict[str, float] = {"epoch": epoch, "train_loss": total / max(count, 1)}
        preds = decode_split(model, val.cells, vocab, s.max_words + 1)
        row.update(scorer(preds, val))
        row["seconds"] = time.perf_counter() - t0
        hist.epochs.append(row)
        if progress is not None:
            progress(row)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
        if row["score"] > hist.best_score + 1e-4:
            hist.best_score = row["score"]
            hist.best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
            bad = 0
        else:
            bad += 1
            if bad >= s.patience:
                break
    hist.seconds = time.perf_counter() - t0
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, hist
