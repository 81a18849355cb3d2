"""Kinds of positions in a concept sequence:
prompt ... [plan] steps [break] [plan] steps ... [end-of-text]   (plans and breaks only with planning)."""
from enum import IntEnum

DEFAULT_EOT_TEXT = "End of text."
# The break is a fixed sentence embedding, not a learned vector: it lives in the encoder's space like
# every other target (the MSE loss and the robust scaler treat it alike), costs no parameters, is
# detected at generation by cosine exactly like end-of-text, and is reproducible from its text alone.
DEFAULT_BREAK_TEXT = "Next paragraph."
PAD = -1


class ConceptType(IntEnum):
    PROMPT = 0  # context only: never a loss target
    STEP = 1
    EOT = 2
    PLAN = 3  # planning: a short description of the paragraph that follows
    BREAK = 4  # planning: end of a paragraph (not after the last one: end-of-text closes it)


TARGET_TYPES = (ConceptType.STEP, ConceptType.EOT, ConceptType.PLAN, ConceptType.BREAK)
TYPE_NAMES = {t: t.name.lower() for t in ConceptType}
