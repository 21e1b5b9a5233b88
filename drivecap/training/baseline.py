"""The per-fact baseline: one logistic regression per fact key on the same pooled features as the decoder.

It shows what the LSTM costs or gains: the same features, but each fact predicted on its own, and the
caption rendered from the predicted facts by the grammar.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import torch

from drivecap.captions.facts import ALL_KEYS, Facts, mirror_key
from drivecap.captions.grammar import render, simplify
from drivecap.training.train import feature_stats

log = logging.getLogger(__name__)


class FactBaseline:
    """Independent logistic regressions over flattened cells; keys never seen in training are never predicted."""

    def __init__(self, keys: tuple[str, ...] = ALL_KEYS, weight_decay: float = 1e-3) -> None:
        self.keys = keys
        self.weight_decay = weight_decay
        self.mean: npt.NDArray[np.float32] | None = None
        self.std: npt.NDArray[np.float32] | None = None
        self.w: npt.NDArray[np.float32] | None = None
        self.b: npt.NDArray[np.float32] | None = None
        self.active: npt.NDArray[np.bool_] | None = None

    def targets(self, facts: list[Facts]) -> npt.NDArray[np.float32]:
        y = np.zeros((len(facts), len(self.keys)), np.float32)
        col = {k: i for i, k in enumerate(self.keys)}
        for r, f in enumerate(facts):
            for k in simplify(f).keys:
                if k in col:
                    y[r, col[k]] = 1.0
        return y

    def _x(self, cells: npt.NDArray[np.float32]) -> torch.Tensor:
        assert self.mean is not None and self.std is not None
        return torch.from_numpy(((cells - self.mean) / self.std).reshape(len(cells), -1).astype(np.float32))

    def fit(
        self, cells: npt.NDArray[np.float32], facts: list[Facts], epochs: int = 60, seed: int = 0
    ) -> None:
        torch.manual_seed(seed)
        self.mean, self.std = feature_stats(cells)
        x = self._x(cells)
        y = torch.from_numpy(self.targets(facts))
        self.active = (y.sum(dim=0) > 0).numpy()
        lin = torch.nn.Linear(x.shape[1], len(self.keys))
        opt = torch.optim.LBFGS(
            lin.parameters(), lr=0.5, max_iter=epochs, history_size=10, line_search_fn="strong_wolfe"
        )
        loss_fn = torch.nn.BCEWithLogitsLoss()

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = loss_fn(lin(x), y) + self.weight_decay * (lin.weight**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.w = lin.weight.detach().numpy().copy()
        self.b = lin.bias.detach().numpy().copy()

    def logits(self, cells: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        assert self.w is not None and self.b is not None
        return np.asarray(self._x(cells).numpy() @ self.w.T + self.b, np.float32)

    def predict_keys(
        self, cells: npt.NDArray[np.float32], mirror_cells: npt.NDArray[np.float32] | None = None
    ) -> list[frozenset[str]]:
        """Facts per frame; with ``mirror_cells`` (the mirrored frames' cells) each fact's logit is averaged
        with its mirror fact's logit on the mirrored frame (the decoder's mirror view)."""
        assert self.active is not None
        logits = self.logits(cells)
        if mirror_cells is not None:
            col = {k: i for i, k in enumerate(self.keys)}
            perm = np.array([col.get(mirror_key(k), i) for i, k in enumerate(self.keys)])
            logits = np.asarray((logits + self.logits(mirror_cells)[:, perm]) / 2, np.float32)
        on = (logits > 0) & self.active
        out = []
        for row in on:
            keys = {self.keys[i] for i in np.flatnonzero(row)}
            # A close key implies its presence key (the grammar says "car close ahead" for both).
            keys |= {k.rsplit(":", 1)[0] for k in keys if k.endswith(":close")}
            out.append(frozenset(keys))
        return out

    def predict_captions(
        self, cells: npt.NDArray[np.float32], mirror_cells: npt.NDArray[np.float32] | None = None
    ) -> list[str]:
        return [render(Facts.from_keys(k)) for k in self.predict_keys(cells, mirror_cells)]
