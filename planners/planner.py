"""Planners: the plan concept of a paragraph that has no section header."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


def _centroid_pick(emb: np.ndarray) -> int:
    """Row of the step closest (cosine) to the paragraph's mean embedding. emb: (N, D)."""
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    mean = unit.mean(0)
    return int(np.argmax(unit @ mean))


class Planner(ABC):
    """Maps a paragraph (steps and their embeddings) to a plan: display text and plan vector."""

    @abstractmethod
    def plan(self, steps: list[str], emb: np.ndarray) -> tuple[str, np.ndarray]:
        """steps: N texts; emb: (N, D) -> (plan text, plan vector (D,))."""


class ExtractivePlanner(Planner):
    """The plan is the paragraph's most central step (closest to its mean embedding): a real sentence,
    so the plan is readable and its vector lies on the encoder's manifold."""

    def plan(self, steps: list[str], emb: np.ndarray) -> tuple[str, np.ndarray]:
        i = _centroid_pick(emb)
        return steps[i], np.asarray(emb[i], dtype=np.float32)


class MeanPlanner(Planner):
    """The plan vector is the mean of the paragraph's step embeddings, rescaled to their mean norm
    (a point between the steps, not a sentence); its display text is the most central step."""

    def plan(self, steps: list[str], emb: np.ndarray) -> tuple[str, np.ndarray]:
        mean = emb.mean(0)
        target_norm = float(np.linalg.norm(emb, axis=1).mean())
        vec = mean * (target_norm / max(float(np.linalg.norm(mean)), 1e-12))
        return steps[_centroid_pick(emb)], vec.astype(np.float32)
