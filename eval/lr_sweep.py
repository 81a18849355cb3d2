"""A learning rate per system, chosen on validation, so no system is compared at a learning rate tuned for another.

Every system of a comparison is trained once per value of `lr_sweep` (the first seed, the comparison's budget),
and keeps the value with the lowest validation loss (the best epoch of each run: its own objective, which is
comparable across learning rates of one system, never across systems). The seed runs then use that value; the
first seed's run at the chosen value is the sweep's own run, reused.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path


def lr_override(lr: float) -> list[str]:
    """The `lcm fit` arguments that set the learning rate of any model class (concept or token)."""
    return ["--model.init_args.optim.lr", repr(float(lr))]


def validation_curve(metrics_csv: Path) -> tuple[list[int], list[float]]:
    """(optimizer step, val/loss) of every validation of a run, in order."""
    rows = [r for r in csv.DictReader(open(metrics_csv)) if r.get("val/loss")]
    return [int(r["step"]) for r in rows], [float(r["val/loss"]) for r in rows]


def best_validation_loss(run: Path) -> float:
    """The lowest val/loss of a run (nan if it never validated or diverged to nan everywhere)."""
    _, losses = validation_curve(run / "metrics.csv")
    finite = [v for v in losses if math.isfinite(v)]
    return min(finite) if finite else float("nan")


def choose(losses: dict[float, float]) -> float:
    """The learning rate with the lowest finite validation loss (the smallest value on a tie); all nan: the
    smallest value (the safest)."""
    finite = {lr: v for lr, v in losses.items() if math.isfinite(v)}
    return min(finite, key=lambda lr: (finite[lr], lr)) if finite else min(losses)


def sweep(systems: dict[str, str], values: list[float], seed: int, root: Path, overrides: list[str]) -> dict:
    """{system name: training config} -> {system: {"val_loss": {lr: best val/loss}, "chosen": lr, "runs": {lr:
    run folder}}}, training (or reusing) one run per system and value."""
    from lcm.eval.planning_ablation import train_run

    out = {}
    for name, config in systems.items():
        runs = {lr: train_run(config, seed, root, label=f"{name}, lr {lr:g}", overrides=[*overrides, *lr_override(lr)])
                for lr in values}
        losses = {lr: best_validation_loss(run) for lr, run in runs.items()}
        out[name] = {"val_loss": losses, "chosen": choose(losses), "runs": runs}
    return out
