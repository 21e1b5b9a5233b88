"""Captions for a driver: scene facts, the caption grammar, teacher labelling, augmentation and metrics.

The grammar and facts are pure Python (no cv2, no torch) so the runtime and evaluation can use them freely.
"""

from drivecap.captions.facts import ALL_KEYS, KINDS, Facts, FactsError, SceneObject
from drivecap.captions.grammar import VOCABULARY, mirror_caption, parse, render, simplify, tokenize

__all__ = [
    "ALL_KEYS",
    "KINDS",
    "VOCABULARY",
    "Facts",
    "FactsError",
    "SceneObject",
    "mirror_caption",
    "parse",
    "render",
    "simplify",
    "tokenize",
]
