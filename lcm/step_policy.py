"""The concept model's step distribution: a categorical policy over a sentence bank.

A concept model predicts one vector per step; to speak of its *entropy* (and later to sample and train it with
RL) the prediction μ is read as a distribution over the candidate sentences z_s of a bank:

    p(s | context) = softmax_s( cos(μ, z_s) / τ )

the same softmax that retrieval's argmax and a contrastive (InfoNCE) objective use. τ is not a free knob: it is
fitted on held-out data by the negative log-likelihood of the gold next sentence (`fit_temperature`), so the
entropy is that of the best-calibrated policy of this family, in nats per step -- comparable with a token
model's entropy summed over the tokens of a step ("line entropy", `lcm.eval.reasoning_metrics`).
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

MIN_TAU, MAX_TAU = 1e-4, 1e2


def cosines(pred: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(n, D) predictions x (N, D) bank vectors -> (n, N) cosines."""
    return F.normalize(pred.float(), dim=-1) @ F.normalize(bank.float(), dim=-1).T


def step_log_probs(pred: torch.Tensor, bank: torch.Tensor, tau: float) -> torch.Tensor:
    """(n, N) log p(s | context) of every bank sentence."""
    return torch.log_softmax(cosines(pred, bank) / tau, dim=-1)


def chunked_log_probs(pred: torch.Tensor, bank: torch.Tensor, tau: float,
                      chunk: int = 1024) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, (c, N) log-probs of those predictions over the bank), `chunk` predictions at a time: never an n x N
    matrix."""
    for start in range(0, len(pred), chunk):
        rows = slice(start, start + chunk)
        yield rows, step_log_probs(pred[rows], bank, tau)


def step_entropy(pred: torch.Tensor, bank: torch.Tensor, tau: float, chunk: int = 1024) -> torch.Tensor:
    """(n,) entropy in nats of each prediction's policy over the bank."""
    out = [-(logp.exp() * logp).sum(-1) for _, logp in chunked_log_probs(pred, bank, tau, chunk)]
    return torch.cat(out) if out else torch.zeros(0)


def step_nll_entropy(pred: torch.Tensor, candidates: torch.Tensor, gold: torch.Tensor, tau: float,
                     chunk: int = 1024) -> tuple[float, float]:
    """(mean NLL of the gold candidates, mean entropy), both in nats, under temperature `tau`: pred (n, D),
    candidates (N, D), gold (n,) each row's gold index; one pass over the chunks."""
    nll = entropy = 0.0
    for rows, logp in chunked_log_probs(pred, candidates, tau, chunk):
        nll -= float(logp.gather(1, gold[rows].long()[:, None]).sum())
        entropy -= float((logp.exp() * logp).sum())
    n = max(len(pred), 1)
    return nll / n, entropy / n


def step_nll(pred: torch.Tensor, candidates: torch.Tensor, gold: torch.Tensor, tau: float, chunk: int = 1024) -> float:
    """Mean negative log-likelihood (nats) of the gold candidates under temperature `tau` (`step_nll_entropy`)."""
    return step_nll_entropy(pred, candidates, gold, tau, chunk)[0]


def fit_temperature(pred: torch.Tensor, candidates: torch.Tensor, gold: torch.Tensor, iters: int = 32) -> float:
    """τ minimizing the mean NLL of the gold candidates (each row's gold must be among `candidates`).

    The NLL is convex in β = 1/τ (its derivative, mean(E_p[cos] - cos_gold), increases with β), so bisection
    on the derivative finds the optimum; it is clipped to [MIN_TAU, MAX_TAU] (a gold that is always the
    nearest candidate pushes β to infinity). 32 halvings of the six-decade range fix τ to 4e-7 relative.
    Callers bound n (validation fits on at most 1,024 predictions)."""
    cos = cosines(pred, candidates)  # (n, N)
    gold = gold.long()
    target = cos.gather(1, gold[:, None]).mean()

    def slope(beta: float) -> float:  # d NLL / d beta
        return float((torch.softmax(beta * cos, -1) * cos).sum(-1).mean() - target)

    lo, hi = 1.0 / MAX_TAU, 1.0 / MIN_TAU  # bisection in log beta
    if slope(hi) <= 0:
        return MIN_TAU
    if slope(lo) >= 0:
        return MAX_TAU
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return 1.0 / math.sqrt(lo * hi)
