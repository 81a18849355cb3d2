"""Metrics the models log during training and the eval floor reuses: next-step scores, retrieval hits,
token entropy, effective rank of hidden states and the Vendi score of samples (definitions: docs/metrics.md)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lcm.retrieval import unit_rows


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


def effective_rank(h: np.ndarray) -> float:
    """Roy & Vetterli effective rank of (T, d) states as the effective-rank RL paper's code computes it (VERL,
    `metrics_utils.compute_single_effective_rank`): centre over positions, singular values s, p_i = s_i / sum s,
    exp(-sum p_i log p_i). 1 for states on a line or all identical (VERL's exp(0)), min(T - 1, d) at most --
    so compare it only across equal numbers of units (`step_boundary_states`)."""
    x = np.asarray(h, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        return float("nan")
    s = np.linalg.svd(x - x.mean(0, keepdims=True), compute_uv=False)
    s = s[s > s.max() * 1e-12] if s.max() > 0 else s[:0]
    if not len(s):
        return 1.0  # every position identical
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def effective_rank_dynamics(h: np.ndarray, stride: int = 1) -> tuple[float, float]:
    """(ERV, ERA): the first and second "differences" of the effective rank along a response, as VERL's code
    defines them (`_calculate_diffs_batched_single_device`): for prefixes of t = stride, 2*stride, ... <= T
    units, ER_t = effective_rank(h[:t]) (1 for a single unit); diff_t = ER_t - mean(ER of the earlier
    prefixes), diff2_t = diff_t - diff_(t-1); ERV = mean diff, ERA = mean diff2 (nan when undefined)."""
    x = np.asarray(h, dtype=np.float64)
    ranks = [1.0 if t < 2 else effective_rank(x[:t]) for t in range(stride, len(x) + 1, stride)]
    diffs = [r - float(np.mean(ranks[:i])) for i, r in enumerate(ranks) if i > 0]
    diff2 = [b - a for a, b in zip(diffs, diffs[1:])]
    return (float(np.mean(diffs)) if diffs else float("nan"), float(np.mean(diff2)) if diff2 else float("nan"))


def vendi_score(emb: np.ndarray) -> float:
    """Vendi score (Friedman & Dieng) of k samples (k, D) on *centred* unit embeddings (docs/metrics.md):
    unit-normalize the rows, centre them over the k samples, K = X X^T, then exp(entropy of eig(K) / tr(K)).

    Centring removes the direction every sentence embedding shares, which makes raw cosines of unrelated
    sentences high. Like the effective rank it counts directions of variation: 1 when the samples vary along
    one direction (or not at all), k - 1 at most (k centred points span at most k - 1 dimensions)."""
    x = unit_rows(emb).astype(np.float64)
    x -= x.mean(0, keepdims=True)
    lam = np.linalg.eigvalsh(x @ x.T)
    lam = lam[lam > 1e-12]
    if not len(lam):
        return 1.0  # every sample the same direction
    p = lam / lam.sum()
    return float(np.exp(-(p * np.log(p)).sum()))
