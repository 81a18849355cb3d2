"""Sampling noise shared by every concept model, and the per-call sampling settings of each model kind.

Each kind of concept model has its own settings class listing the options that change its output; an
option it would silently ignore (Base-LCM's `noise` on a diffusion model, DDIM `ddim_steps` / `guidance`
on Base-LCM) is refused with one line naming the option and the model kind. A model class names its
settings class in its `sampling_settings` attribute (Base-LCM's when it has none).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch

from lcm.errors import LCMError


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Normal noise drawn from `generator` on its own device (CPU generators give the same numbers on any device)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


@dataclass(frozen=True)
class SamplingSettings:
    """Per-call sampling options of one model kind; subclasses declare them as fields (None = the model's default)."""

    kind: ClassVar[str] = "concept"  # the model kind, as messages name it

    @classmethod
    def from_options(cls, **options) -> "SamplingSettings":
        """Settings from keyword options, where None means "not given"; a given option this kind does not use
        raises `LCMError`, as does an invalid value."""
        own = [f.name for f in fields(cls)]
        for name, value in options.items():
            if value is not None and name not in own:
                raise LCMError(f"sampling option {name!r} does nothing for a {cls.kind} model "
                               f"(its options: {', '.join(own) or 'none'})")
        try:
            return cls(**{k: v for k, v in options.items() if k in own and v is not None})
        except (TypeError, ValueError) as e:
            raise LCMError(f"{cls.kind} sampling settings: {e}") from e

    def model_kwargs(self) -> dict:
        """The keywords for the model's `next_concept` / `denoiser_evals` (options left at None are omitted)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class BaseLCMSampling(SamplingSettings):
    """Base-LCM is deterministic; `noise` > 0 samples by adding N(0, noise^2) to each prediction in normalized space."""

    kind: ClassVar[str] = "Base-LCM"
    noise: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0, not {self.noise}")


PLAN_SOURCES = ("sampled", "regressed")  # where a diffusion model's plans come from (`DiffusionConfig.plan_source`)


@dataclass(frozen=True)
class DiffusionSampling(SamplingSettings):
    """Diffusion LCM overrides of the checkpoint's DDIM settings (None = the checkpoint's)."""

    kind: ClassVar[str] = "diffusion"
    guidance: float | None = None  # classifier-free guidance scale; 1 = off
    ddim_steps: int | None = None  # DDIM denoising steps per predicted concept
    eta: float | None = None  # DDIM stochasticity: 0 deterministic given the starting noise, 1 DDPM-like
    plan_source: str | None = None  # planning: "sampled" plans, or "regressed" by the context head (`context_loss`)

    def __post_init__(self) -> None:
        if self.guidance is not None and not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ValueError(f"guidance must be a finite number >= 0, not {self.guidance}")
        if self.ddim_steps is not None and (isinstance(self.ddim_steps, bool) or not isinstance(self.ddim_steps, int)
                                            or self.ddim_steps < 1):
            raise ValueError(f"ddim_steps must be an integer >= 1, not {self.ddim_steps!r}")
        if self.eta is not None and not (math.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"eta must be a finite number >= 0, not {self.eta}")
        if self.plan_source is not None and self.plan_source not in PLAN_SOURCES:
            raise ValueError(f"plan_source must be one of {PLAN_SOURCES}, not {self.plan_source!r}")


def sampling_options(model) -> set[str]:
    """The per-call sampling options a concept model takes (Base-LCM: noise; diffusion: guidance, ddim_steps, eta,
    plan_source)."""
    return {f.name for f in fields(type(model).sampling_settings)}


def sampling_settings(model, **options) -> SamplingSettings:
    """`options` checked against the settings class a concept model names (`sampling_settings`)."""
    return type(model).sampling_settings.from_options(**options)
