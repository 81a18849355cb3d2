"""AdamW with linear warmup and cosine decay: the one optimiser recipe every lcm LightningModule uses."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import lightning as L
import torch


@dataclass(frozen=True)
class OptimConfig:
    """The optimiser of every lcm LightningModule (YAML: `model.optim: {lr: ..., warmup_steps: ...}`).

    Args:
        lr: peak AdamW learning rate.
        weight_decay: AdamW decay on matrices (not on norms and biases).
        betas: AdamW betas.
        warmup_steps: linear warmup, then cosine decay to `lr * min_lr_ratio` at the last step.
        min_lr_ratio: final learning rate as a share of `lr`.
    """

    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1

    @classmethod
    def of(cls, value: "OptimConfig | dict") -> "OptimConfig":
        """As given, or from a dict (a checkpoint's hyper-parameters; missing keys take the defaults, as the
        YAML's `model.optim` does). One set of defaults for every model."""
        return cls(**value) if isinstance(value, dict) else value

    def hparams(self) -> dict:
        return {**asdict(self), "betas": tuple(self.betas)}


def nest_legacy_optim(hparams: dict) -> dict:
    """Checkpoints written before `OptimConfig` stored lr, weight_decay, betas, warmup_steps and min_lr_ratio
    as top-level hyper-parameters: move them under "optim" so those checkpoints still load."""
    legacy = {k: hparams[k] for k in OptimConfig.__dataclass_fields__ if k in hparams}
    if not legacy or "optim" in hparams:
        return hparams
    return {**{k: v for k, v in hparams.items() if k not in legacy}, "optim": legacy}


def adamw_warmup_cosine(module: L.LightningModule, hp: OptimConfig) -> dict:
    """AdamW (decay on matrices only, fused on CUDA); linear warmup for `hp.warmup_steps`, then cosine
    decay to `hp.lr * hp.min_lr_ratio` at the last step."""
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    trainer = module._trainer
    fused = module.device.type == "cuda" or (trainer is not None and trainer.strategy.root_device.type == "cuda")
    opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), fused=fused or None)
    total = max(1, int(trainer.estimated_stepping_batches)) if trainer is not None else 1
    warmup = min(hp.warmup_steps, total // 2)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
