"""Sampling noise shared by every concept model."""
from __future__ import annotations

import torch


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Normal noise drawn from `generator` on its own device (CPU generators give the same numbers on any device)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
