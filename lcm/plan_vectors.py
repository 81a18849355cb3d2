"""Plan-vector rules: how a paragraph's step embeddings become its plan concept.

The planners (`lcm.planners`, a higher floor) build training plans with these rules, and generation
turns a user's plan text into a plan concept with the same rule, picked by the planner a checkpoint
records (`meta["planner"]`), so a supplied plan is fed to the model the way training fed plans.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from lcm.errors import LCMError
from lcm.retrieval import unit_rows

PlanVectorRule = Callable[[np.ndarray], np.ndarray]  # (N, D) step embeddings -> (D,) plan vector, float32


def centroid_pick(emb: np.ndarray) -> int:
    """Row of the step closest (cosine) to the paragraph's mean unit embedding. emb: (N, D)."""
    unit = unit_rows(emb)
    return int(np.argmax(unit @ unit.mean(0)))


def extractive_vector(emb: np.ndarray) -> np.ndarray:
    """The most central step's own embedding (a real sentence on the encoder's manifold). (N, D) -> (D,)"""
    return np.asarray(emb[centroid_pick(emb)], dtype=np.float32)


def mean_rescaled(emb: np.ndarray) -> np.ndarray:
    """The mean of the step embeddings, rescaled to their mean norm (a point between the steps). (N, D) -> (D,)"""
    mean = emb.mean(0)
    target_norm = float(np.linalg.norm(emb, axis=1).mean())
    return (mean * (target_norm / max(float(np.linalg.norm(mean)), 1e-12))).astype(np.float32)


# planner class name -> its rule. A planner without an entry here cannot turn supplied plan text into its
# plan concepts at generation time (generation refuses supplied plans for it rather than guess).
PLAN_VECTOR_RULES: dict[str, PlanVectorRule] = {"ExtractivePlanner": extractive_vector, "MeanPlanner": mean_rescaled}
DEFAULT_PLANNER = "ExtractivePlanner"  # what checkpoints that do not record their planner were trained with


def planner_name(record: str | dict | None) -> str:
    """Class name of the planner a checkpoint records (`meta["planner"]`: its class path, or a config
    {"class_path": ..., "init_args": ...}); no record means the default planner (`ExtractivePlanner`)."""
    if isinstance(record, dict):
        record = record.get("class_path")
    return str(record).rpartition(".")[2] if record else DEFAULT_PLANNER


def plan_vector_rule(record: str | dict | None) -> PlanVectorRule:
    """The vector rule of the recorded planner, or one clear error for a planner this floor does not know."""
    name = planner_name(record)
    if record is None:
        warnings.warn(f"the checkpoint does not record its planner (written before planners were recorded): supplied "
                      f"plans are built as {DEFAULT_PLANNER} plans; a model trained with MeanPlanner (every shipped "
                      "planning config) expects mean vectors", stacklevel=3)
    if name not in PLAN_VECTOR_RULES:
        raise LCMError(f"the checkpoint's planner {name!r} has no plan-vector rule (known: "
                       f"{', '.join(sorted(PLAN_VECTOR_RULES))}); supplied plans cannot be turned into its plan concepts")
    return PLAN_VECTOR_RULES[name]
