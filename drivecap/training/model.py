"""The torch twin of :mod:`drivecap.decoder.lstm`: same architectures, trained here, exported to numpy."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from drivecap.decoder.lstm import Arch, FloatArray


class CaptionModel(nn.Module):
    """Merge or soft-attention LSTM decoder over (B, cells, feature_dim) inputs."""

    feat_mean: torch.Tensor
    feat_std: torch.Tensor

    def __init__(self, arch: Arch, dropout: float = 0.3, aux_outputs: int = 0) -> None:
        super().__init__()
        self.arch = arch
        d, n, w, h, e, a, v = (
            arch.feature_dim,
            arch.cells,
            arch.embed_dim,
            arch.hidden_dim,
            arch.image_dim,
            arch.attention_dim,
            arch.vocab_size,
        )
        self.register_buffer("feat_mean", torch.zeros(d))
        self.register_buffer("feat_std", torch.ones(d))
        if arch.kind == "merge":
            self.img = nn.Linear(n * d, e)
        else:
            self.feat = nn.Linear(d, e)
            self.pos = nn.Parameter(torch.randn(n, e) * 0.02)
            self.att_f = nn.Linear(e, a, bias=False)
            self.att_h = nn.Linear(h, a)
            self.att_v = nn.Linear(a, 1, bias=False)
        self.h0 = nn.Linear(e, h)
        self.c0 = nn.Linear(e, h)
        self.embed = nn.Embedding(v, w)
        self.cell = nn.LSTMCell(w + e, h)
        self.out = nn.Linear(h + e, v)
        self.drop = nn.Dropout(dropout)
        self.feat_drop = nn.Dropout(dropout / 2)
        # Training only (not exported): per-fact logits from the pooled image vector, an auxiliary loss that
        # makes the vector carry every fact, also those said late in the caption (the road's shape).
        self.aux = nn.Linear(e, aux_outputs) if aux_outputs else None

    # ------------------------------------------------------------------------------------------- model

    def encode(self, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (cells - self.feat_mean) / self.feat_std
        x = self.feat_drop(x)
        if self.arch.kind == "merge":
            mem = torch.relu(self.img(x.flatten(1)))[:, None]  # (B, 1, E)
            pooled = mem[:, 0]
        else:
            mem = torch.relu(self.feat(x)) + self.pos  # (B, L, E)
            pooled = mem.mean(dim=1)
        mem = self.drop(mem)
        return mem, torch.tanh(self.h0(pooled)), torch.tanh(self.c0(pooled))

    def context(self, mem: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.arch.kind == "merge":
            return mem[:, 0]
        e = self.att_v(torch.tanh(self.att_f(mem) + self.att_h(h)[:, None])).squeeze(-1)  # (B, L)
        alpha = torch.softmax(e, dim=1)
        return (alpha[:, :, None] * mem).sum(dim=1)

    def step(
        self, mem: torch.Tensor, tok: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx = self.context(mem, h)
        x = torch.cat([self.drop(self.embed(tok)), ctx], dim=1)
        h, c = self.cell(x, (h, c))
        logits = self.out(self.drop(torch.cat([h, ctx], dim=1)))
        return logits, h, c

    def forward(self, cells: torch.Tensor, ids_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (B, cells, D), (B, T) input ids (starting with <start>) -> (B, T, V) logits."""
        return self.forward_aux(cells, ids_in)[0]

    def forward_aux(
        self, cells: torch.Tensor, ids_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward` and the auxiliary per-fact logits (None without an auxiliary head)."""
        mem, h, c = self.encode(cells)
        aux = None if self.aux is None else self.aux(mem.mean(dim=1))
        out = []
        for t in range(ids_in.shape[1]):
            logits, h, c = self.step(mem, ids_in[:, t], h, c)
            out.append(logits)
        return torch.stack(out, dim=1), aux

    @torch.no_grad()
    def greedy(
        self, cells: torch.Tensor, max_tokens: int, start_id: int = 1, end_id: int = 2
    ) -> tuple[list[list[int]], list[float]]:
        """Batched greedy decoding (eval mode assumed); ids include <end> when reached."""
        mem, h, c = self.encode(cells)
        b = cells.shape[0]
        tok = torch.full((b,), start_id, dtype=torch.long)
        done = torch.zeros(b, dtype=torch.bool)
        seqs: list[list[int]] = [[] for _ in range(b)]
        scores = torch.zeros(b, dtype=torch.float64)
        for _ in range(max_tokens):
            logits, h, c = self.step(mem, tok, h, c)
            lp = torch.log_softmax(logits, dim=1)
            choosable = lp.clone()
            choosable[:, [0, start_id, 3]] = -torch.inf  # never <pad>, <start>, <unk> (as the numpy decoder)
            tok = choosable.argmax(dim=1)
            for i in range(b):
                if not done[i]:
                    seqs[i].append(int(tok[i]))
                    scores[i] += float(lp[i, tok[i]])
            done |= tok == end_id
            if bool(done.all()):
                break
        return seqs, scores.tolist()

    # ------------------------------------------------------------------------------------------ export

    def export(self) -> dict[str, FloatArray]:
        """numpy arrays named as :meth:`drivecap.decoder.lstm.Arch.shapes` says."""

        def a(t: torch.Tensor) -> FloatArray:
            return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))

        p: dict[str, FloatArray] = {
            "feat_mean": a(self.feat_mean),
            "feat_std": a(self.feat_std),
            "W_h0": a(self.h0.weight),
            "b_h0": a(self.h0.bias),
            "W_c0": a(self.c0.weight),
            "b_c0": a(self.c0.bias),
            "embed": a(self.embed.weight),
            "W_ih": a(self.cell.weight_ih),
            "W_hh": a(self.cell.weight_hh),
            "b_lstm": a(self.cell.bias_ih + self.cell.bias_hh),
            "W_out": a(self.out.weight),
            "b_out": a(self.out.bias),
        }
        if self.arch.kind == "merge":
            p.update({"W_img": a(self.img.weight), "b_img": a(self.img.bias)})
        else:
            p.update(
                {
                    "W_feat": a(self.feat.weight),
                    "b_feat": a(self.feat.bias),
                    "pos": a(self.pos),
                    "W_att_f": a(self.att_f.weight),
                    "W_att_h": a(self.att_h.weight),
                    "b_att": a(self.att_h.bias),
                    "v_att": a(self.att_v.weight[0]),
                }
            )
        return p
