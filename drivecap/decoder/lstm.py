"""The LSTM caption decoder in numpy: merge or soft-attention model, greedy and beam search. No torch.

Two architectures share one set of conventions (the torch twin is ``drivecap.training.model``):

- ``merge``: the grid-pooled conv5 cells are flattened and projected once to an image vector ``v``; ``v`` sets
  the LSTM's initial state and is fed beside each word embedding and beside the LSTM output into the softmax.
- ``attention``: each grid cell is projected (plus a learned position embedding, since a shared projection alone
  cannot tell left from right); at each step a soft attention over the cells, driven by the previous hidden
  state, gives the context vector that plays the role of ``v``.

LSTM gates follow torch's ``LSTMCell`` order (input, forget, cell, output) so exported weights load unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
PAD_ID, UNK_ID = 0, 3  # fixed by drivecap.decoder.vocab

#: Arrays each architecture needs in decoder.npz, with their shapes as functions of the sizes.
COMMON_KEYS = (
    "feat_mean",
    "feat_std",
    "W_h0",
    "b_h0",
    "W_c0",
    "b_c0",
    "embed",
    "W_ih",
    "W_hh",
    "b_lstm",
    "W_out",
    "b_out",
)
MERGE_KEYS = ("W_img", "b_img")
ATTENTION_KEYS = ("W_feat", "b_feat", "pos", "W_att_f", "W_att_h", "b_att", "v_att")


@dataclass(frozen=True)
class Arch:
    """Sizes of a decoder. ``cells`` is the number of grid cells it reads (rows * cols)."""

    kind: str  # "merge" | "attention"
    feature_dim: int
    cells: int
    embed_dim: int
    hidden_dim: int
    image_dim: int
    attention_dim: int
    vocab_size: int

    def shapes(self) -> dict[str, tuple[int, ...]]:
        d, n, w, h, e, a, v = (
            self.feature_dim,
            self.cells,
            self.embed_dim,
            self.hidden_dim,
            self.image_dim,
            self.attention_dim,
            self.vocab_size,
        )
        out: dict[str, tuple[int, ...]] = {
            "feat_mean": (d,),
            "feat_std": (d,),
            "W_h0": (h, e),
            "b_h0": (h,),
            "W_c0": (h, e),
            "b_c0": (h,),
            "embed": (v, w),
            "W_ih": (4 * h, w + e),
            "W_hh": (4 * h, h),
            "b_lstm": (4 * h,),
            "W_out": (v, h + e),
            "b_out": (v,),
        }
        if self.kind == "merge":
            out.update({"W_img": (e, n * d), "b_img": (e,)})
        else:
            out.update(
                {
                    "W_feat": (e, d),
                    "b_feat": (e,),
                    "pos": (n, e),
                    "W_att_f": (a, e),
                    "W_att_h": (a, h),
                    "b_att": (a,),
                    "v_att": (a,),
                }
            )
        return out


def _sigmoid(x: FloatArray) -> FloatArray:
    # tanh form: no overflow warnings for large negative inputs, unlike 1 / (1 + exp(-x)).
    return np.float32(0.5) * (np.tanh(np.float32(0.5) * x) + np.float32(1.0))


def log_softmax(x: FloatArray) -> FloatArray:
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@dataclass
class Hypothesis:
    ids: list[int]  # generated ids, without <start>, with <end> when finished
    logprob: float
    finished: bool


class LSTMDecoder:
    """Inference for one exported decoder. ``cells`` input: (n_cells, feature_dim) float32."""

    def __init__(
        self,
        arch: Arch,
        params: dict[str, FloatArray],
        start_id: int = 1,
        end_id: int = 2,
        length_alpha: float = 0.0,
        mirror_ids: npt.NDArray[np.int64] | None = None,
        members: list[dict[str, FloatArray]] | None = None,
    ) -> None:
        self.arch = arch
        # Further decoders of the same architecture and vocabulary (an ensemble): at every step the word
        # log-probabilities of all of them (each with its own flipped stream, if any) are averaged.
        self.members = [
            LSTMDecoder(arch, m, start_id, end_id, length_alpha, mirror_ids) for m in (members or [])
        ]
        # Fresh copies (arrays read from an .npz may be unaligned, which made a BLAS call 30x slower here) and
        # every matrix also stored transposed and contiguous, the layout ``x @ W.T`` wants.
        self.p = {k: np.array(v, dtype=np.float32, copy=True) for k, v in params.items()}
        self.t = {k: np.ascontiguousarray(v.T) for k, v in self.p.items() if v.ndim == 2}
        self.start_id = start_id
        self.end_id = end_id
        self.length_alpha = length_alpha
        # Token id -> id of its mirror word (left <-> right), for the flip ensemble; identity by default.
        self.mirror_ids = (
            np.arange(arch.vocab_size) if mirror_ids is None else np.asarray(mirror_ids)
        ).astype(np.int64)
        # Fold the input gates' word part into a per-word table: one lookup instead of a matmul per step.
        w = arch.embed_dim
        self._word_gates = self.p["embed"] @ self.p["W_ih"][:, :w].T  # (V, 4H)
        self._W_ih_img_t = np.ascontiguousarray(self.p["W_ih"][:, w:].T)
        # <pad>, <start> and <unk> are never generated: masked out of every choice (not of the softmax).
        self._banned = [i for i in (PAD_ID, start_id, UNK_ID) if i != end_id and i < arch.vocab_size]

    # ------------------------------------------------------------------------------------------- model

    def encode_image(self, cells: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Cells -> (image memory, h0, c0). Memory is (1, E) for merge and (n_cells, E) for attention."""
        p = self.p
        x = (cells.astype(np.float32) - p["feat_mean"]) / p["feat_std"]
        if self.arch.kind == "merge":
            v = np.maximum(p["W_img"] @ x.reshape(-1) + p["b_img"], 0.0)[None]
            pooled = v[0]
        else:
            # One matrix-vector product per cell rather than one (cells x 512) @ (512 x E) product: OpenBLAS
            # runs the latter multi-threaded, and on a busy machine waiting for a second core cost 25-50 ms
            # per caption against well under 1 ms this way (measured on 2 shared cores).
            proj = np.stack([p["W_feat"] @ row for row in x])
            v = np.maximum(proj + p["b_feat"], 0.0) + p["pos"]
            pooled = v.mean(axis=0)
        h0 = np.tanh(p["W_h0"] @ pooled + p["b_h0"])
        c0 = np.tanh(p["W_c0"] @ pooled + p["b_c0"])
        return v.astype(np.float32), h0.astype(np.float32), c0.astype(np.float32)

    def attention_keys(self, memory: FloatArray) -> FloatArray | None:
        """(L, A) attention keys of the cells: fixed for a caption, so computed once, not per step."""
        if self.arch.kind == "merge":
            return None
        return np.stack([self.p["W_att_f"] @ row for row in memory]).astype(np.float32)  # see encode_image

    def context(self, memory: FloatArray, h: FloatArray, keys: FloatArray | None = None) -> FloatArray:
        """(B, E) image vector each hypothesis sees this step."""
        if self.arch.kind == "merge":
            return np.broadcast_to(memory[0], (h.shape[0], memory.shape[1]))
        p = self.p
        if keys is None:
            keys = self.attention_keys(memory)
            assert keys is not None
        # Element-wise products and sums instead of matmuls: these are tiny, and a threaded BLAS call on a
        # busy machine costs far more in wake-ups than the arithmetic (measured 34 ms vs 3 ms a caption).
        e = (np.tanh(keys[None] + (h @ self.t["W_att_h"])[:, None] + p["b_att"]) * p["v_att"]).sum(
            axis=2
        )  # (B, L)
        e = e - e.max(axis=1, keepdims=True)
        a = np.exp(e)
        a /= a.sum(axis=1, keepdims=True)
        return (a[:, :, None] * memory[None]).sum(axis=1).astype(np.float32)

    def step(
        self,
        memory: FloatArray,
        tokens: npt.NDArray[np.int64],
        h: FloatArray,
        c: FloatArray,
        keys: FloatArray | None = None,
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """One step for B hypotheses: (log-probs (B, V), h', c')."""
        p = self.p
        ctx = self.context(memory, h, keys)
        gates = self._word_gates[tokens] + ctx @ self._W_ih_img_t + h @ self.t["W_hh"] + p["b_lstm"]
        hd = self.arch.hidden_dim
        i = _sigmoid(gates[:, :hd])
        f = _sigmoid(gates[:, hd : 2 * hd])
        g = np.tanh(gates[:, 2 * hd : 3 * hd])
        o = _sigmoid(gates[:, 3 * hd :])
        c2 = f * c + i * g
        h2 = o * np.tanh(c2)
        logits = np.concatenate([h2, ctx], axis=1) @ self.t["W_out"] + p["b_out"]
        return log_softmax(logits.astype(np.float32)), h2.astype(np.float32), c2.astype(np.float32)

    def sequence_logprobs(self, cells: FloatArray, ids: list[int]) -> FloatArray:
        """Teacher-forced log-prob of each id of ``ids`` (no <start>); used to check against torch."""
        memory, h, c = self.encode_image(cells)
        h, c = h[None], c[None]
        keys = self.attention_keys(memory)
        prev = self.start_id
        out = []
        for t in ids:
            lp, h, c = self.step(memory, np.array([prev]), h, c, keys)
            out.append(lp[0, t])
            prev = t
        return np.array(out, dtype=np.float32)

    # ---------------------------------------------------------------------------------------- decoding

    def _choosable(self, lp: FloatArray) -> FloatArray:
        out = lp.copy()
        out[:, self._banned] = -np.inf
        return out

    def _start(self, cells: FloatArray, flipped: FloatArray | None) -> _State:
        mem, h, c = self.encode_image(cells)
        st = _State(mem, h[None], c[None], self.attention_keys(mem))
        if flipped is not None:
            st.mem_f, hf, cf = self.encode_image(flipped)
            st.h_f, st.c_f = hf[None], cf[None]
            st.keys_f = self.attention_keys(st.mem_f)
        st.others = [m._start(cells, flipped) for m in self.members]
        return st

    def _advance(self, st: _State, tokens: npt.NDArray[np.int64]) -> tuple[FloatArray, _State]:
        """Log-probs of the next token for each hypothesis, and the state after feeding ``tokens``.

        With a flipped stream (flip ensemble) the log-probs are the mean of this stream's and the mirrored
        stream's, read with left and right swapped: the mirrored frame then gets exactly the mirrored caption
        whenever its map is the flip of this one."""
        lp, h, c = self.step(st.mem, tokens, st.h, st.c, st.keys)
        new = _State(st.mem, h, c, st.keys)
        if st.mem_f is not None and st.h_f is not None and st.c_f is not None:
            perm = self.mirror_ids
            lpf, new.h_f, new.c_f = self.step(st.mem_f, perm[tokens], st.h_f, st.c_f, st.keys_f)
            new.mem_f, new.keys_f = st.mem_f, st.keys_f
            lp = (np.float32(0.5) * (lp + lpf[:, perm])).astype(np.float32)
        if not self.members:
            return lp, new
        total = lp.astype(np.float64)
        for m, sub in zip(self.members, st.others, strict=True):
            lpm, subnew = m._advance(sub, tokens)
            total += lpm
            new.others.append(subnew)
        return (total / (1 + len(self.members))).astype(np.float32), new

    def greedy(self, cells: FloatArray, max_tokens: int, flipped: FloatArray | None = None) -> Hypothesis:
        st = self._start(cells, flipped)
        prev = self.start_id
        ids: list[int] = []
        total = 0.0
        for _ in range(max_tokens):
            lp, st = self._advance(st, np.array([prev]))
            prev = int(self._choosable(lp)[0].argmax())
            total += float(lp[0, prev])
            ids.append(prev)
            if prev == self.end_id:
                return Hypothesis(ids, total, True)
        return Hypothesis(ids, total, False)

    def normalised(self, hyp: Hypothesis) -> float:
        """Beam ranking score: log-prob / length**alpha (alpha 0 = plain log-prob)."""
        if self.length_alpha == 0.0:
            return hyp.logprob
        return hyp.logprob / math.pow(max(len(hyp.ids), 1), self.length_alpha)

    def beam(
        self, cells: FloatArray, width: int, max_tokens: int, flipped: FloatArray | None = None
    ) -> Hypothesis:
        """Beam search; width 1 is exactly greedy. Returns the best finished hypothesis (or best unfinished)."""
        if width <= 1:
            return self.greedy(cells, max_tokens, flipped)
        st = self._start(cells, flipped)
        alive = [Hypothesis([], 0.0, False)]
        finished: list[Hypothesis] = []
        vocab = self.arch.vocab_size
        for _ in range(max_tokens):
            prev = np.array([hyp.ids[-1] if hyp.ids else self.start_id for hyp in alive])
            lp, st2 = self._advance(st, prev)
            scores = np.array([hyp.logprob for hyp in alive], dtype=np.float64)[:, None] + self._choosable(lp)
            flat = scores.ravel()
            # 2 * width candidates: enough to refill the beam even if up to ``width`` of them end here.
            k = min(2 * width, flat.size)
            top = np.argpartition(-flat, k - 1)[:k]
            top = top[np.lexsort((top, -flat[top]))]  # by score, ties by index: deterministic
            new_alive: list[Hypothesis] = []
            rows: list[int] = []
            for idx in top:
                b, tok = divmod(int(idx), vocab)
                if not np.isfinite(flat[idx]):
                    continue
                hyp = Hypothesis([*alive[b].ids, tok], float(flat[idx]), tok == self.end_id)
                if hyp.finished:
                    finished.append(hyp)
                elif len(new_alive) < width:
                    new_alive.append(hyp)
                    rows.append(b)
            if len(finished) >= width or not new_alive:
                break
            best_done = max((self.normalised(f) for f in finished), default=-math.inf)
            if self.length_alpha == 0.0 and best_done >= max(hyp.logprob for hyp in new_alive):
                break  # log-probs only fall: no live hypothesis can beat the best finished one
            alive = new_alive
            st = st2.select(rows)
        pool = finished or alive
        return max(pool, key=self.normalised)


@dataclass
class _State:
    """Decoder state of B hypotheses; the ``_f`` fields are the mirrored stream of a flip ensemble."""

    mem: FloatArray
    h: FloatArray
    c: FloatArray
    keys: FloatArray | None = None
    mem_f: FloatArray | None = None
    h_f: FloatArray | None = None
    c_f: FloatArray | None = None
    keys_f: FloatArray | None = None
    #: states of the ensemble's further members, in member order
    others: list[_State] = field(default_factory=list)

    def select(self, rows: list[int]) -> _State:
        return _State(
            self.mem,
            self.h[rows],
            self.c[rows],
            self.keys,
            self.mem_f,
            None if self.h_f is None else self.h_f[rows],
            None if self.c_f is None else self.c_f[rows],
            self.keys_f,
            [o.select(rows) for o in self.others],
        )
