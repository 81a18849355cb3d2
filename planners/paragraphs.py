"""Paragraph structure from step-by-step text: blank lines and numbered / headed sections start paragraphs."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lcm.retrieval import unit_rows

# "1. Initial amounts:", "Step 2:", "## Costs", "Part B)" -- a line that opens a section.
# ("#### 42", the GSM answer line, is not a markdown header: a header starts with a letter.)
SECTION_HEADER = re.compile(
    r"^\s*(?:#{1,6}\s+[^\W\d]|(?:step|part|section)\s+\w+\s*[:.)]|\d+[.)]\s+[^:]{1,60}:\s*$|[A-Z][^.!?]{0,60}:\s*$)",
    re.IGNORECASE,
)


def is_section_header(line: str) -> bool:
    return bool(SECTION_HEADER.match(line))


def split_paragraphs(text: str) -> list[list[str]]:
    """Text -> paragraphs of non-empty stripped lines.

    A paragraph ends at a blank line, and a new one starts at a section header (which stays as the
    paragraph's first line). Empty paragraphs are dropped; text with no breaks is one paragraph.
    """
    paragraphs: list[list[str]] = [[]]
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            paragraphs.append([])
        elif is_section_header(line) and paragraphs[-1]:
            paragraphs.append([line])
        else:
            paragraphs[-1].append(line)
    return [p for p in paragraphs if p]


@dataclass
class Paragraph:
    """Steps of one paragraph; `header` is its section header when the text has one (used as its plan)."""

    steps: list[str]
    header: str | None = None


def _split_header(lines: list[str]) -> Paragraph:
    if len(lines) > 1 and is_section_header(lines[0]):
        return Paragraph(steps=lines[1:], header=lines[0])
    return Paragraph(steps=list(lines))


def _chunks(items: list, n_chunks: int) -> list[list]:
    """Split into n_chunks near-equal consecutive chunks (sizes differ by at most one)."""
    size, extra = divmod(len(items), n_chunks)
    out, start = [], 0
    for i in range(n_chunks):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def structure(paragraphs: list[list[str]], max_steps: int = 9, min_steps: int = 2) -> list[Paragraph]:
    """Raw paragraphs (header as first line) -> planned paragraphs of 1..max_steps steps.

    - A paragraph whose first line is a section header keeps it as `header`, not as a step.
    - A header-only paragraph becomes the header of the next paragraph when that one has none;
      otherwise (or at the end) its line is an ordinary one-step paragraph.
    - Paragraphs longer than `max_steps` are cut into near-equal parts (the header goes to the first).
    - Paragraphs shorter than `min_steps` without a header are merged into the previous one when that
      keeps it within `max_steps` (the LCM paper: paragraphs of fewer than 10 sentences, tiny ones merged).
    - Empty paragraphs vanish; no paragraphs in, none out.
    """
    if max_steps < 1 or min_steps < 1:
        raise ValueError(f"max_steps={max_steps} and min_steps={min_steps} must be >= 1")
    raw = [p for p in paragraphs if p]
    parsed: list[Paragraph] = []
    pending_header: str | None = None
    for i, lines in enumerate(raw):
        header_only = len(lines) == 1 and is_section_header(lines[0])
        if pending_header is not None and header_only:  # two headers in a row: the first stands alone
            parsed.append(Paragraph(steps=[pending_header]))
            pending_header = None
        if header_only:
            nxt = raw[i + 1] if i + 1 < len(raw) else None
            if nxt is not None and not (len(nxt) > 1 and is_section_header(nxt[0])):
                pending_header = lines[0]
            else:
                parsed.append(Paragraph(steps=list(lines)))
            continue
        para = _split_header(lines)
        if pending_header is not None:
            para.header, pending_header = pending_header, None
        parsed.append(para)
    capped: list[Paragraph] = []
    for para in parsed:
        parts = _chunks(para.steps, -(-len(para.steps) // max_steps))
        capped.extend(Paragraph(steps=part, header=para.header if j == 0 else None) for j, part in enumerate(parts))
    merged: list[Paragraph] = []
    for para in capped:
        prev = merged[-1] if merged else None
        if (prev is not None and para.header is None and len(para.steps) < min_steps
                and len(prev.steps) + len(para.steps) <= max_steps):
            prev.steps.extend(para.steps)
        else:
            merged.append(para)
    return merged


def group_fixed(steps: list[str], size: int) -> list[list[str]]:
    """A flat step list -> paragraphs of `size` steps (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"group size must be >= 1, got {size}")
    return [steps[i:i + size] for i in range(0, len(steps), size)]


def similarity_breaks(emb: np.ndarray, threshold: float) -> list[int]:
    """Indices i where a new paragraph starts because cos(step i-1, step i) < threshold. emb: (N, D)."""
    unit = unit_rows(emb)
    cos = (unit[1:] * unit[:-1]).sum(axis=1)  # (N-1,)
    return [i + 1 for i in np.flatnonzero(cos < threshold).tolist()]


def group_by_similarity(steps: list[str], emb: np.ndarray, threshold: float) -> list[list[str]]:
    """A flat step list -> paragraphs split where consecutive steps change topic (embedding cosine drop)."""
    cuts = [0, *similarity_breaks(emb, threshold), len(steps)]
    return [steps[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
