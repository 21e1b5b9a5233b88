"""``drivecap caption IMAGE...``: one caption per image with the encoder and the caption bundle."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from drivecap.config import Config
from drivecap.errors import DrivecapError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("caption", help="print one caption per image (files or folders of images)")
    p.add_argument(
        "images", nargs="+", help="image files, or folders whose images are captioned in name order"
    )
    p.add_argument(
        "--beam", type=int, metavar="N", help="beam width (default: decoder.beam_width; 1 = greedy)"
    )
    p.add_argument(
        "--json", action="store_true", help="one JSON object per line with tokens, score and timings"
    )
    p.set_defaults(func=run)


def image_paths(items: list[str]) -> list[Path]:
    """Files as given, folders expanded to their images; a missing path or an image-less folder is an error."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DrivecapError(
                    f"folder {p} has no images ({', '.join(IMAGE_SUFFIXES)}); "
                    "point drivecap caption at image files or a folder of them"
                )
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DrivecapError(f"{p} does not exist; give image files or folders")
    return out


def _encoder(cfg: Config):  # type: ignore[no-untyped-def]
    from drivecap.encoders.factory import make_encoder, resolve_backend
    from drivecap.encoders.paths import int8_onnx_path

    backend = resolve_backend(cfg)
    if backend == "onnxruntime" and cfg.encoder.precision == "int8" and not int8_onnx_path(cfg).is_file():
        # A fresh install has the fp32 export but no calibration yet: caption anyway, a bit slower.
        log.warning("no INT8 encoder at %s (run `drivecap calibrate`): using fp32", int8_onnx_path(cfg))
        return make_encoder(cfg, backend, "fp32")
    return make_encoder(cfg, backend)


def run(args: argparse.Namespace, cfg: Config) -> int:
    import cv2

    from drivecap.captions.grammar import for_people
    from drivecap.decoder.captioner import Captioner

    paths = image_paths(args.images)
    if args.beam is not None and args.beam < 1:
        raise DrivecapError(f"--beam {args.beam} is not allowed: use 1 (greedy) or more")
    enc = _encoder(cfg)
    cap = Captioner.load(cfg, encoder_sha256=enc.onnx_sha256)
    failed = 0
    with enc:
        for p in paths:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                print(f"drivecap: error: {p} is not an image OpenCV can read; skipped", file=sys.stderr)
                failed += 1
                continue
            res = enc.encode(img)
            mirror = enc.encode(cv2.flip(img, 1)) if cap.mirror_view else None
            c = cap.caption(
                res.features, beam_width=args.beam, mirror=None if mirror is None else mirror.features
            )
            if args.json:
                print(
                    json.dumps(
                        {
                            "image": str(p),
                            "caption": for_people(c.text),
                            "tokens": list(c.tokens),
                            "score": round(c.score, 4),
                            "encode_ms": round(res.preprocess_ms + res.infer_ms, 2),
                            "mirror_encode_ms": None
                            if mirror is None
                            else round(mirror.preprocess_ms + mirror.infer_ms, 2),
                            "decode_ms": round(c.decode_ms, 2),
                        }
                    ),
                    flush=True,
                )
            else:
                print(f"{p}: {for_people(c.text)}", flush=True)
    return 2 if failed else 0
