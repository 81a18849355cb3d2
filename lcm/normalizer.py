"""Per-dimension robust scaler for concept embeddings, stored in the checkpoint as buffers."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

IQR_TO_STD = 1.349  # IQR of a standard normal: scaling by IQR/1.349 gives unit std on Gaussian data


def robust_scale(x: torch.Tensor, iqr: torch.Tensor, eps: float) -> torch.Tensor:
    """(D,) scales: IQR / 1.349, or the standard deviation where the IQR is 0 -- a dimension that is one value for
    over half the data (a slot of the autoencoder's slots code past most sentences' ends is 0), which a scale of
    eps would blow up to ~1e6 -- floored at 1% of the median scale, so no dimension dominates the loss."""
    scale = iqr / IQR_TO_STD
    scale = torch.where(scale > eps, scale, x.std(0))  # (D,)
    positive = scale[scale > eps]
    floor = max(eps, 0.01 * float(positive.median())) if len(positive) else eps
    return scale.clamp_min(floor)


class RobustScaler(nn.Module):
    """x_norm = (x - median) / (IQR / 1.349), fitted on the training split's target embeddings (`robust_scale`
    where the IQR is 0)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> "RobustScaler":
        """x: (N, D) embeddings."""
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"need at least 2 embeddings of shape (N, D) to fit the scaler, got {tuple(x.shape)}")
        # numpy: torch.quantile refuses inputs above 16M elements
        q = torch.from_numpy(np.quantile(x.float().cpu().numpy(), [0.25, 0.5, 0.75], axis=0)).float()  # (3, D)
        self.center.copy_(q[1])
        self.scale.copy_(robust_scale(x.float().cpu(), q[2] - q[0], self.eps))
        self.fitted.fill_(True)
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.center.to(x.dtype)) / self.scale.to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.center.to(x.dtype)
