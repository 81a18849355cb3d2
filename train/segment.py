"""Text -> steps: line or sentence splitting (offline, pysbd) and re-splitting at a character cap."""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

SplitMode = Literal["lines", "sentences"]
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
    """
    sentence = clean(sentence)
    if len(sentence) <= max_chars:
        return [sentence] if sentence else []
    for cut in _CUTS:
        # last boundary that keeps the head within the cap (and not absurdly short)
        points = [m.start() for m in cut.finditer(sentence) if max_chars // 4 <= m.start() <= max_chars]
        if points:
            head, tail = sentence[:points[-1]], sentence[points[-1]:]
            return cap_length(head, max_chars) + cap_length(tail, max_chars)
    return [sentence[:max_chars]] + cap_length(sentence[max_chars:], max_chars)  # no boundary: hard cut


def segment(text: str, mode: SplitMode, max_chars: int) -> list[str]:
    pieces = split_lines(text) if mode == "lines" else split_sentences(text)
    return [p for s in pieces for p in cap_length(s, max_chars)]
