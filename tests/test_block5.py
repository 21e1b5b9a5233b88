"""block5_conv3's low-rank delta: cached (x, z) maps reproduce the encoder, the delta is the merged conv, and
joint training moves the features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

pytest.importorskip("torch")

import torch

from drivecap.assets import AssetStore
from drivecap.decoder.captioner import pool_cells
from drivecap.encoders.base import Preprocess, grid_bounds
from drivecap.encoders.export import build_model, save_atomic
from drivecap.encoders.ort_backend import OrtEncoder
from drivecap.errors import AssetError
from drivecap.training.block5 import Block5Maps, SplitEncoder
from drivecap.training.block5_train import Block5Delta, DeltaSettings, delta_cells, train_delta_fixed
from drivecap.training.data import Sample, Split
from drivecap.training.pipeline import caption_vocab
from drivecap.training.train import TrainSettings
from tests.test_openvino import small_weights

HW = (64, 96)


@pytest.fixture
def small_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "engines" / "vgg16_conv5.onnx"
    save_atomic(build_model(small_weights()), path)
    return path


def _frames(store: AssetStore) -> list[npt.NDArray[np.uint8]]:
    import cv2

    imgs = [cv2.imread(str(p)) for p in store.test_images()[:2]]
    assert all(i is not None for i in imgs)
    return [np.asarray(i, dtype=np.uint8) for i in imgs]


def test_grid_bounds_match_the_runtime_pooling() -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=(5, 7, 12)).astype(np.float32)
    ours = np.stack(
        [f[:, a:b, c:d].mean(axis=(1, 2)) for a, b in grid_bounds(7, 2) for c, d in grid_bounds(12, 3)]
    )
    np.testing.assert_allclose(ours, pool_cells(f, 2, 3), rtol=1e-6)


def test_split_maps_give_the_encoders_conv5_cells(
    small_onnx: Path, store: AssetStore, tmp_path: Path
) -> None:
    """pool5(relu(z)) of the cached pre-activation is the encoder's own output (rank 0 = the encoder)."""
    prep = Preprocess("caffe", *HW)
    split = SplitEncoder(small_onnx, prep, 1, tmp_path / "scratch")
    ref = OrtEncoder(small_onnx, threads=1, input_hw=HW)
    for img in _frames(store):
        x, z = split(img)
        assert x.shape == z.shape == (8, HW[0] // 16, HW[1] // 16)
        d = Block5Delta(8, 0, (HW[0] // 32, HW[1] // 32), 2, 3)
        cells = d(torch.from_numpy(x[None].astype(np.float32)), torch.from_numpy(z[None].astype(np.float32)))
        want = pool_cells(ref.encode(img).features, 2, 3)
        np.testing.assert_allclose(cells[0].numpy(), want, rtol=2e-2, atol=2e-2 * float(np.abs(want).max()))
    assert not list((tmp_path / "scratch").glob("*.onnx"))  # the split model is not left behind


def test_delta_equals_the_merged_conv() -> None:
    """z + up(down(x)) + bias is one 3x3 conv with W + up @ down (what ships merged into the ONNX)."""
    torch.manual_seed(0)
    c, r = 6, 2
    x = torch.randn(1, c, 5, 7)
    w, b = torch.randn(c, c, 3, 3), torch.randn(c)
    d = Block5Delta(c, r, (2, 3), 1, 1)
    assert d.up is not None
    torch.nn.init.normal_(d.up.weight)
    assert d.up.bias is not None
    torch.nn.init.normal_(d.up.bias)
    z = torch.nn.functional.conv2d(x, w, b, padding=1)
    a = d.arrays()
    merged_w = torch.from_numpy(w.numpy() + np.einsum("ok,kihw->oihw", a["up"], a["down"]))
    merged = torch.nn.functional.conv2d(x, merged_w, b + torch.from_numpy(a["bias"]), padding=1)
    assert d.down is not None
    np.testing.assert_allclose((z + d.up(d.down(x))).detach().numpy(), merged.numpy(), rtol=1e-4, atol=1e-4)


def test_joint_training_moves_the_features_and_rank0_does_not() -> None:
    rng = np.random.default_rng(0)
    n, c = 24, 8
    caps = ["car close ahead", "person on the left"]
    samples = [Sample("a", i, False, caps[i % 2], {}, "train") for i in range(n)]
    x = rng.random((n, c, 4, 6)).astype(np.float16)
    z = rng.normal(size=(n, c, 4, 6)).astype(np.float16)
    z[1::2, :, :, :3] += 2.0  # the two captions differ in the picture
    maps = Block5Maps(x, z)
    vocab = caption_vocab()
    s = TrainSettings(rows=1, cols=3, batch_size=8, max_epochs=2, embed_dim=8, hidden_dim=16, image_dim=16)
    train = Split(samples, np.zeros((n, 3, c), np.float32))
    before = delta_cells(Block5Delta(c, 0, (2, 3), 1, 3), maps)
    _, d0 = train_delta_fixed(train, maps, vocab, s, DeltaSettings(rank=0), 2)
    _, d4 = train_delta_fixed(train, maps, vocab, s, DeltaSettings(rank=4, delta_lr=1e-2), 2)
    np.testing.assert_array_equal(delta_cells(d0, maps), before)
    assert float(np.abs(delta_cells(d4, maps) - before).max()) > 1e-3
    assert set(d4.arrays()) == {"down", "up", "bias"} and d4.arrays()["up"].shape == (c, 4)


def test_augmented_views_alternate_sides_and_load_with_their_captions(
    small_onnx: Path, store: AssetStore, tmp_path: Path
) -> None:
    """One augmented view per frame, of the frame or of its mirror in turn, captioned as that view."""
    import json

    from drivecap.training.block5 import extract_block5_augmented, load_augmented_views

    frames = [0, 4, 8]
    recs = {}
    for f in frames:
        for m in (False, True):
            cap = "car on the left" if m else "car on the right"
            recs[(f, m)] = {"clip": "challenge02", "frame": f, "mirrored": m, "caption": cap, "facts": {}}
    home = tmp_path / "home"
    (home / "labels").mkdir(parents=True)
    (home / "labels" / "challenge02.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs.values()))
    enc = SplitEncoder(small_onnx, Preprocess("caffe", *HW), 1, tmp_path / "scratch")
    folder = tmp_path / "b5"
    n, _ = extract_block5_augmented(enc, store, folder, "challenge02", recs, frames, 0, {"test": True})
    assert n == 3
    assert extract_block5_augmented(enc, store, folder, "challenge02", recs, frames, 0, {})[0] == 0  # cached
    samples, maps = load_augmented_views(folder, home, ["challenge02"], 0)
    assert [(s.frame, s.mirrored) for s in samples] == [(0, False), (4, True), (8, False)]
    assert [s.caption for s in samples] == ["car on the right", "car on the left", "car on the right"]
    assert all(s.augmented for s in samples)
    assert maps.x.shape == (3, 8, HW[0] // 16, HW[1] // 16)
    # The views are augmented: not the maps of the plain frames.
    from drivecap.training.features import iter_video

    plain = dict(iter_video(store.clip("challenge02"), {0}))[0]
    x0, _ = enc(plain)
    assert not np.array_equal(x0, maps.x[0])


def test_weighted_caption_loss_is_the_token_mean_at_weight_one_and_weights_views() -> None:
    from drivecap.training.block5_train import weighted_caption_loss

    torch.manual_seed(0)
    logits = torch.randn(3, 4, 7)
    target = torch.tensor([[4, 5, 2, 0], [6, 2, 0, 0], [5, 5, 6, 2]])
    plain = torch.nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.1)(
        logits.reshape(-1, 7), target.reshape(-1)
    )
    ones = weighted_caption_loss(logits, target, torch.ones(3), 0, 0.1)
    assert float(ones) == pytest.approx(float(plain), rel=1e-6)
    only_first = weighted_caption_loss(logits, target, torch.tensor([1.0, 0.0, 0.0]), 0, 0.1)
    first = torch.nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.1, reduction="sum")(
        logits[0], target[0]
    )
    assert float(only_first) == pytest.approx(float(first) / 9, rel=1e-6)  # 9 real tokens in the batch


def test_extracted_maps_are_gathered_per_view(small_onnx: Path, store: AssetStore, tmp_path: Path) -> None:
    """extract_block5 caches each frame and its mirror; maps_for_samples picks the right one per view."""
    from drivecap.training.block5 import extract_block5, maps_for_samples
    from drivecap.training.features import iter_video

    enc = SplitEncoder(small_onnx, Preprocess("caffe", *HW), 1, tmp_path / "scratch")
    folder = tmp_path / "b5"
    n, _ = extract_block5(enc, store, folder, "challenge02", [0, 4], {"test": True})
    assert n == 2
    assert extract_block5(enc, store, folder, "challenge02", [0, 4], {})[0] == 0  # already cached
    import cv2

    img = dict(iter_video(store.clip("challenge02"), {4}))[4]
    want_x, want_z = enc(img)
    mirror_x, _ = enc(np.ascontiguousarray(cv2.flip(img, 1)))
    views = [
        Sample("challenge02", 4, False, "", {}, "train"),
        Sample("challenge02", 4, True, "", {}, "train"),
    ]
    maps = maps_for_samples(folder, views)
    np.testing.assert_array_equal(maps.x[0], want_x)
    np.testing.assert_array_equal(maps.z[0], want_z)
    np.testing.assert_array_equal(maps.x[1], mirror_x)
    assert not np.array_equal(maps.x[0], maps.x[1])
    with pytest.raises(AssetError, match="frame 8 of challenge02"):
        maps_for_samples(folder, [Sample("challenge02", 8, False, "", {}, "train")])
