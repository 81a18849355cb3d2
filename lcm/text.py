"""Text -> steps: line or sentence splitting (offline, pysbd) and re-splitting at a character cap."""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

SplitMode = Literal["lines", "sentences", "auto"]  # auto: lines when the text has line breaks
_SPACE = re.compile(r"\s+")
# Where to cut an over-long sentence, best first: sentence ends, clause marks, then any space.
_CUTS = (re.compile(r"(?<=[.!?])\s+"), re.compile(r"(?<=[;:,])\s+"), re.compile(r"\s+"))


def clean(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


@lru_cache(maxsize=1)
def _segmenter():
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def split_sentences(text: str) -> list[str]:
    """Prose -> sentences with pysbd (rule-based, offline)."""
    text = clean(text)
    if not text:
        return []
    return [s for s in (clean(x) for x in _segmenter().segment(text)) if s]


def split_lines(text: str) -> list[str]:
    return [s for s in (clean(x) for x in text.splitlines()) if s]


def cap_length(sentence: str, max_chars: int) -> list[str]:
    """Re-split a sentence longer than `max_chars` at the best boundary found; never returns empty pieces.

    Encoders degrade on long inputs (and truncate them silently), so a 10,000-character "sentence"
    becomes ~40 concepts of <= max_chars instead of one embedding of its first 256 word pieces.
    Linear in the length: each cut only looks at the next `max_chars + 1` characters.
    """
    rest = clean(sentence)
    pieces: list[str] = []
    while len(rest) > max_chars:
        window = rest[: max_chars + 1]
        cut = None
        for pattern in _CUTS:  # last boundary within the cap that keeps the head not absurdly short
            points = [m.start() for m in pattern.finditer(window) if max_chars // 4 <= m.start() <= max_chars]
            if points:
                cut = points[-1]
                break
        cut = cut or max_chars  # no boundary: hard cut
        head, rest = rest[:cut].strip(), rest[cut:].strip()
        if head:
            pieces.append(head)
    if rest:
        pieces.append(rest)
    return pieces


def cap_all(sentences: list[str], max_chars: int) -> list[str]:
    """Every sentence re-split at `max_chars` (`cap_length`), in order."""
    return [p for s in sentences for p in cap_length(s, max_chars)]


def split_and_cap(text: str, max_chars: int, mode: SplitMode = "sentences") -> list[str]:
    """Text -> its lines or sentences, each re-split at `max_chars`: the one way raw text becomes concepts.
    "auto" splits by lines when the (stripped) text has a line break, else by sentences."""
    if mode == "auto":
        mode = "lines" if "\n" in text.strip() else "sentences"
    return cap_all(split_lines(text) if mode == "lines" else split_sentences(text), max_chars)
