"""AdamW with linear warmup and cosine decay: the one optimiser recipe every lcm LightningModule uses."""
from __future__ import annotations

import math

import lightning as L
import torch


def adamw_warmup_cosine(module: L.LightningModule, hp) -> dict:
    """AdamW (decay on matrices only, fused on CUDA); linear warmup for `hp.warmup_steps`, then cosine
    decay to `hp.lr * hp.min_lr_ratio` at the last step. `hp`: lr, weight_decay, betas, warmup_steps,
    min_lr_ratio."""
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
