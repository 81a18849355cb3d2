"""Kinds of positions in a concept sequence: prompt ... steps ... end-of-text."""
from enum import IntEnum

DEFAULT_EOT_TEXT = "End of text."
PAD = -1


class ConceptType(IntEnum):
    PROMPT = 0  # context only: never a loss target
    STEP = 1
    EOT = 2


TARGET_TYPES = (ConceptType.STEP, ConceptType.EOT)
