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


def layout_mismatch(saved: dict, planning: bool, eot_text: str, break_text: str | None, what: str) -> str:
    """How a saved sequence layout (a checkpoint's or a prepared store's metadata: planning, eot_text,
    break_text) differs from the data config's, as "key: <what> X vs config Y; ..."; "" when they agree."""
    def layout(plan, eot, brk) -> dict:
        return {"planning": bool(plan), "eot_text": eot, "break_text": brk if plan else None}

    old = layout(saved.get("planning"), saved.get("eot_text", eot_text), saved.get("break_text"))
    new = layout(planning, eot_text, break_text)
    return "; ".join(f"{k}: {what} {old[k]!r} vs config {new[k]!r}" for k in new if old[k] != new[k])
TYPE_NAMES = {t: t.name.lower() for t in ConceptType}
