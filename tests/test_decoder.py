"""The numpy decoder against its torch twin: same tokens, same log-probs, beam search finds the best caption."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from drivecap.decoder.bundle import EncoderRef, Pooling, load_bundle, save_bundle
from drivecap.decoder.captioner import Captioner
from drivecap.decoder.lstm import Arch, LSTMDecoder
from drivecap.decoder.vocab import Vocab, detokenize, tokenize

torch = pytest.importorskip("torch")

from drivecap.training.model import CaptionModel  # noqa: E402 - needs torch

WORDS = ("car", "truck", "ahead", "left", "right", "on", "the", "close", ",", "clear", "road")


def _model(kind: str, vocab_size: int, seed: int, cells: int) -> CaptionModel:
    torch.manual_seed(seed)
    arch = Arch(kind, 32, cells, 8, 16, 12, 10, vocab_size)
    m = CaptionModel(arch, dropout=0.3)
    with torch.no_grad():
        # Spread the weights so that the softmax is peaked and greedy paths differ between inputs.
        for p in m.parameters():
            p.mul_(3.0)
        m.feat_mean.copy_(torch.randn(32))
        m.feat_std.copy_(torch.rand(32) + 0.5)
    return m.eval()


@pytest.mark.parametrize("kind,cells", [("merge", 3), ("merge", 6), ("attention", 49)])
def test_numpy_greedy_matches_torch(kind: str, cells: int) -> None:
    vocab = Vocab.build([], extra=WORDS)
    m = _model(kind, len(vocab), seed=cells, cells=cells)
    dec = LSTMDecoder(m.arch, m.export())
    # Per-input offsets: 49 averaged random cells would otherwise look alike to the attention model.
    x = torch.randn(12, cells, 32) * 2 + torch.randn(12, 1, 32) * 3
    seqs, scores = m.greedy(x, max_tokens=10)
    distinct = set()
    for i in range(12):
        hyp = dec.greedy(x[i].numpy(), max_tokens=10)
        assert hyp.ids == seqs[i]
        assert hyp.logprob == pytest.approx(scores[i], abs=1e-3)
        distinct.add(tuple(hyp.ids))
    assert len(distinct) > 1, "the made-up model should caption different inputs differently"


@pytest.mark.parametrize("kind,cells", [("merge", 3), ("attention", 49)])
def test_teacher_forced_logprobs_match_torch(kind: str, cells: int) -> None:
    vocab = Vocab.build([], extra=WORDS)
    m = _model(kind, len(vocab), seed=7, cells=cells)
    dec = LSTMDecoder(m.arch, m.export())
    ids = vocab.encode("car close ahead , truck on the left")
    x = torch.randn(1, cells, 32)
    with torch.no_grad():
        lp = torch.log_softmax(m(x, torch.tensor([ids[:-1]])), dim=-1)[0]
    want = lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()
    got = dec.sequence_logprobs(x[0].numpy(), ids[1:])
    np.testing.assert_allclose(got, want, atol=1e-4)


def _exhaustive_best(
    m: CaptionModel, x: torch.Tensor, vocab_size: int, max_tokens: int
) -> tuple[list[int], float]:
    """Scores every caption up to max_tokens with the torch model: the true best (plain log-prob)."""
    best: tuple[list[int], float] = ([], -np.inf)
    words = [i for i in range(vocab_size) if i not in (0, 1, 2, 3)]
    with torch.no_grad():
        for n in range(0, max_tokens):
            for body in itertools.product(words, repeat=n):
                seq = [*body, 2]
                lp = torch.log_softmax(m(x[None], torch.tensor([[1, *seq[:-1]]])), dim=-1)[0]
                s = float(lp[torch.arange(len(seq)), torch.tensor(seq)].sum())
                if s > best[1]:
                    best = (seq, s)
    return best


def test_beam_search_finds_the_best_caption_the_torch_model_scores() -> None:
    vocab = Vocab.build([], extra=("car", "left", "right"))  # 7 tokens: small enough to enumerate
    m = _model("merge", len(vocab), seed=3, cells=3)
    with torch.no_grad():
        m.out.bias[2] += 2.0  # make finished captions likely within a few tokens
    dec = LSTMDecoder(m.arch, m.export())
    checked = 0
    for s in range(6):
        x = torch.randn(3, 32, generator=torch.Generator().manual_seed(s))
        want_ids, want_score = _exhaustive_best(m, x, len(vocab), max_tokens=4)
        hyp = dec.beam(x.numpy(), width=64, max_tokens=4)
        if hyp.finished:
            checked += 1
            assert hyp.ids == want_ids
            assert hyp.logprob == pytest.approx(want_score, abs=1e-3)
        greedy = dec.greedy(x.numpy(), max_tokens=4)
        if greedy.finished:
            assert hyp.logprob >= greedy.logprob - 1e-6
    assert checked >= 3


def test_beam_width_one_is_greedy() -> None:
    vocab = Vocab.build([], extra=WORDS)
    m = _model("attention", len(vocab), seed=5, cells=49)
    dec = LSTMDecoder(m.arch, m.export())
    x = np.random.default_rng(0).standard_normal((49, 32)).astype(np.float32)
    assert dec.beam(x, 1, 12).ids == dec.greedy(x, 12).ids


def test_captioner_on_exported_bundle_pools_the_map(tmp_path: Path) -> None:
    vocab = Vocab.build([], extra=WORDS)
    m = _model("merge", len(vocab), seed=11, cells=6)
    save_bundle(tmp_path / "b", m.arch, m.export(), vocab, EncoderRef(), Pooling(2, 3), "# test\n")
    bundle = load_bundle(tmp_path / "b")
    cap = Captioner(bundle, beam_width=1, max_tokens=10)
    fmap = np.random.default_rng(1).standard_normal((32, 7, 7)).astype(np.float32)
    c = cap.caption(fmap)
    # Same caption as the torch model on the same 2x3 pooling of the map (rows 0-3/4-7 split 4+3, cols 2+3+2).
    rb, cb = [0, 4, 7], [0, 2, 5, 7]
    cells = np.stack(
        [fmap[:, rb[r] : rb[r + 1], cb[k] : cb[k + 1]].mean(axis=(1, 2)) for r in range(2) for k in range(3)]
    )
    seqs, _ = m.greedy(torch.from_numpy(cells[None]), 10)
    assert list(c.tokens) == vocab.decode(seqs[0])
    assert c.text == detokenize(c.tokens)
    assert c.decode_ms > 0


def test_vocab_round_trip() -> None:
    v = Vocab.build(["car close ahead , truck on the left", "clear road ahead"])
    ids = v.encode("Car close ahead, truck on the left.")
    assert ids[0] == v.start_id and ids[-1] == v.end_id
    assert v.decode(ids) == tokenize("car close ahead , truck on the left")
    assert v.decode(v.encode("zebra ahead"))[0] == "<unk>"


@pytest.mark.parametrize(
    "kind,pool,width", [("merge", (1, 3), 1), ("merge", (2, 3), 3), ("attention", (7, 7), 2)]
)
def test_flip_ensemble_gives_the_mirrored_frame_the_mirrored_caption(
    tmp_path: Path, kind: str, pool: tuple[int, int], width: int
) -> None:
    from drivecap.captions.grammar import mirror_caption

    vocab = Vocab.build([], extra=WORDS)
    m = _model(kind, len(vocab), seed=13, cells=pool[0] * pool[1])
    with torch.no_grad():  # make sided captions likely, or the test would check little
        m.out.bias[vocab.index["left"]] += 2.0
        m.out.bias[vocab.index["right"]] += 2.0
    save_bundle(
        tmp_path / "b", m.arch, m.export(), vocab, EncoderRef(), Pooling(*pool), "# t\n", flip_ensemble=True
    )
    cap = Captioner(load_bundle(tmp_path / "b"), beam_width=width, max_tokens=8)
    plain = Captioner(load_bundle(tmp_path / "b"), beam_width=width, max_tokens=8)
    plain.flip_ensemble = False
    rng = np.random.default_rng(2)
    sided = inconsistent_plain = 0
    for _ in range(10):
        fmap = (rng.standard_normal((32, 7, 7)) * 2 + rng.standard_normal((32, 1, 7)) * 3).astype(np.float32)
        flipped = np.ascontiguousarray(fmap[:, :, ::-1])
        a, b = cap.caption(fmap).text, cap.caption(flipped).text
        assert mirror_caption(a) == b
        sided += "left" in a or "right" in a
        inconsistent_plain += mirror_caption(plain.caption(fmap).text) != plain.caption(flipped).text
    assert sided >= 3, "the made-up model should say left or right sometimes"
    assert inconsistent_plain >= 1, "without the ensemble this random model is not flip consistent"


@pytest.mark.parametrize("flip", [False, True])
def test_ensemble_averages_the_members_word_logprobs(flip: bool) -> None:
    vocab = Vocab.build([], extra=WORDS)
    ms = [_model("merge", len(vocab), seed=s, cells=3) for s in (11, 12, 13)]
    params = [m.export() for m in ms]
    mirror = np.array(vocab.mirror_ids())
    ens = LSTMDecoder(ms[0].arch, params[0], mirror_ids=mirror, members=params[1:])
    singles = [LSTMDecoder(m.arch, p, mirror_ids=mirror) for m, p in zip(ms, params, strict=True)]
    rng = np.random.default_rng(0)
    differs = 0
    for _ in range(8):
        x = (rng.standard_normal((3, 32)) * 3).astype(np.float32)
        xf = x[::-1].copy() if flip else None
        hyp = ens.greedy(x, max_tokens=10, flipped=xf)
        # Each step's chosen word maximises the mean of the three members' log-probs after the same prefix.
        st = [d._start(x, xf) for d in singles]
        prev, total = ens.start_id, 0.0
        for tok in hyp.ids:
            outs = [d._advance(s, np.array([prev])) for d, s in zip(singles, st, strict=True)]
            mean_lp = np.mean([lp[0] for lp, _ in outs], axis=0)
            assert tok == int(ens._choosable(mean_lp[None])[0].argmax())
            total += float(mean_lp[tok])
            st = [s for _, s in outs]
            prev = tok
        assert hyp.logprob == pytest.approx(total, abs=1e-4)
        differs += hyp.ids != singles[0].greedy(x, 10, xf).ids
    assert differs > 0, "the ensemble should change some captions of its first member"


def test_ensemble_of_copies_is_the_single_decoder() -> None:
    vocab = Vocab.build([], extra=WORDS)
    m = _model("attention", len(vocab), seed=5, cells=49)
    p = m.export()
    one = LSTMDecoder(m.arch, p)
    three = LSTMDecoder(m.arch, p, members=[p, p])
    x = np.random.default_rng(1).standard_normal((49, 32)).astype(np.float32) * 3
    assert three.beam(x, 3, 10).ids == one.beam(x, 3, 10).ids


def test_mirror_view_is_exactly_mirror_consistent_where_the_flipped_map_is_not(tmp_path: Path) -> None:
    """The encoder's map of a mirrored frame is not the flipped map (VGG16 is not mirror-equivariant): here it
    is the flipped map plus noise. With the mirror view (each frame decoded with the other's map) the two
    frames always get mirrored captions; the flip ensemble on the flipped map alone does not."""
    from drivecap.captions.grammar import mirror_caption

    vocab = Vocab.build([], extra=WORDS)
    m = _model("merge", len(vocab), seed=21, cells=6)
    with torch.no_grad():
        m.out.bias[vocab.index["left"]] += 2.0
        m.out.bias[vocab.index["right"]] += 2.0
    save_bundle(
        tmp_path / "b", m.arch, m.export(), vocab, EncoderRef(), Pooling(2, 3), "# t\n", flip_ensemble=True
    )
    cap = Captioner(load_bundle(tmp_path / "b"), beam_width=1, max_tokens=8, mirror_view=True)
    rng = np.random.default_rng(4)
    sided = inconsistent_alone = 0
    for _ in range(20):
        fmap = (rng.standard_normal((32, 7, 7)) * 2 + rng.standard_normal((32, 1, 7)) * 3).astype(np.float32)
        mirror = (
            np.ascontiguousarray(fmap[:, :, ::-1]) + rng.standard_normal((32, 7, 7)).astype(np.float32) * 2
        )
        a = cap.caption(fmap, mirror=mirror).text
        b = cap.caption(mirror, mirror=fmap).text
        assert b == mirror_caption(a)
        sided += "left" in a or "right" in a
        inconsistent_alone += cap.caption(mirror).text != mirror_caption(cap.caption(fmap).text)
    assert sided >= 5, "the made-up model should say left or right often"
    assert inconsistent_alone >= 1, "without the mirror view the noisy mirror map should break consistency"
