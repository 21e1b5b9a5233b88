"""CPU encoder backends side by side in one run: ONNX Runtime vs OpenVINO, fp32 vs INT8, batch 1 vs 2.

Timing: every variant runs the same preprocessed real frames, interleaved run by run in a rotating order, so
machine noise (the CPU is shared) hits all alike; medians and ratios within the run are what to read.
Caption agreement: the share of held-out frames whose caption (made as the pipeline makes it, with the mirror
view when the bundle uses it) is identical between two variants. Held-out frames are only measured on here.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from drivecap.assets import CLIPS, AssetStore, drivecap_home
from drivecap.config import Config
from drivecap.encoders.base import Encoder, cosine, global_pool
from drivecap.encoders.factory import make_encoder, openvino_available, resolve_backend
from drivecap.errors import DrivecapError

if TYPE_CHECKING:
    from drivecap.decoder.captioner import Captioner

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]

#: (backend, precision) pairs the CPU comparison covers, in table order.
CPU_VARIANTS = (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8"))


def cpu_variants() -> list[tuple[str, str]]:
    """The CPU variants that can run here (OpenVINO only when installed)."""
    has_ov = openvino_available()
    return [v for v in CPU_VARIANTS if v[0] != "openvino" or has_ov]


def label(backend: str, precision: str) -> str:
    return f"{backend}/{precision}"


def read_frames(path: Path, indices: list[int]) -> list[Image]:
    """The frames of ``path`` at ``indices`` (sorted), read in one pass."""
    want = sorted(set(indices))
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DrivecapError(f"{path} cannot be opened as a video")
    out: list[Image] = []
    try:
        i = 0
        for target in want:
            while i <= target:
                ok, img = cap.read()
                if not ok:
                    return out
                if i == target:
                    out.append(np.asarray(img, dtype=np.uint8))
                i += 1
    finally:
        cap.release()
    return out


def held_out_frames(store: AssetStore, n: int) -> list[tuple[str, int, Image]]:
    """``n`` frames spread evenly over every held-out section (whole held-out clips, the street film's tail),
    in proportion to their lengths: (clip, frame index, image)."""
    sections: list[tuple[str, int, int]] = []
    for name, clip in CLIPS.items():
        if clip.held_out_from is None:
            continue
        cap = cv2.VideoCapture(str(store.clip(name)))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        if total > clip.held_out_from:
            sections.append((name, clip.held_out_from, total))
    length = sum(end - start for _, start, end in sections)
    out: list[tuple[str, int, Image]] = []
    for name, start, end in sections:
        k = max(1, round(n * (end - start) / length))
        idx = np.linspace(start, end - 1, k).round().astype(int).tolist()
        out += [
            (name, i, img) for i, img in zip(sorted(idx), read_frames(store.clip(name), idx), strict=False)
        ]
    return out


def _med(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def time_variants(
    encs: dict[str, Encoder], frames: list[Image], runs: int
) -> dict[str, dict[str, list[float]]]:
    """Per variant: batch-1 times, two-single-call times (frame then mirror) and batch-2 times (one call), ms.

    Round ``i`` uses frame ``i mod len``; the order of the variants rotates every round and batch 2 goes before
    the two calls on odd rounds, so neither order nor warm caches favour one of them.
    """
    names = list(encs)
    pre = encs[names[0]].preprocess
    out: dict[str, dict[str, list[float]]] = {n: {"batch1": [], "two_calls": [], "batch2": []} for n in names}
    for enc in encs.values():
        if enc.preprocess != pre:
            raise DrivecapError(f"{enc.describe()} preprocesses frames differently; compare like with like")
        enc.warmup(1)
        enc.infer(
            np.zeros((2, 3, pre.height, pre.width), np.float32)
        )  # the batch-2 shape compiled / warm too
    for i in range(runs):
        img = frames[i % len(frames)]
        x, xm = pre(img), pre(np.asarray(cv2.flip(img, 1), dtype=np.uint8))
        x2 = np.concatenate([x, xm])
        k = i % len(names)
        for name in names[k:] + names[:k]:
            enc = encs[name]
            for step in ("pair", "batch") if i % 2 == 0 else ("batch", "pair"):
                t0 = time.perf_counter()
                if step == "pair":
                    enc.infer(x)
                    t1 = time.perf_counter()
                    enc.infer(xm)
                    t2 = time.perf_counter()
                    out[name]["batch1"].append((t1 - t0) * 1e3)
                    out[name]["two_calls"].append((t2 - t0) * 1e3)
                else:
                    enc.infer(x2)
                    out[name]["batch2"].append((time.perf_counter() - t0) * 1e3)
    return out


def encoder_captions(
    enc: Encoder, captioner: Captioner, mirror: bool, images: list[Image]
) -> tuple[list[str], list[npt.NDArray[np.float32]]]:
    """The caption of each image as the pipeline makes it (with the mirrored image's map when ``mirror``), and
    each image's global-pooled feature vector."""
    texts, pooled = [], []
    for img in images:
        fmap = enc.encode(img).features
        m = enc.encode(np.asarray(cv2.flip(img, 1), dtype=np.uint8)).features if mirror else None
        texts.append(captioner.caption(fmap, mirror=m).text)
        pooled.append(global_pool(fmap))
    return texts, pooled


def caption_agreement(
    cfg: Config, encs: dict[str, Encoder], frames: list[tuple[str, int, Image]]
) -> dict[str, Any]:
    """Captions of every variant on the held-out frames, and the share identical between pairs of them."""
    from drivecap.decoder.captioner import Captioner

    names = list(encs)
    captioner = Captioner.load(cfg, encoder_sha256=encs[names[0]].onnx_sha256)
    mirror = cfg.decoder.mirror_view and captioner.mirror_view
    images = [img for _, _, img in frames]
    texts: dict[str, list[str]] = {}
    feat_cos: dict[str, list[float]] = {}
    ref: list[npt.NDArray[np.float32]] = []
    for name in names:
        texts[name], pooled = encoder_captions(encs[name], captioner, mirror, images)
        ref = ref or pooled
        feat_cos[name] = [cosine(a, b) for a, b in zip(ref, pooled, strict=True)]

    def share(a: str, b: str) -> float:
        return round(float(np.mean([x == y for x, y in zip(texts[a], texts[b], strict=True)])), 4)

    pairs: dict[str, float] = {}
    for backend in ("onnxruntime", "openvino"):
        a, b = label(backend, "fp32"), label(backend, "int8")
        if a in texts and b in texts:
            pairs[f"{backend} fp32 vs int8"] = share(a, b)
    for prec in ("int8", "fp32"):
        a, b = label("onnxruntime", prec), label("openvino", prec)
        if a in texts and b in texts:
            pairs[f"onnxruntime vs openvino {prec}"] = share(a, b)
    return {
        "pairs": pairs,
        "frames": len(frames),
        "clips": sorted({c for c, _, _ in frames}),
        "mirror_view": bool(mirror),
        "distinct_captions": len(set(texts[names[0]])),
        "feature_cosine_to_" + names[0]: {n: round(float(np.mean(v)), 5) for n, v in feat_cos.items()},
        "examples": [
            {"clip": c, "frame": f, **{n: texts[n][j] for n in names}}
            for j, (c, f, _) in enumerate(frames)
            if len({texts[n][j] for n in names}) > 1
        ][:10],
    }


def bench_backends(
    cfg: Config, clip: str, n_frames: int = 12, runs: int = 24, caption_frames: int = 0
) -> dict[str, Any]:
    """The side-by-side table (and, with ``caption_frames`` > 0, the caption agreement) in one run."""
    from drivecap.bench.encoders import sample_clip

    if runs < 20:
        raise DrivecapError(f"--runs {runs} is too few for a stable median; use at least 20")
    store = AssetStore(drivecap_home(cfg.paths.home))
    path = store.clip(clip) if clip in CLIPS else Path(clip)
    frames = [np.asarray(f, dtype=np.uint8) for f in sample_clip(path, n_frames)]
    variants = cpu_variants()
    encs: dict[str, Encoder] = {}
    try:
        for backend, prec in variants:
            encs[label(backend, prec)] = make_encoder(cfg, backend=backend, precision=prec)
        auto_backend = resolve_backend(cfg)
        auto_label = f"auto ({label(auto_backend, cfg.encoder.precision)})"
        # What `auto` picks, as its own instance: timed like the others, it must match the fastest INT8.
        encs[auto_label] = make_encoder(cfg)
        times = time_variants(encs, frames, runs)
        table: dict[str, Any] = {}
        for name, t in times.items():
            b1, two, b2 = _med(t["batch1"]), _med(t["two_calls"]), _med(t["batch2"])
            table[name] = {
                "batch1_ms": b1,
                "two_calls_ms": two,
                "batch2_ms": b2,
                "batch2_over_two_calls": round(b2 / two, 3),
                "faster_mirror": "batch2" if b2 < two else "two_calls",
                "runs": len(t["batch1"]),
            }
        int8 = {
            n: r["batch1_ms"] for n, r in table.items() if n.endswith("/int8") and not n.startswith("auto")
        }
        fastest = min(int8, key=int8.__getitem__) if int8 else None
        out: dict[str, Any] = {
            "table": table,
            "auto": {
                "label": auto_label,
                "backend": auto_backend,
                "precision": cfg.encoder.precision,
                "fastest_int8": fastest,
                "ratio_to_fastest_int8": round(table[auto_label]["batch1_ms"] / int8[fastest], 3)
                if fastest
                else None,
            },
            "frames": len(frames),
            "clip": clip,
            "input": [cfg.encoder.input_height, cfg.encoder.input_width],
            "threads": cfg.encoder.threads,
            "describe": {n: e.describe() for n, e in encs.items()},
        }
        if caption_frames > 0:
            held = held_out_frames(store, caption_frames)
            out["caption_agreement"] = caption_agreement(
                cfg, {n: e for n, e in encs.items() if not n.startswith("auto")}, held
            )
        return out
    finally:
        for enc in encs.values():
            enc.close()


def format_backends(r: dict[str, Any]) -> str:
    lines = [
        f"CPU backends on {r['frames']} frames of {r['clip']}, input {r['input'][0]}x{r['input'][1]}, "
        f"threads {r['threads'] or 'auto'}; medians of {next(iter(r['table'].values()))['runs']} interleaved runs",
        f"{'variant':28s} {'batch 1':>8s} {'2 calls':>8s} {'batch 2':>8s} {'b2/2calls':>9s}",
    ]
    for name, row in r["table"].items():
        lines.append(
            f"{name:28s} {row['batch1_ms']:8.1f} {row['two_calls_ms']:8.1f} {row['batch2_ms']:8.1f} "
            f"{row['batch2_over_two_calls']:9.3f}"
        )
    a = r["auto"]
    if a["ratio_to_fastest_int8"] is not None:
        lines.append(f"auto vs fastest INT8 ({a['fastest_int8']}): {a['ratio_to_fastest_int8']:.3f}")
    ca = r.get("caption_agreement")
    if ca:
        lines.append(f"identical captions on {ca['frames']} held-out frames ({', '.join(ca['clips'])}):")
        lines += [f"  {k}: {v:.1%}" for k, v in ca["pairs"].items()]
    return "\n".join(lines)
