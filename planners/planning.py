"""The planning options of a corpus, in one object (`data.planning`; absent or null = no planning)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from lcm.concepts import DEFAULT_BREAK_TEXT
from lcm.errors import LCMError
from lcm.planners.paragraphs import Paragraph, group_by_similarity, group_fixed, is_section_header, structure
from lcm.planners.planner import ExtractivePlanner, Planner


@dataclass
class Planning:
    """Paragraph-level planning: a plan concept before each paragraph and a break concept between paragraphs.

    Args:
        planner: plan of a paragraph without a section header (`ExtractivePlanner`, the default when null: its
            most central step; `MeanPlanner`: the mean of its step embeddings).
        max_paragraph_steps / min_paragraph_steps: longer paragraphs are cut, shorter ones merged.
        flat_grouping: how a document with one paragraph and no headers is grouped into paragraphs:
            "none", "fixed" (`group_size` steps each) or "similarity" (a new paragraph where the cosine
            of consecutive steps drops below `similarity_threshold`).
        break_text: the sentence whose embedding is the break concept.
    """

    # null, not an instance, as the default: LightningCLI must be able to write the config back (config.yaml)
    planner: Planner | None = None
    max_paragraph_steps: int = 9
    min_paragraph_steps: int = 2
    flat_grouping: Literal["none", "fixed", "similarity"] = "none"
    group_size: int = 3
    similarity_threshold: float = 0.5
    break_text: str = DEFAULT_BREAK_TEXT

    def __post_init__(self) -> None:
        if self.planner is None:
            self.planner = ExtractivePlanner()
        if min(self.max_paragraph_steps, self.min_paragraph_steps, self.group_size) < 1:
            raise LCMError("planning: max_paragraph_steps, min_paragraph_steps and group_size must be >= 1")
        if self.flat_grouping not in ("none", "fixed", "similarity"):
            raise LCMError(f"planning.flat_grouping must be none, fixed or similarity, not {self.flat_grouping!r}")

    @property
    def planner_path(self) -> str:
        """Class path of the planner: recorded in checkpoints, so generation builds supplied plans alike."""
        return f"{type(self.planner).__module__}.{type(self.planner).__qualname__}"

    def paragraphs(self, raw: list[list[str]], vectors: Callable[[list[str]], np.ndarray]) -> list[Paragraph]:
        """A document's paragraphs of steps -> its planned paragraphs; a flat single-paragraph document is
        grouped as configured first. `vectors`: sentences -> their embeddings (N, D)."""
        if len(raw) == 1 and not is_section_header(raw[0][0]) and self.flat_grouping != "none":
            if self.flat_grouping == "fixed":
                raw = group_fixed(raw[0], self.group_size)
            else:
                raw = group_by_similarity(raw[0], vectors(raw[0]), self.similarity_threshold)
        return structure(raw, max_steps=self.max_paragraph_steps, min_steps=self.min_paragraph_steps)
