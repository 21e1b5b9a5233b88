"""Caption vocabulary: words <-> ids, with padding, start, end and unknown tokens."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from drivecap.errors import ModelError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)

# The caption grammar's tokens: lower-case words, and the comma as a token of its own between mentions.
_WORD = re.compile(r"[a-z]+|,")


def tokenize(text: str) -> list[str]:
    """Caption text -> tokens (same rule as :func:`drivecap.captions.grammar.tokenize`)."""
    return _WORD.findall(text.lower())


def detokenize(tokens: Iterable[str]) -> str:
    """Tokens back to caption text, spaced the way the grammar renders it ("car ahead , road curves left")."""
    return " ".join(tokens)


class Vocab:
    """An ordered word list; ids 0-3 are always ``<pad> <start> <end> <unk>``."""

    def __init__(self, words: Sequence[str]) -> None:
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {', '.join(SPECIALS)}")
        if len(set(words)) != len(words):
            raise ValueError("a vocabulary has a word twice")
        self.words: list[str] = words
        self.index: dict[str, int] = {w: i for i, w in enumerate(words)}

    pad_id = 0
    start_id = 1
    end_id = 2
    unk_id = 3

    @classmethod
    def build(cls, captions: Iterable[str], extra: Iterable[str] = ()) -> Vocab:
        """Every word of the captions (and ``extra``), sorted so that the same data gives the same ids."""
        seen = set(extra)
        for c in captions:
            seen.update(tokenize(c))
        seen.difference_update(SPECIALS)
        return cls([*SPECIALS, *sorted(seen)])

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.words == other.words

    def __hash__(self) -> int:
        return hash(tuple(self.words))

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """``<start> w1 .. wn <end>`` as ids; words beyond ``max_len`` tokens (start/end excluded) are cut."""
        ids = [self.index.get(w, self.unk_id) for w in tokenize(text)]
        if max_len is not None:
            ids = ids[:max_len]
        return [self.start_id, *ids, self.end_id]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of an id sequence: stops at ``<end>``, skips ``<start>``/``<pad>``."""
        out: list[str] = []
        for i in ids:
            if i == self.end_id:
                break
            if i in (self.start_id, self.pad_id):
                continue
            out.append(self.words[i] if 0 <= i < len(self.words) else UNK)
        return out

    def mirror_ids(self) -> list[int]:
        """For each id, the id of the word with left and right swapped (itself for every other word)."""
        swap = {"left": "right", "right": "left"}
        return [self.index.get(swap.get(w, w), i) for i, w in enumerate(self.words)]

    def to_json(self) -> str:
        return json.dumps({"format": "drivecap-vocab", "version": 1, "words": self.words}, indent=1)

    def save(self, path: Path) -> None:
        path.write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocab:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"vocabulary {path} does not exist; the bundle is incomplete") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(
                f"vocabulary {path} is not valid JSON ({exc.__class__.__name__}); restore it from the bundle"
            ) from None
        words = data.get("words") if isinstance(data, dict) else None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ModelError(f"vocabulary {path} has no list of words under 'words'")
        try:
            return cls(words)
        except ValueError as exc:
            raise ModelError(f"vocabulary {path}: {exc}") from None
