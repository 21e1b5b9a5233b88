"""Choosing the fact hold on the training clips: the real gate, decoder and hold over cached encoder features.

    python scripts/hold_sim.py --out benchmarks/hold/training_sim.json

Training parts only (project_video02/03, challenge02/03, street frames 0-1439): no held-out frame is read. Every
4th frame (25 fps clips) or 5th (the 30 fps ones) is encoded with the default encoder (about the 6 Hz a
realtime replay encodes at on these 2 cores), with its mirror; the features are cached in --cache. Then the real
:class:`drivecap.pipeline.inference.Inference` (pixel pre-gate, semantic gate, mirror-view decoder, fact hold)
runs over them for each hold setting, and the captions' cues are measured as the realtime bench measures them:
a cue lasts from a caption until a different text replaces it; the share of cues under 2 s is flicker. What a
hold costs is measured beside it: the caption on screen at every encoded frame against the teacher's label of
that frame (``drivecap label``'s files in $DRIVECAP_HOME), micro fact F1: a hold that froze the caption would
lower it.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drivecap.assets import CLIPS, AssetStore
from drivecap.bench.figures import SHORT_CUE_S
from drivecap.captions.grammar import parse
from drivecap.config import Config, load_config
from drivecap.encoders.base import EncodeResult
from drivecap.frames import Frame
from drivecap.metrics import LatencyRecorder
from drivecap.pipeline.inference import Inference, load_models
from drivecap.training.caption_metrics import fact_scores

TRAINING = ("project_video02", "project_video03", "challenge02", "challenge03", "street")
SMALL = (160, 90)  # what the pixel pre-gate sees (its 32x32 thumbnail of this ~ of the full frame)


def extract(cfg: Config, cache: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per clip: frame indices, times, small images, conv5 maps of frame and mirror (cached)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    cache.mkdir(parents=True, exist_ok=True)
    enc = None
    store = AssetStore()
    for name in TRAINING:
        path = cache / f"{name}.npz"
        if path.is_file():
            out[name] = dict(np.load(path, allow_pickle=False))
            continue
        if enc is None:
            enc, _ = load_models(cfg)
        cap = cv2.VideoCapture(str(store.clip(name)))
        fps = cap.get(cv2.CAP_PROP_FPS)
        stride = 5 if fps > 27 else 4
        stop = CLIPS[name].training_end(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        idx, ts, small, fmaps, mmaps = [], [], [], [], []
        t0 = time.time()
        for i in range(stop):
            ok, img = cap.read()
            if not ok:
                break
            if i % stride:
                continue
            idx.append(i)
            ts.append(i / fps)
            small.append(cv2.resize(img, SMALL, interpolation=cv2.INTER_AREA))
            fmaps.append(enc.encode(img).features.astype(np.float16))
            mmaps.append(enc.encode(np.ascontiguousarray(cv2.flip(img, 1))).features.astype(np.float16))
        cap.release()
        out[name] = {
            "frames": np.array(idx),
            "t": np.array(ts),
            "small": np.stack(small),
            "fmap": np.stack(fmaps),
            "mirror": np.stack(mmaps),
        }
        np.savez(path, **out[name])
        print(f"{name}: {len(idx)} frames encoded in {time.time() - t0:.0f} s", flush=True)
    if enc is not None:
        enc.close()
    return out


class CachedEncoder:
    """Hands Inference the cached map of the current frame, then (second call) its mirror's."""

    def __init__(self, fmap: np.ndarray, mirror: np.ndarray) -> None:
        self.fmap, self.mirror = fmap, mirror
        self.calls = 0

    def encode(self, frame_bgr: Any) -> EncodeResult:
        self.calls += 1
        src = self.fmap if self.calls == 1 else self.mirror
        return EncodeResult(src.astype(np.float32), 0.0, 0.0)

    def describe(self) -> str:
        return "cached"


def simulate(
    cfg: Config, captioner: Any, clip: dict[str, np.ndarray]
) -> tuple[list[tuple[float, str]], list[str]]:
    """The captions made (time, text) and the caption on screen at every encoded frame."""
    enc = CachedEncoder(clip["fmap"][0], clip["mirror"][0])
    inf = Inference(cfg, enc, captioner, LatencyRecorder())
    caps: list[tuple[float, str]] = []
    shown: list[str] = []
    for k in range(len(clip["t"])):
        enc.fmap, enc.mirror, enc.calls = clip["fmap"][k], clip["mirror"][k], 0
        t = float(clip["t"][k])
        frame = Frame(int(clip["frames"][k]), clip["small"][k], t, t)
        _, ev = inf.process(frame)
        if ev is not None:
            caps.append((t, ev.text))
        shown.append(caps[-1][1] if caps else "")
    return caps, shown


def teacher_keys(name: str, frames: np.ndarray) -> list[frozenset[str]] | None:
    """The teacher's fact keys of each frame (``drivecap label``'s files), or None without labels."""
    from drivecap.assets import drivecap_home
    from drivecap.training.data import labels_dir, read_labels

    path = labels_dir(drivecap_home()) / f"{name}.jsonl"
    if not path.is_file():
        return None
    by_frame = {int(r["frame"]): parse(r["caption"]).keys for r in read_labels(path) if not r["mirrored"]}
    return [by_frame.get(int(f), frozenset()) for f in frames]


def cues(caps: list[tuple[float, str]]) -> list[float]:
    """Lengths of the cues (text runs) but the last, cut by the end of the clip."""
    out: list[float] = []
    start, text = None, None
    for t, x in caps:
        if x != text:
            if start is not None:
                out.append(t - start)
            start, text = t, x
    return out


SETTINGS: dict[str, dict[str, Any]] = {
    "off": {"enabled": False},
    "enter1 leave2 confirm": {"enter_s": 1.0, "leave_s": 2.0, "confirm": True},
    "enter1 leave2": {"enter_s": 1.0, "leave_s": 2.0, "confirm": False},
    "enter1 leave3 confirm": {"enter_s": 1.0, "leave_s": 3.0, "confirm": True},
    "enter1 leave3": {"enter_s": 1.0, "leave_s": 3.0, "confirm": False},
    "enter1.5 leave3": {"enter_s": 1.5, "leave_s": 3.0, "confirm": False},
    "enter2 leave3": {"enter_s": 2.0, "leave_s": 3.0, "confirm": False},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/hold/training_sim.json"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/drivecap-hold-sim"))
    ap.add_argument(
        "--grid",
        action="store_true",
        help="every enter 0.5/1/1.5 s x leave 1/2/3 s x confirm off/on instead of the settings above",
    )
    args = ap.parse_args(argv)
    settings = SETTINGS
    if args.grid:
        settings = {"off": {"enabled": False}}
        for enter in (0.5, 1.0, 1.5):
            for leave in (1.0, 2.0, 3.0):
                for confirm in (False, True):
                    label = f"enter{enter:g} leave{leave:g}" + (" confirm" if confirm else "")
                    settings[label] = {"enter_s": enter, "leave_s": leave, "confirm": confirm}
    cfg = load_config(None, [])
    data = extract(cfg, args.cache)
    from drivecap.decoder.captioner import Captioner

    captioner = Captioner.load(cfg)
    res: dict[str, Any] = {"settings": {}, "clips": list(data)}
    truth_of = {name: teacher_keys(name, clip["frames"]) for name, clip in data.items()}
    for label, knobs in settings.items():
        c = copy.deepcopy(cfg)
        for k, v in knobs.items():
            setattr(c.hold, k, v)
        per_clip = {}
        allc: list[float] = []
        n_caps = 0
        on_screen: list[frozenset[str]] = []
        truth: list[frozenset[str]] = []
        for name, clip in data.items():
            caps, shown = simulate(c, captioner, clip)
            keys = truth_of[name]
            if keys is not None:
                on_screen += [parse(x).keys for x in shown]
                truth += keys
            lens = cues(caps)
            allc += lens
            n_caps += len(caps)
            short = sum(x < SHORT_CUE_S for x in lens)
            per_clip[name] = {"cues": len(lens), "short": short, "captions": len(caps)}
        short = sum(x < SHORT_CUE_S for x in allc)
        res["settings"][label] = {
            "knobs": knobs,
            "cues": len(allc),
            "short": short,
            "short_share": round(short / len(allc), 3) if allc else None,
            "median_cue_s": round(float(np.median(allc)), 2) if allc else None,
            "captions": n_caps,
            # the caption on screen at each encoded frame against the teacher's label of that frame
            "on_screen_fact_f1": round(fact_scores(on_screen, truth)["micro"].f1 or 0.0, 4)
            if truth
            else None,
            "clips": per_clip,
        }
        print(
            f"{label:24s} short {short}/{len(allc)} = {short / max(1, len(allc)):.3f}  captions {n_caps}  "
            f"on-screen fact F1 {res['settings'][label]['on_screen_fact_f1']}  {per_clip}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
