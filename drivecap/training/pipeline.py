"""``drivecap train`` end to end: feature cache, data, architecture comparison, augmentation check, export."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drivecap.assets import CLIPS, HELD_OUT_CLIPS, AssetStore, drivecap_home
from drivecap.captions.grammar import VOCABULARY
from drivecap.config import Config
from drivecap.decoder.bundle import Bundle, EncoderRef, Pooling, save_bundle
from drivecap.decoder.captioner import Captioner
from drivecap.decoder.vocab import Vocab
from drivecap.encoders.base import Encoder
from drivecap.errors import DrivecapError
from drivecap.training.candidates import ARCHS, CANDIDATES, CV_EPOCHS, CV_SEEDS
from drivecap.training.data import Split, load_split
from drivecap.training.features import extract_clip, features_dir, map_grid, training_frame_plan

log = logging.getLogger(__name__)


@dataclass
class TrainRequest:
    out: Path | None = None
    protocol: str = "loco"  # loco | single-clip
    candidates: list[str] = field(default_factory=lambda: list(CANDIDATES))
    archs: list[str] = field(default_factory=lambda: list(ARCHS))
    val_clip: str = "challenge02"
    stride: int = 4
    augment: str = "compare"
    augment_per_clip: int = 60
    epochs: int = 30
    seed: int = 0
    threads: int = 1
    extract_only: bool = False
    cv_seeds: int = len(CV_SEEDS)
    command: str = "drivecap train"


def training_clips() -> list[str]:
    """Clips with training frames: every clip not held out whole (the street film up to its held-out part)."""
    return [name for name in CLIPS if name not in HELD_OUT_CLIPS]


def train_ranges() -> dict[str, tuple[int, int | None]]:
    return {name: (0, c.held_out_from) for name, c in CLIPS.items() if c.held_out_from}


def extract_all(enc: Encoder, home: Path, stride: int, clips: list[str] | None = None) -> dict[str, Any]:
    """Fills the feature cache; returns what it did and how long it took."""
    from tqdm import tqdm

    folder = features_dir(home, enc.onnx_sha256, enc.preprocess.height, enc.preprocess.width)
    plan = training_frame_plan(stride)
    order = clips or ["street", *[c for c in training_clips() if c != "street"]]
    encoded, seconds, per_clip = 0, 0.0, {}
    with tqdm(total=sum(len(plan[c]) for c in order), desc="features", unit="frame", disable=None) as bar:
        for clip in order:
            n, t = extract_clip(enc, AssetStore(home), folder, clip, plan[clip], progress=bar.update)
            bar.update(len(plan[clip]) - n)
            encoded += n
            seconds += t
            per_clip[clip] = {"encoded": n, "seconds": round(t, 1)}
    return {
        "folder": str(folder),
        "encoder_sha256": enc.onnx_sha256,
        "encoded_frames": encoded,
        "seconds": round(seconds, 1),
        "ms_per_frame_and_mirror": round(1e3 * seconds / max(encoded, 1), 1),
        "encoder": enc.describe(),
        "preprocess": enc.preprocess.mode,
        "input": [enc.preprocess.height, enc.preprocess.width],
        "clips": per_clip,
    }


def caption_vocab() -> Vocab:
    """Every token the grammar can produce: fixed, so that vocabularies of two trainings agree."""
    return Vocab.build([], extra=VOCABULARY)


def load_train_val(
    home: Path, folder: Path, val_clip: str, rows: int, cols: int, stride: int = 4
) -> tuple[Split, Split]:
    """Every ``stride``-th labelled frame (and its mirror) of the training clips; the validation clip apart."""
    clips = training_clips()
    if val_clip not in clips:
        raise DrivecapError(
            f"--val-clip {val_clip!r} is not a training clip; choose one of {', '.join(clips)}"
        )
    train = load_split(
        home, folder, [c for c in clips if c != val_clip], rows, cols, train_ranges(), stride=stride
    )
    val = load_split(home, folder, [val_clip], rows, cols, train_ranges(), with_flipped=True, stride=stride)
    if not len(train) or not len(val):
        raise DrivecapError(
            f"no labelled frames with cached features (train {len(train)}, val {len(val)}); run "
            "`drivecap label` and let `drivecap train` extract features"
        )
    return train, val


def decode_numpy(cap: Captioner, split: Split, ensemble: bool, beam: int = 1) -> list[str]:
    """Captions of every sample with the runtime decoder (flip ensemble on or off)."""
    cap.flip_ensemble = ensemble
    flipped = split.flipped
    if ensemble and flipped is None:
        raise ValueError("the flip ensemble needs the split's flipped cells (load_split(with_flipped=True))")
    return [
        cap.caption_cells(split.cells[i], beam, None if flipped is None else flipped[i]).text
        for i in range(len(split))
    ]


def train_pipeline(cfg: Config, req: TrainRequest) -> dict[str, Any]:
    import torch

    from drivecap.encoders.factory import make_encoder
    from drivecap.training.augment_data import extract_augmented, load_augmented
    from drivecap.training.card import model_card
    from drivecap.training.evaluate import val_scorer
    from drivecap.training.train import TrainSettings, fit

    torch.set_num_threads(req.threads)
    home = drivecap_home(cfg.paths.home)
    report: dict[str, Any] = {
        "command": req.command,
        "val_clip": req.val_clip,
        "stride": req.stride,
        "train_clips": [c for c in training_clips() if c != req.val_clip],
    }
    t0 = time.perf_counter()
    with make_encoder(cfg, backend="onnxruntime", precision="fp32") as enc:
        report["extraction"] = ext = extract_all(enc, home, req.stride)
        folder = Path(ext["folder"])
        aug_path = None
        if req.augment != "off" and not req.extract_only and req.protocol != "loco":
            aug = extract_augmented(enc, home, folder, report["train_clips"], req.augment_per_clip, req.seed)
            report["augmented_extraction"] = aug
            aug_path = Path(aug["path"])
    ext["wall_seconds"] = round(time.perf_counter() - t0, 1)
    from drivecap.assets import sha256_file
    from drivecap.training.data import labels_dir

    # Which labels this training read (the teacher can be re-run with other settings later).
    report["labels"] = {
        str(p.relative_to(labels_dir(home))): sha256_file(p)[:12]
        for p in sorted(labels_dir(home).glob("**/*.jsonl"))
    }
    from drivecap.training.card import teacher_report

    # How right those labels are where a person looked (the hand-captioned training frames; no detector run).
    report["teacher"] = teacher_report(labels_dir(home))
    if req.extract_only:
        return report
    if req.protocol == "loco":
        return _loco_pipeline(req, report, home, folder, ext)
    encoder_ref = EncoderRef(
        ext["encoder_sha256"], ext["preprocess"], ext["input"][0], ext["input"][1], "fp32"
    )
    vocab = caption_vocab()
    runs: dict[str, Any] = {}
    best: tuple[float, str, Path] | None = None
    runs_dir = home / "bundles" / "runs" / ext["encoder_sha256"][:12]
    t_train = time.perf_counter()
    aug_cache: dict[tuple[int, int], Split] = {}

    def augmented(rows: int, cols: int) -> Split:
        if (rows, cols) not in aug_cache:
            aug_cache[(rows, cols)] = (
                load_augmented(aug_path, rows, cols)
                if aug_path is not None
                else Split([], np.zeros((0, rows * cols, 512), np.float32))
            )
        return aug_cache[(rows, cols)]

    def one_run(name: str, use_aug: bool) -> None:
        nonlocal best
        a = ARCHS[name]
        train, val = load_train_val(home, folder, req.val_clip, a["rows"], a["cols"], req.stride)
        data = train.concat(augmented(a["rows"], a["cols"])) if use_aug else train
        run_name = name + ("+aug" if use_aug else "")
        s = TrainSettings(
            kind=a["kind"],
            rows=a["rows"],
            cols=a["cols"],
            max_epochs=req.epochs,
            seed=req.seed,
            threads=req.threads,
        )
        log.info(
            "training %s on %d samples, validating on %d (%s)", run_name, len(data), len(val), req.val_clip
        )
        model, hist = fit(data, val, vocab, s, val_scorer)
        run_dir = runs_dir / run_name
        card = f"# training run {run_name}\n\nSee the chosen bundle's card.\n"
        save_bundle(run_dir, model.arch, model.export(), vocab, encoder_ref, Pooling(s.rows, s.cols), card)
        cap = Captioner(_load(run_dir), beam_width=1, max_tokens=s.max_words + 1)
        scored = {}
        for ens in (False, True):
            v = val_scorer(decode_numpy(cap, val, ens), val)
            scored["flip_ensemble" if ens else "plain"] = {k: round(x, 4) for k, x in v.items()}
        use_ens = scored["flip_ensemble"]["score"] > scored["plain"]["score"]
        if use_ens:
            save_bundle(
                run_dir,
                model.arch,
                model.export(),
                vocab,
                encoder_ref,
                Pooling(s.rows, s.cols),
                card,
                flip_ensemble=True,
            )
        score = scored["flip_ensemble" if use_ens else "plain"]["score"]
        runs[run_name] = {
            "score": score,
            "flip_ensemble": use_ens,
            "best_epoch": hist.best_epoch,
            "epochs_run": len(hist.epochs),
            "seconds": round(hist.seconds, 1),
            "train_samples": len(data),
            "val_samples": len(val),
            "val_numpy": scored,
            "history": [{k: round(x, 4) for k, x in e.items()} for e in hist.epochs],
            "settings": asdict(s),
            "bundle": str(run_dir),
        }
        log.info("%s: val %s", run_name, scored)
        if best is None or score > best[0]:
            best = (score, run_name, run_dir)

    for name in req.archs:
        one_run(name, use_aug=req.augment == "on")
    if req.augment == "compare" and best is not None:
        # Augmentation is measured on the best architecture only: one more run instead of one per architecture.
        base_name = best[1]
        a = ARCHS[base_name]
        if len(augmented(a["rows"], a["cols"])):
            one_run(base_name, use_aug=True)
        else:
            log.warning("no copy-paste augmented frames: nothing to compare")
    report["runs"] = runs
    report["train_seconds"] = round(time.perf_counter() - t_train, 1)
    assert best is not None
    _, chosen, chosen_dir = best
    report["chosen"] = chosen
    out = req.out or home / "bundles" / ext["encoder_sha256"][:12]
    b = _load(chosen_dir)
    r = runs[chosen]
    # Beam search's length penalty, chosen on the validation clip (plain log-prob favours short captions).
    a = ARCHS[chosen.removesuffix("+aug")]
    _, val = load_train_val(home, folder, req.val_clip, a["rows"], a["cols"], req.stride)
    cap = Captioner(b, beam_width=3, max_tokens=r["settings"]["max_words"] + 1)
    beam_scores = {}
    for alpha in (0.0, 0.5, 1.0):
        cap.decoder.length_alpha = alpha
        beam_scores[alpha] = val_scorer(decode_numpy(cap, val, b.flip_ensemble, beam=3), val)["score"]
    alpha = max(beam_scores, key=lambda k: beam_scores[k])
    report["beam_length_alpha"] = {
        "chosen": alpha,
        "val_scores": {str(k): round(v, 4) for k, v in beam_scores.items()},
    }
    save_bundle(
        out,
        b.arch,
        b.params,
        vocab,
        encoder_ref,
        b.pooling,
        model_card(report, chosen),
        flip_ensemble=b.flip_ensemble,
        length_alpha=alpha,
        extra={
            "command": req.command,
            "chosen": chosen,
            "val_clip": req.val_clip,
            "settings": r["settings"],
            "val": r["val_numpy"],
            "train_seconds": report["train_seconds"],
            "extraction_seconds": ext["seconds"],
        },
    )
    report["bundle"] = str(out)
    return report


def _loco_pipeline(
    req: TrainRequest, report: dict[str, Any], home: Path, folder: Path, ext: dict[str, Any]
) -> dict[str, Any]:
    """Leave-one-clip-out over the training clips chooses settings, epochs and ensemble size by the mean
    over folds; the final decoders (one per seed) are then trained on every training clip and exported."""
    from drivecap.training.card import loco_model_card
    from drivecap.training.crossval import baseline_cross_validate, best_choice, cross_validate
    from drivecap.training.train import TrainSettings, train_fixed

    grid = map_grid(folder, training_clips())
    splits: dict[tuple[int, int, str], Split] = {}

    def split_for(name: str) -> tuple[Split, int, int]:
        c = CANDIDATES[name]
        rc = (c.get("rows") or grid[0], c.get("cols") or grid[1]) if "rows" in c else (2, 3)
        key = (*rc, str(c.get("pool", "avg")))
        if key not in splits:
            splits[key] = load_split(
                home,
                folder,
                training_clips(),
                *rc,
                train_ranges(),
                with_flipped=True,
                stride=req.stride,
                pool=key[2],
            )
        return splits[key], rc[0], rc[1]

    data, rows, cols = split_for(req.candidates[0])
    if not len(data):
        raise DrivecapError(
            "no labelled training frames with cached features; run `drivecap label` and let "
            "`drivecap train` extract features"
        )
    vocab = caption_vocab()
    report["protocol"] = "leave-one-clip-out"
    report["train_clips"] = sorted({s.clip for s in data.samples})
    report["val_clip"] = None
    report["train_samples"] = len(data)
    t0 = time.perf_counter()
    max_epochs = min(req.epochs, max(CV_EPOCHS))
    checks = [e for e in CV_EPOCHS if e <= max_epochs]
    # The choice rule, from the targets: the highest mean fold fact F1 among settings whose mean fold
    # flip consistency is no worse than the per-fact baseline's by more than 0.05 (same folds).
    base_cv = baseline_cross_validate(data)
    min_flip = base_cv["mean"]["val_flip"] - 0.05
    report["cv_baseline"] = base_cv
    report["cv_rule"] = {
        "value": "mean fold fact F1",
        "min_mean_flip": round(min_flip, 4),
        "why": "flip consistency no worse than the per-fact baseline's by more than 0.05",
    }
    log.info("baseline over the folds: %s; flip floor %.3f", base_cv["mean"], min_flip)
    cv: dict[str, Any] = {}
    best: tuple[float, str, int, int] | None = None
    seeds = CV_SEEDS[: req.cv_seeds]
    for name in req.candidates:
        data, rows, cols = split_for(name)
        s = TrainSettings(kind="merge", max_epochs=max_epochs, threads=req.threads)
        s = TrainSettings(**{**asdict(s), **CANDIDATES[name], "rows": rows, "cols": cols})
        log.info(
            "cross-validating %s (%dx%d cells) over %d clips", name, rows, cols, len(report["train_clips"])
        )
        r = cross_validate(data, vocab, s, seeds=seeds, check_epochs=checks)
        k, e, score = best_choice(r, min_flip=min_flip)
        k0, e0, s0 = best_choice(r)
        cv[name] = {
            **r,
            "best": {"members": k, "epochs": e, "score": score},
            "best_by_mean_score": {"members": k0, "epochs": e0, "score": s0},
        }
        log.info("%s: best mean fold fact F1 %.4f with %d member(s) after %d epoch(s)", name, score, k, e)
        if best is None or score > best[0] + 1e-9:
            best = (score, name, k, e)
    assert best is not None
    score, chosen, members, epochs = best
    report["cv"] = cv
    report["cv_seconds"] = round(time.perf_counter() - t0, 1)
    report["chosen"] = {"candidate": chosen, "members": members, "epochs": epochs, "score": round(score, 4)}
    t1 = time.perf_counter()
    data, rows, cols = split_for(chosen)
    s = TrainSettings(kind="merge", max_epochs=max_epochs, threads=req.threads)
    s = TrainSettings(**{**asdict(s), **CANDIDATES[chosen], "rows": rows, "cols": cols})
    params = [
        train_fixed(data, vocab, TrainSettings(**{**asdict(s), "seed": seed}), epochs).export()
        for seed in seeds[:members]
    ]
    # Each fold's fact F1 for the chosen setting, so bundle.json can be read without the model card.
    folds = {c: round(f[str(members)][epochs]["val_fact_f1"], 4) for c, f in cv[chosen]["folds"].items()}
    report["final_seconds"] = round(time.perf_counter() - t1, 1)
    report["train_seconds"] = round(time.perf_counter() - t0, 1)
    out = req.out or home / "bundles" / ext["encoder_sha256"][:12]
    encoder_ref = EncoderRef(
        ext["encoder_sha256"], ext["preprocess"], ext["input"][0], ext["input"][1], "fp32"
    )
    arch = s.arch(len(vocab), data.cells.shape[-1])
    save_bundle(
        out,
        arch,
        params[0],
        vocab,
        encoder_ref,
        Pooling(rows, cols, s.pool),
        loco_model_card(report, asdict(s)),
        flip_ensemble=True,
        length_alpha=0.0,
        members=params[1:],
        extra={
            "command": req.command,
            "protocol": "leave-one-clip-out",
            "chosen": report["chosen"],
            "settings": asdict(s),
            "seeds": list(seeds[:members]),
            "folds": folds,
            "cv_mean": {
                n: {k: {str(e): round(v["score"], 4) for e, v in by.items()} for k, by in c["mean"].items()}
                for n, c in cv.items()
            },
            "train_seconds": report["train_seconds"],
            "extraction_seconds": ext["seconds"],
        },
    )
    report["bundle"] = str(out)
    return report


def _load(folder: Path) -> Bundle:
    from drivecap.decoder.bundle import load_bundle

    return load_bundle(folder)


__all__ = [
    "ARCHS",
    "CANDIDATES",
    "TrainRequest",
    "caption_vocab",
    "decode_numpy",
    "train_pipeline",
    "training_clips",
]
