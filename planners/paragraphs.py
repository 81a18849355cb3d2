"""Paragraph structure from step-by-step text: blank lines and numbered / headed sections start paragraphs."""
from __future__ import annotations

import re

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
