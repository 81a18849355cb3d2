"""A contrastive objective for concept models: InfoNCE of each prediction against candidate sentences.

MSE regresses to the conditional mean, which at a fork (the next step is one of several sentences) lands
between them -- on the majority sentence, or on none. InfoNCE instead scores the prediction against the gold
next sentence and the other candidates, with the softmax of the step policy (`lcm.step_policy`):

    loss = -log softmax_s( cos(pred, z_s) / temperature )[gold]

over the unique target sentences of the batch (a sentence that occurs at several positions is one candidate,
never its own negative) plus, optionally, `bank_negatives` training target sentences drawn at random.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from lcm.errors import LCMError
from lcm.step_policy import cosines


@dataclass(frozen=True)
class Contrastive:
    """InfoNCE beside (or instead of) the MSE of a concept model (`model.contrastive: {...}`).

    Args:
        weight: weight of the InfoNCE term.
        mse_weight: weight of the MSE term (0: InfoNCE alone; the prediction's length is then free, only its
            direction is trained -- what retrieval reads).
        temperature: softmax temperature of the training objective.
        bank_negatives: extra negatives per step drawn from the training target sentences (0: in-batch only).
    """

    weight: float = 1.0
    mse_weight: float = 1.0
    temperature: float = 0.1
    bank_negatives: int = 0

    def __post_init__(self) -> None:
        if self.weight < 0 or self.mse_weight < 0 or self.weight + self.mse_weight == 0:
            raise LCMError(f"contrastive: weights must be >= 0 and not both 0 (got weight={self.weight}, "
                           f"mse_weight={self.mse_weight})")
        if self.temperature <= 0 or self.bank_negatives < 0:
            raise LCMError(f"contrastive: temperature must be > 0 and bank_negatives >= 0 "
                           f"(got {self.temperature}, {self.bank_negatives})")

    @classmethod
    def of(cls, value) -> "Contrastive | None":
        return cls(**value) if isinstance(value, dict) else value

    def hparams(self) -> dict:
        return asdict(self)


def candidates(gold_ids: torch.Tensor, gold_vecs: torch.Tensor, bank_ids: torch.Tensor | None = None,
               bank_vecs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique candidate sentences and each target's index among them.

    gold_ids (N,) table rows of the gold next sentences, gold_vecs (N, D); bank_ids / bank_vecs (K,) / (K, D)
    extra negatives. Returns (U, D) candidate vectors and (N,) gold indices into them."""
    ids, vecs = gold_ids, gold_vecs
    if bank_ids is not None and len(bank_ids):
        ids, vecs = torch.cat([gold_ids, bank_ids]), torch.cat([gold_vecs, bank_vecs.to(gold_vecs.dtype)])
    unique, inverse = torch.unique(ids, return_inverse=True)  # (U,), (N + K,)
    first = torch.full((len(unique),), len(ids), device=ids.device, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(len(ids), device=ids.device), reduce="amin")
    return vecs[first], inverse[: len(gold_ids)]


def info_nce(pred: torch.Tensor, cand: torch.Tensor, gold: torch.Tensor, temperature: float,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean cross-entropy of the gold candidate. pred (N, D), cand (U, D), gold (N,), weights (N,)."""
    ce = F.cross_entropy(cosines(pred, cand) / temperature, gold, reduction="none")  # (N,)
    if weights is None:
        return ce.mean()
    return (ce * weights).sum() / weights.sum().clamp_min(1e-8)
