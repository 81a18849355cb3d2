"""Evaluation: next-step metrics and baselines for concept models."""
from lcm.eval.metrics import next_step_scores, retrieval_hits

__all__ = ["next_step_scores", "retrieval_hits"]
