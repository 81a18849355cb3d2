"""Planners: the plan concept of a paragraph that has no section header.

The vector rules live on the core floor (`lcm.plan_vectors`): generation turns a supplied plan into a plan
concept with the same rule, picked by the planner's class name that the checkpoint records."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from lcm.plan_vectors import centroid_pick, extractive_vector, mean_rescaled


class Planner(ABC):
    """Maps a paragraph (steps and their embeddings) to a plan: display text and plan vector."""

    @abstractmethod
    def plan(self, steps: list[str], emb: np.ndarray) -> tuple[str, np.ndarray]:
        """steps: N texts; emb: (N, D) -> (plan text, plan vector (D,))."""


class ExtractivePlanner(Planner):
    """The plan is the paragraph's most central step (closest to its mean embedding): a real sentence,
    so the plan is readable and its vector lies on the encoder's manifold."""

    def plan(self, steps: list[str], emb: np.ndarray) -> tuple[str, np.ndarray]:
        return steps[centroid_pick(emb)], extractive_vector(emb)


class MeanPlanner(Planner):
    """The plan vector is the mean of the paragraph's step embeddings, rescaled to their mean norm
    (a point between the steps, not a sentence); its display text is the most central step."""

    def plan(self, steps: list[str], emb: np.ndarray) -> tuple[str, np.ndarray]:
        return steps[centroid_pick(emb)], mean_rescaled(emb)
