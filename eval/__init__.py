"""Evaluation: baselines and metrics for concept models."""
