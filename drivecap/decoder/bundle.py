"""Caption model bundles: a folder with bundle.json, decoder.npz, vocab.json and MODEL_CARD.md.

bundle.json records which encoder the decoder was trained on (fp32 ONNX sha256, preprocessing, input size),
how the conv5 map is pooled into cells, the architecture sizes and the sha256 of each file. Loading checks all
of it and raises :class:`ModelError` with one line naming the file and what to do.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drivecap.decoder.lstm import Arch, FloatArray
from drivecap.decoder.vocab import Vocab
from drivecap.errors import ModelError

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "drivecap-caption-bundle"
FORMAT_VERSION = 1
BUNDLE_JSON, WEIGHTS, VOCAB, CARD = "bundle.json", "decoder.npz", "vocab.json", "MODEL_CARD.md"
HASHED_FILES = (WEIGHTS, VOCAB)  # the card is documentation: editing it must not break the bundle


def default_bundle_dir() -> Path:
    """The bundle that ships inside the package."""
    return Path(__file__).resolve().parent.parent / "models" / "default"


@dataclass(frozen=True)
class EncoderRef:
    """The encoder a decoder was trained on. An empty sha256 accepts any encoder (test bundles)."""

    onnx_sha256: str = ""
    preprocess: str = "caffe"
    input_height: int = 224
    input_width: int = 224
    precision: str = "fp32"


#: How a cell summarises its part of the conv5 map: the mean; the max; the generalised mean with p = 3 (GeM,
#: between the two: a small strong response is less diluted by the road around it); or the mean and the max side
#: by side (twice the channels).
POOL_MODES = ("avg", "max", "gem3", "avgmax")


@dataclass(frozen=True)
class Pooling:
    """The (C, h, w) conv5 map is pooled over a rows x cols grid (``mode``, one of ``POOL_MODES``; bundles
    written before the field existed are average-pooled); each cell is one decoder input."""

    rows: int = 1
    cols: int = 3
    mode: str = "avg"

    @property
    def cells(self) -> int:
        return self.rows * self.cols


@dataclass
class Bundle:
    folder: Path
    arch: Arch
    params: dict[str, FloatArray]
    vocab: Vocab
    encoder: EncoderRef
    pooling: Pooling
    length_alpha: float = 0.0
    flip_ensemble: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    #: further decoders of the same architecture whose word log-probabilities are averaged with this one's
    #: (stored in decoder.npz as ``m1/<key>``, ``m2/<key>``, ...; ``decoding.members`` in bundle.json counts
    #: all of them, 1 when absent)
    members: list[dict[str, FloatArray]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.folder.name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _short(sha: str) -> str:
    return sha[:12] if sha else "(any)"


def resolve_bundle_dir(spec: str, base: Path | None = None) -> Path:
    """``"default"`` -> the packaged bundle; otherwise a folder (relative to ``base``)."""
    if spec in ("", "default"):
        return default_bundle_dir()
    p = Path(spec).expanduser()
    return p if p.is_absolute() or base is None else base / p


# ------------------------------------------------------------------------------------------------ load


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / BUNDLE_JSON
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"bundle {folder} has no {BUNDLE_JSON}; it is not a drivecap caption bundle"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(
            f"{path} is not valid JSON ({exc.__class__.__name__}); restore or re-export the bundle"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"{path} is not a drivecap caption bundle (format {BUNDLE_FORMAT!r} expected)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{path} has format_version {meta.get('format_version')!r}; this drivecap reads "
            f"version {FORMAT_VERSION}: re-export the bundle with this version"
        )
    return meta


def _section(meta: dict[str, Any], key: str, cls: type, path: Path) -> Any:
    data = meta.get(key)
    if not isinstance(data, dict):
        raise ModelError(f"{path} has no {key!r} section; re-export the bundle")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ModelError(f"{path}: section {key!r} is malformed ({exc}); re-export the bundle") from None


def _load_npz(path: Path) -> dict[str, FloatArray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k], dtype=np.float32) for k in z.files}
    except FileNotFoundError:
        raise ModelError(f"bundle weights {path} do not exist; the bundle is incomplete") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ModelError(
            f"bundle weights {path} are truncated or corrupt ({exc.__class__.__name__}); "
            "restore the file or re-export the bundle"
        ) from None


def load_bundle(folder: Path, encoder_sha256: str = "") -> Bundle:
    """Reads and checks a bundle; ``encoder_sha256`` (when given) must match the bundle's encoder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(
            f"caption bundle folder {folder} does not exist; set decoder.bundle to a bundle folder "
            "or 'default' (train one with `drivecap train`)"
        )
    meta = _read_meta(folder)
    meta_path = folder / BUNDLE_JSON
    for name in (WEIGHTS, VOCAB, CARD):
        if not (folder / name).is_file():
            raise ModelError(f"bundle {folder} is missing {name}; restore it or re-export the bundle")
    arch = _section(meta, "architecture", Arch, meta_path)
    if arch.kind not in ("merge", "attention"):
        raise ModelError(f"{meta_path}: architecture kind {arch.kind!r} is not merge or attention")
    pooling = _section(meta, "pooling", Pooling, meta_path)
    encoder = _section(meta, "encoder", EncoderRef, meta_path)
    if pooling.mode not in POOL_MODES:
        raise ModelError(
            f"{meta_path}: pooling mode {pooling.mode!r} is not one of {', '.join(POOL_MODES)}; "
            "re-export the bundle with this drivecap"
        )
    if pooling.cells != arch.cells:
        raise ModelError(
            f"{meta_path}: pooling {pooling.rows}x{pooling.cols} gives {pooling.cells} cells but the "
            f"architecture reads {arch.cells}; re-export the bundle"
        )

    params = _load_npz(folder / WEIGHTS)
    vocab = Vocab.load(folder / VOCAB)
    out_rows = params["W_out"].shape[0] if "W_out" in params else None
    if out_rows is not None and out_rows != len(vocab):
        raise ModelError(
            f"bundle {folder}: vocabulary size {len(vocab)} ({VOCAB}) != the weights' output size "
            f"{out_rows} ({WEIGHTS}); the two files come from different models"
        )
    if arch.vocab_size != len(vocab):
        raise ModelError(
            f"bundle {folder}: vocabulary size {len(vocab)} ({VOCAB}) != architecture vocab_size "
            f"{arch.vocab_size} ({BUNDLE_JSON}); re-export the bundle"
        )
    decoding = meta.get("decoding", {})
    if not isinstance(decoding, dict):
        decoding = {}
    n_members = decoding.get("members", 1)
    if not isinstance(n_members, int) or isinstance(n_members, bool) or n_members < 1:
        raise ModelError(f"{meta_path}: decoding.members {n_members!r} is not a whole number >= 1")
    prefixes = ["", *(f"m{i}/" for i in range(1, n_members))]
    for prefix in prefixes:
        for key, shape in arch.shapes().items():
            name = prefix + key
            if name not in params:
                raise ModelError(
                    f"bundle weights {folder / WEIGHTS} lack array {name!r}; re-export the bundle"
                )
            if params[name].shape != shape:
                raise ModelError(
                    f"bundle weights {folder / WEIGHTS}: {name} has shape {params[name].shape}, "
                    f"{BUNDLE_JSON} says {shape}; re-export the bundle"
                )
            if not np.isfinite(params[name]).all():
                raise ModelError(
                    f"bundle weights {folder / WEIGHTS}: {name} holds NaN or infinite values; retrain"
                )
    members = [{k: params[p + k] for k in arch.shapes()} for p in prefixes[1:]]
    params = {k: params[k] for k in arch.shapes()}

    hashes = meta.get("files")
    if not isinstance(hashes, dict):
        raise ModelError(f"{meta_path} has no 'files' section with sha256 sums; re-export the bundle")
    for name in HASHED_FILES:
        want = hashes.get(name)
        got = _sha256(folder / name)
        if want != got:
            raise ModelError(
                f"bundle file {folder / name} has sha256 {got[:12]} but {BUNDLE_JSON} says "
                f"{str(want)[:12]}: the file was changed or swapped; restore it or re-export"
            )

    if encoder.onnx_sha256 and encoder_sha256 and encoder.onnx_sha256 != encoder_sha256:
        raise ModelError(
            f"bundle {folder} was trained on encoder {_short(encoder.onnx_sha256)} but the installed "
            f"encoder is {_short(encoder_sha256)}: run `drivecap encoder export` with the weights (and the "
            "encoder.delta, if any) it was trained with, or retrain"
        )
    return Bundle(
        folder,
        arch,
        params,
        vocab,
        encoder,
        pooling,
        float(decoding.get("length_alpha", 0.0)),
        bool(decoding.get("flip_ensemble", False)),
        meta,
        members,
    )


# ------------------------------------------------------------------------------------------------ save


def save_bundle(
    folder: Path,
    arch: Arch,
    params: dict[str, FloatArray],
    vocab: Vocab,
    encoder: EncoderRef,
    pooling: Pooling,
    card: str,
    length_alpha: float = 0.0,
    extra: dict[str, Any] | None = None,
    flip_ensemble: bool = False,
    members: list[dict[str, FloatArray]] | None = None,
) -> Path:
    """Writes a bundle (bundle.json last, so a half-written folder never validates) and checks it loads.

    ``members``: further decoders of the same architecture, averaged with ``params`` at decode time."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    every = [params, *(members or [])]
    for m in every:
        for key, shape in arch.shapes().items():
            if key not in m or tuple(m[key].shape) != shape:
                got = None if key not in m else tuple(m[key].shape)
                raise ValueError(f"parameter {key}: expected shape {shape}, got {got}")
    (folder / BUNDLE_JSON).unlink(missing_ok=True)
    arrays: dict[str, Any] = {}
    for i, m in enumerate(every):
        prefix = f"m{i}/" if i else ""
        arrays.update({prefix + k: np.asarray(m[k], np.float32) for k in arch.shapes()})
    with open(folder / WEIGHTS, "wb") as f:
        np.savez_compressed(f, **arrays)
    vocab.save(folder / VOCAB)
    (folder / CARD).write_text(card, encoding="utf-8")
    meta: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "encoder": asdict(encoder),
        "pooling": asdict(pooling),
        "architecture": asdict(arch),
        "decoding": {
            "length_alpha": length_alpha,
            "flip_ensemble": flip_ensemble,
            "members": len(every),
        },
        "files": {name: _sha256(folder / name) for name in HASHED_FILES},
    }
    if extra:
        meta["training"] = extra
    (folder / BUNDLE_JSON).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    load_bundle(folder)
    return folder


def random_params(arch: Arch, seed: int = 0, scale: float = 0.3) -> dict[str, FloatArray]:
    rng = np.random.default_rng(seed)
    params: dict[str, FloatArray] = {}
    for key, shape in arch.shapes().items():
        if key == "feat_mean":
            params[key] = np.zeros(shape, np.float32)
        elif key == "feat_std":
            params[key] = np.full(shape, 1.0, np.float32)
        else:
            fan_in = shape[-1] if len(shape) > 1 else 1
            params[key] = (rng.standard_normal(shape) * scale / np.sqrt(fan_in)).astype(np.float32)
    return params


RANDOM_WORDS = (
    "car",
    "truck",
    "person",
    "ahead",
    "close",
    "left",
    "right",
    "on",
    "the",
    "clear",
    "road",
    "curve",
    "bends",
    "in",
    "my",
    "lane",
    ",",
)


def write_random_bundle(folder: Path, encoder_sha256: str = "", seed: int = 0, kind: str = "merge") -> Path:
    """A small valid bundle with random weights (for tests of code that needs some decoder)."""
    vocab = Vocab.build([], extra=RANDOM_WORDS)
    pooling = Pooling(1, 3) if kind == "merge" else Pooling(7, 7)
    arch = Arch(kind, 512, pooling.cells, 16, 32, 24, 16, len(vocab))
    card = "# Random test bundle\n\nRandom weights: produces word salad. For tests only.\n"
    params = random_params(arch, seed, scale=1.5)
    params["b_out"][vocab.end_id] += 1.0  # so that random captions end before max_tokens now and then
    return save_bundle(
        Path(folder), arch, params, vocab, EncoderRef(onnx_sha256=encoder_sha256), pooling, card
    )
