"""The unit of data: one reasoning example as concepts (sentences)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Document:
    """prompt sentences, then paragraphs of steps; an end-of-text concept is appended when encoded."""

    prompt: list[str]
    paragraphs: list[list[str]]
    answer: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def steps(self) -> list[str]:
        return [s for p in self.paragraphs for s in p]

    @property
    def prompt_text(self) -> str:
        return " ".join(self.prompt)

    def is_blank(self) -> bool:
        return not self.prompt or not self.steps
