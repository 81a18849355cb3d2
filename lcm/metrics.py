"""Metrics the models log during training and the eval floor reuses: next-step scores, retrieval hits,
token entropy (definitions: docs/metrics.md)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def next_step_scores(pred: torch.Tensor, gold: torch.Tensor, prev: torch.Tensor,
                     mean: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-position cosines of the prediction and of two baselines to the gold next concept.

    pred, gold, prev: (N, D) raw (de-normalized) vectors; mean: (D,) mean training target.
    Baselines: repeat the previous concept ("copy last"); always predict the mean training target
    (what an MSE model without context converges to).
    """
    return {
        "cosine": F.cosine_similarity(pred, gold, dim=-1),
        "cosine_copy_last": F.cosine_similarity(prev, gold, dim=-1),
        "cosine_mean": F.cosine_similarity(mean.expand_as(gold), gold, dim=-1),
    }


def context_scores(pred: torch.Tensor, swapped: torch.Tensor, gold: torch.Tensor) -> dict[str, torch.Tensor]:
    """How much a prediction depends on its context, per position (a training-free, embedding-space proxy for the
    context-prediction mutual information the LCM paper reports). pred: (N, D) predictions from the true context;
    swapped: (N, D) predictions at the same positions from another document's context; gold: (N, D) true next concepts.
    ctx_shift = 1 - cos(pred, swapped): 0 when the context is ignored (the unconditional mean for every context);
    ctx_gain = cos(pred, gold) - cos(swapped, gold): how much of the prediction's fit the right context buys."""
    return {"ctx_shift": 1 - F.cosine_similarity(pred, swapped, dim=-1),
            "ctx_gain": F.cosine_similarity(pred, gold, dim=-1) - F.cosine_similarity(swapped, gold, dim=-1)}


def retrieval_hits(index, rows: np.ndarray, pred: np.ndarray, gold_rows: np.ndarray,
                   top: np.ndarray | None = None) -> np.ndarray:
    """Contrastive / retrieval accuracy per position: is the faiss top-1 of the prediction the gold sentence?

    index: faiss inner-product index over unit vectors of `rows` (table row ids); pred: (N, D); gold_rows: (N,).
    top: (N, k >= 1) ids the caller already searched for `pred` (then `index` is not searched again).
    """
    from lcm.retrieval import unit_rows

    if top is None:
        _, top = index.search(unit_rows(pred), 1)
    return rows[top[:, 0]] == gold_rows


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H_t = -sum_j p_tj log p_tj of softmax(logits) per position, in nats (temperature 1). (..., V) -> (...)

    `torch.distributions.Categorical` normalizes the logits and clamps -inf ones (masked tokens) to the
    smallest float, so they contribute 0."""
    # validate_args=False: NaN logits of a diverged model give NaN entropy (logged), not a ValueError, and no host sync
    return torch.distributions.Categorical(logits=logits.float(), validate_args=False).entropy()
