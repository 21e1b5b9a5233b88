"""``drivecap eval``: the caption bundle on the held-out clips against the teacher, beside a per-fact baseline."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from drivecap.config import Config
from drivecap.errors import DrivecapError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="score the caption model on the held-out clips (BLEU-4, CIDEr-D, facts, flips)"
    )
    p.add_argument("--bundle", type=Path, metavar="DIR", help="bundle folder (default: decoder.bundle)")
    p.add_argument(
        "--clips",
        nargs="+",
        metavar="CLIP",
        default=["project_video01", "challenge01", "street"],
        help="held-out clips (default: project_video01 challenge01 street; street = frames 1440 on)",
    )
    p.add_argument(
        "--beam",
        type=int,
        metavar="N",
        help="beam width for the beam figures (default: decoder.beam_width, or 3 when that is 1)",
    )
    p.add_argument(
        "--no-baseline", action="store_true", help="skip the per-fact logistic-regression baseline"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object (greedy figures at the top level)"
    )
    p.add_argument(
        "--captions", type=Path, metavar="FILE", help="also write every caption to this JSONL file"
    )
    p.add_argument(
        "--update-card", action="store_true", help="write the figures into the bundle's MODEL_CARD.md"
    )
    p.add_argument(
        "--contact-sheet",
        type=Path,
        metavar="PNG",
        help="draw 10 held-out frames with their captions into this PNG",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from drivecap.assets import CLIPS, drivecap_home, sha256_file
    from drivecap.decoder.bundle import resolve_bundle_dir
    from drivecap.decoder.captioner import Captioner
    from drivecap.encoders.paths import encoder_onnx_path
    from drivecap.errors import ModelError
    from drivecap.training.data import labels_dir, load_split, read_labels
    from drivecap.training.evaluate import evaluate_heldout
    from drivecap.training.features import features_dir, load_clip_features

    for c in args.clips:
        if c not in CLIPS or CLIPS[c].held_out_from is None:
            held = [n for n, k in CLIPS.items() if k.held_out_from is not None]
            raise DrivecapError(f"--clips {c!r} is not a held-out clip; held-out clips: {', '.join(held)}")
    onnx = encoder_onnx_path(cfg)
    if not onnx.is_file():
        raise ModelError(f"encoder ONNX {onnx} does not exist; run `drivecap encoder export`")
    sha = sha256_file(onnx)
    folder = args.bundle or resolve_bundle_dir(cfg.decoder.bundle, cfg.base_dir)
    width = args.beam or (cfg.decoder.beam_width if cfg.decoder.beam_width > 1 else 3)
    cap = Captioner.from_folder(folder, beam_width=1, max_tokens=cfg.decoder.max_tokens, encoder_sha256=sha)
    home = drivecap_home(cfg.paths.home)
    feats = features_dir(home, sha, cap.bundle.encoder.input_height, cap.bundle.encoder.input_width)

    # Held-out features: whatever the cache lacks is encoded now (fp32, as in training).
    missing: dict[str, list[int]] = {}
    for clip in args.clips:
        frames = sorted(
            {int(r["frame"]) for r in read_labels(labels_dir(home) / "heldout" / f"{clip}.jsonl")}
        )
        have = load_clip_features(feats, clip)
        got = set() if have is None else set(have.frames.tolist())
        todo = [f for f in frames if f not in got]
        if todo:
            missing[clip] = todo
    extraction = {"encoded_frames": 0, "seconds": 0.0}
    if missing:
        from drivecap.assets import AssetStore
        from drivecap.encoders.factory import make_encoder
        from drivecap.training.features import extract_clip

        with make_encoder(cfg, backend="onnxruntime", precision="fp32") as enc:
            for clip, todo in missing.items():
                n, t = extract_clip(enc, AssetStore(home), feats, clip, todo)
                extraction["encoded_frames"] += n
                extraction["seconds"] += round(t, 1)

    b = cap.bundle
    split = load_split(
        home,
        feats,
        args.clips,
        b.pooling.rows,
        b.pooling.cols,
        heldout=True,
        with_flipped=True,
        pool=b.pooling.mode,
    )
    if not len(split):
        raise DrivecapError(
            f"no held-out frames with labels in {labels_dir(home) / 'heldout'}; run `drivecap label`"
        )
    t0 = time.perf_counter()
    result = evaluate_heldout(cap, split, width, mirror_view=cfg.decoder.mirror_view)
    result["eval_seconds"] = round(time.perf_counter() - t0, 1)
    result["bundle"] = str(folder)
    result["architecture"] = {
        "kind": b.arch.kind,
        "pooling": [b.pooling.rows, b.pooling.cols, b.pooling.mode],
        "flip_ensemble": b.flip_ensemble,
        "members": 1 + len(b.members),
        "hidden": b.arch.hidden_dim,
    }
    result["clips"] = args.clips
    result["feature_extraction"] = extraction
    if not args.no_baseline:
        result["baseline"] = _baseline(home, feats, split, args.clips)
    captions = result.pop("captions")
    if args.captions:
        _write_captions(args.captions, split, result, captions)
    for section in ("beam", "baseline", "single_view"):
        if isinstance(result.get(section), dict):
            result[section].pop("captions", None)
    if args.update_card:
        from drivecap.training.card import update_heldout_section

        update_heldout_section(Path(folder) / "MODEL_CARD.md", heldout_markdown(result))
    if args.contact_sheet:
        _sheet(args.contact_sheet, home, split, captions["plain"])
    if args.json:
        print(json.dumps(result))
    else:
        print(heldout_markdown(result))
    return 0


def _baseline(home: Path, feats: Path, heldout: Any, clips: list[str]) -> dict[str, Any]:
    """Per-fact logistic regressions on 2x3-pooled features of every 4th training frame (and its mirror)."""
    from drivecap.captions.facts import Facts
    from drivecap.training.baseline import FactBaseline
    from drivecap.training.data import load_split
    from drivecap.training.evaluate import evaluate_baseline
    from drivecap.training.pipeline import train_ranges, training_clips

    rows, cols = 2, 3
    train = load_split(home, feats, training_clips(), rows, cols, train_ranges(), stride=4)
    if not len(train):
        return {"skipped": "no training features cached: run `drivecap train --extract-only`"}
    t0 = time.perf_counter()
    base = FactBaseline()
    base.fit(train.cells, [Facts.from_json(s.facts) for s in train.samples])
    fit_s = time.perf_counter() - t0
    held = load_split(home, feats, clips, rows, cols, heldout=True)
    out = evaluate_baseline(base, held)
    out["pooling"] = [rows, cols]
    out["train_samples"] = len(train)
    out["fit_seconds"] = round(fit_s, 1)
    return out


def _write_captions(path: Path, split: Any, result: dict[str, Any], captions: dict[str, list[str]]) -> None:
    from drivecap.training.evaluate import split_views

    plain, _ = split_views(split)
    with open(path, "w", encoding="utf-8") as f:
        for s, c, m in zip(plain.samples, captions["plain"], captions["mirrored"], strict=True):
            f.write(
                json.dumps(
                    {
                        "clip": s.clip,
                        "frame": s.frame,
                        "teacher": s.caption,
                        "caption": c,
                        "mirrored_caption": m,
                    }
                )
                + "\n"
            )
    del result


def _fmt(x: Any) -> str:
    return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def heldout_markdown(r: dict[str, Any]) -> str:
    """The held-out figures as Markdown (for the terminal and the model card)."""
    mv = bool(r.get("mirror_view"))
    base = r.get("baseline", {})
    cols = [
        ("LSTM greedy" + (" (mirror view)" if mv else ""), r),
        ("LSTM beam" + (" (mirror view)" if mv else ""), r.get("beam", {})),
    ]
    if "single_view" in r:
        cols.append(("LSTM greedy, frame alone", r["single_view"]))
    cols.append(("per-fact baseline", base))
    if isinstance(base.get("mirror_view"), dict):
        cols.append(("baseline (mirror view)", base["mirror_view"]))
    lines = [
        f"Held-out clips: {', '.join(r['clips'])} ({r['frames']} frames, each also mirrored); reference = the "
        "teacher's caption.",
        "",
    ]
    if mv:
        lines += [
            "Mirror view (`decoder.mirror_view`, the default): each frame is decoded together with the encoder's "
            "map of the mirrored frame, so a frame and its mirror get mirrored captions by construction (flip "
            'consistency 1 up to ties). "frame alone" is the decoder on the frame\'s own map (flip ensemble '
            "on the flipped map), what it does without the second encode.",
            "",
        ]
    lines += [
        "| | " + " | ".join(n for n, _ in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for key, label in (
        ("bleu4", "BLEU-4"),
        ("cider", "CIDEr-D"),
        ("fact_f1", "fact F1 (micro)"),
        ("fact_precision", "fact precision"),
        ("fact_recall", "fact recall"),
        ("exact_match", "exact fact match"),
        ("flip_consistency", "flip consistency"),
        ("flip_consistency_facts", "flip consistency (facts)"),
    ):
        lines.append(f"| {label} | " + " | ".join(_fmt(c.get(key)) for _, c in cols) + " |")
    lines.append(
        "| within-clip balanced accuracy | "
        + " | ".join(
            _fmt(c.get("within_clip", {}).get("overall", {}).get("balanced_accuracy")) for _, c in cols
        )
        + " |"
    )
    if "decode_ms" in r:
        lines.append(
            "| decode ms (mean / p95) | "
            + " | ".join(
                f"{c['decode_ms']['mean']} / {c['decode_ms']['p95']}" if "decode_ms" in c else "-"
                for _, c in cols
            )
            + " |"
        )
    lines += [
        "",
        "Per fact type (F1):",
        "",
        "| fact type | support | " + " | ".join(n for n, _ in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    fams = sorted(set(r.get("per_family", {})))
    for fam in fams:
        sup = r["per_family"][fam].get("support")
        if not sup and not r["per_family"][fam].get("fp"):
            continue
        lines.append(
            f"| {fam} | {sup} | "
            + " | ".join(_fmt(c.get("per_family", {}).get(fam, {}).get("f1")) for _, c in cols)
            + " |"
        )
    lines += [
        "",
        "Per fact (F1, greedy / baseline; support = teacher frames):",
        "",
        "| fact | support | greedy | baseline | within-clip bal. acc. (greedy / baseline) |",
        "|---|---|---|---|---|",
    ]
    for key, v in sorted(r.get("per_fact", {}).items(), key=lambda kv: -kv[1]["support"]):
        wg = r.get("within_clip", {}).get("per_fact", {}).get(key, {}).get("balanced_accuracy")
        wb = base.get("within_clip", {}).get("per_fact", {}).get(key, {}).get("balanced_accuracy")
        lines.append(
            f"| {key} | {v['support']} | {_fmt(v['f1'])} | "
            f"{_fmt(base.get('per_fact', {}).get(key, {}).get('f1'))} | {_fmt(wg)} / {_fmt(wb)} |"
        )
    lines += [
        "",
        "Per clip (greedy):",
        "",
        "| clip | frames | fact F1 | flip consistency | exact |",
        "|---|---|---|---|---|",
    ]
    for clip, v in r.get("per_clip", {}).items():
        lines.append(
            f"| {clip} | {v['frames']} | {_fmt(v['fact_f1'])} | {_fmt(v['flip_consistency'])} | "
            f"{_fmt(v['exact_match'])} |"
        )
    return "\n".join(lines)


def _sheet(path: Path, home: Path, split: Any, preds: list[str]) -> None:
    """10 held-out frames spread over the clips, preferring frames whose teacher captions differ."""
    from drivecap.assets import AssetStore
    from drivecap.training.contact_sheet import SheetItem, contact_sheet
    from drivecap.training.evaluate import split_views
    from drivecap.training.features import iter_video

    plain, _ = split_views(split)
    by_clip: dict[str, list[int]] = {}
    for i, s in enumerate(plain.samples):
        by_clip.setdefault(s.clip, []).append(i)
    chosen: list[int] = []
    seen: set[str] = set()
    per = {c: 10 // len(by_clip) + (k < 10 % len(by_clip)) for k, c in enumerate(by_clip)}
    for clip, idx in by_clip.items():
        picked: list[int] = []
        step = max(1, len(idx) // 40)
        for i in idx[::step]:  # distinct teacher captions first, spread over the clip
            if len(picked) < per[clip] and plain.samples[i].caption not in seen:
                picked.append(i)
                seen.add(plain.samples[i].caption)
        for i in idx[:: max(1, len(idx) // per[clip])]:
            if len(picked) < per[clip] and i not in picked:
                picked.append(i)
        chosen += sorted(picked)
    items = []
    store = AssetStore(home)
    for clip in by_clip:
        want = {plain.samples[i].frame: i for i in chosen if plain.samples[i].clip == clip}
        for fr, img in iter_video(store.clip(clip), set(want)):
            i = want[fr]
            items.append(SheetItem(img, f"{clip} frame {fr}", preds[i], plain.samples[i].caption))
    contact_sheet(items, path)
