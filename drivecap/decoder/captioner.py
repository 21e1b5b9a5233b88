"""The captioner: a bundle's decoders over the encoder's feature map, frame and mirror view, to caption text."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from drivecap.config import Config
from drivecap.decoder.bundle import POOL_MODES, Bundle, load_bundle, resolve_bundle_dir
from drivecap.decoder.lstm import FloatArray, LSTMDecoder
from drivecap.decoder.vocab import detokenize
from drivecap.errors import ModelError

log = logging.getLogger(__name__)


def check_input_size(bundle: Bundle, height: int, width: int) -> None:
    """One line naming the bundle and both sizes when the encoder input is not what the decoder was trained on:
    conv5 maps of another input size still pool into the same cells, so the mismatch would otherwise pass
    silently and the captions would be wrong."""
    ref = bundle.encoder
    if (ref.input_height, ref.input_width) != (height, width):
        raise ModelError(
            f"caption bundle {bundle.folder} was trained on {ref.input_height}x{ref.input_width} encoder input, "
            f"but encoder.input_height x encoder.input_width is {height}x{width}: set them to "
            f"{ref.input_height}x{ref.input_width} or use a bundle trained at {height}x{width}"
        )


@dataclass(frozen=True)
class Caption:
    """One decoded caption. ``score`` is the sum of the tokens' log-probabilities (end token included)."""

    text: str
    tokens: tuple[str, ...]
    score: float
    decode_ms: float


class Captioner:
    """A loaded bundle ready to caption conv5 maps."""

    def __init__(
        self, bundle: Bundle, beam_width: int = 1, max_tokens: int = 16, mirror_view: bool = False
    ) -> None:
        self.bundle = bundle
        self.beam_width = beam_width
        self.max_tokens = max_tokens
        #: callers should encode the mirrored frame too and pass its map to :meth:`caption` (``mirror=``)
        self.mirror_view = mirror_view
        self.flip_ensemble = bundle.flip_ensemble
        self.decoder = LSTMDecoder(
            bundle.arch,
            bundle.params,
            bundle.vocab.start_id,
            bundle.vocab.end_id,
            bundle.length_alpha,
            np.array(bundle.vocab.mirror_ids()),
            bundle.members,
        )

    @classmethod
    def load(cls, cfg: Config, encoder_sha256: str = "") -> Captioner:
        """The bundle named by ``cfg.decoder.bundle``; checked against the installed encoder's sha256."""
        folder = resolve_bundle_dir(cfg.decoder.bundle, cfg.base_dir)
        if cfg.decoder.bundle in ("", "default") and not folder.is_dir():
            raise ModelError(
                f"the default caption bundle is not installed at {folder}; reinstall drivecap or "
                "set decoder.bundle to a folder made by `drivecap train`"
            )
        bundle = load_bundle(folder, encoder_sha256=encoder_sha256)
        check_input_size(bundle, cfg.encoder.input_height, cfg.encoder.input_width)
        log.info(
            "caption bundle %s: %s decoder, %d words, pooling %dx%d %s",
            folder,
            bundle.arch.kind,
            len(bundle.vocab),
            bundle.pooling.rows,
            bundle.pooling.cols,
            bundle.pooling.mode,
        )
        return cls(
            bundle,
            beam_width=cfg.decoder.beam_width,
            max_tokens=cfg.decoder.max_tokens,
            mirror_view=cfg.decoder.mirror_view,
        )

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        beam_width: int = 1,
        max_tokens: int = 16,
        encoder_sha256: str = "",
        mirror_view: bool = False,
    ) -> Captioner:
        return cls(load_bundle(folder, encoder_sha256), beam_width, max_tokens, mirror_view)

    def cells(self, fmap: FloatArray) -> FloatArray:
        """(C, h, w) conv5 map -> (cells, C) as the bundle's pooling says."""
        arch = self.bundle.arch
        pool = self.bundle.pooling
        if fmap.ndim != 3 or pooled_channels(fmap.shape[0], pool.mode) != arch.feature_dim:
            raise ModelError(
                f"the caption bundle {self.bundle.name} reads conv5 maps of "
                f"{arch.feature_dim // pooled_channels(1, pool.mode)} channels "
                f"({pool.mode} pooling), "
                f"got an array of shape {tuple(fmap.shape)}: use the encoder it was trained on"
            )
        return pool_cells(fmap, pool.rows, pool.cols, pool.mode)

    def caption(
        self, fmap: FloatArray, beam_width: int | None = None, mirror: FloatArray | None = None
    ) -> Caption:
        """Caption of one conv5 map. ``mirror`` = the encoder's map of the horizontally mirrored frame.

        With ``mirror`` the decoder averages its word log-probabilities on the frame with those on the mirrored
        frame read with left and right swapped (the mirror view). The mirrored frame, decoded the same way,
        has exactly the two views swapped, so it always gets the mirrored caption. Without it, a flip-ensemble
        bundle uses the horizontally flipped map as a stand-in for the mirrored frame's map, which VGG16 (not
        mirror-equivariant) only approximates."""
        t0 = time.perf_counter()
        cells = self.cells(fmap)
        if mirror is not None:
            c = self.caption_cells(cells, beam_width, mirror=self.cells(mirror))
        else:
            flipped = self.cells(np.ascontiguousarray(fmap[:, :, ::-1])) if self.flip_ensemble else None
            c = self.caption_cells(cells, beam_width, flipped)
        return replace(c, decode_ms=(time.perf_counter() - t0) * 1e3)  # pooling included

    def caption_cells(
        self,
        cells: FloatArray,
        beam_width: int | None = None,
        flipped: FloatArray | None = None,
        mirror: FloatArray | None = None,
    ) -> Caption:
        """Like :meth:`caption` on already pooled cells (evaluation reads them from the feature cache);
        ``flipped`` = cells of the horizontally flipped map, used when the bundle asks for the flip ensemble,
        or ``mirror`` = cells of the mirrored frame's map (the mirror view, used whenever given)."""
        t0 = time.perf_counter()
        width = self.beam_width if beam_width is None else beam_width
        second = mirror if mirror is not None else (flipped if self.flip_ensemble else None)
        hyp = self.decoder.beam(cells, width, self.max_tokens, second)
        tokens = tuple(self.bundle.vocab.decode(hyp.ids))
        return Caption(detokenize(tokens), tokens, hyp.logprob, (time.perf_counter() - t0) * 1e3)


def pooled_channels(channels: int, mode: str) -> int:
    """Channels of one cell pooled by ``mode`` from a map of ``channels``."""
    return 2 * channels if mode == "avgmax" else channels


def pool_cells(fmap: FloatArray, rows: int, cols: int, mode: str = "avg") -> FloatArray:
    """Pool a (C, h, w) map over a rows x cols grid -> (rows * cols, C'), row-major cells (``POOL_MODES``)."""
    from drivecap.encoders.base import grid_bounds, pool_grid

    c = fmap.shape[0]
    if mode == "avg":
        if (rows, cols) == fmap.shape[1:]:
            return np.ascontiguousarray(fmap.reshape(c, -1).T, dtype=np.float32)
        return pool_grid(fmap, rows, cols).reshape(rows * cols, c)
    if mode not in POOL_MODES:
        raise ModelError(f"unknown cell pooling {mode!r}; use one of {', '.join(POOL_MODES)}")
    _, h, w = fmap.shape
    out = []
    for r0, r1 in grid_bounds(h, rows):
        for c0, c1 in grid_bounds(w, cols):
            part = fmap[:, r0:r1, c0:c1].reshape(c, -1).astype(np.float32)
            if mode == "max":
                out.append(part.max(axis=1))
            elif mode == "gem3":
                out.append(np.cbrt((np.maximum(part, 0.0) ** 3).mean(axis=1)))
            else:
                out.append(np.concatenate([part.mean(axis=1), part.max(axis=1)]))
    return np.stack(out).astype(np.float32)
