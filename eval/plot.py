"""`lcm plot RUN_DIR`: PNG training curves from a run's metrics.csv (what TensorBoard shows, as files).

Writes `RUN_DIR/plots/loss.png` (train loss per step, validation loss per epoch) and one figure per group of
validation metrics (`cosine.png`, `retrieval.png`, `boundary.png`, ...), each metric against its baselines.
"""
from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from lcm.errors import LCMError


def read_metrics(run: Path) -> dict[str, list[tuple[float, float]]]:
    """metrics.csv -> {metric: [(x, value), ...]} sorted by x: the step for train/ metrics, the epoch for the rest.

    A resumed run appends to its folder's file, repeating the steps logged after the checkpoint it resumed
    from: the last row for a step wins (the run that went on)."""
    path = run / "metrics.csv"
    if not path.is_file():
        raise LCMError(f"{run} has no metrics.csv (pass a run folder such as runs/quickstart/version_0)")
    series: dict[str, dict[float, float]] = defaultdict(dict)
    for row in csv.DictReader(path.open(encoding="utf-8")):
        for key, value in row.items():
            if key in ("epoch", "step") or value in ("", None):
                continue
            x = row["step"] if key.startswith("train/") else row["epoch"]
            series[key][float(x)] = float(value)
    if not series:
        raise LCMError(f"{path} holds no metrics yet")
    return {key: sorted(points.items()) for key, points in series.items()}


def groups(names: list[str]) -> dict[str, list[str]]:
    """Figures: loss (train and val), then the validation metrics by kind (cosine, retrieval, ...)."""
    out: dict[str, list[str]] = {"loss": [n for n in names if n.endswith("/loss")]}
    for name in sorted(n for n in names if n.startswith("val/") and not n.endswith("/loss")):
        kind = next((k for k in ("cosine", "retrieval", "recall", "boundary", "token_acc", "exact", "entropy",
                                 "truncated") if k in name), "other")
        out.setdefault(kind, []).append(name)
    return {k: v for k, v in out.items() if v}


def plot_run(run: str | Path) -> list[Path]:
    """One PNG per group of metrics under `<run>/plots/`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lcm.io import atomic_path

    run = Path(run)
    series = read_metrics(run)
    written = []
    for kind, names in groups(sorted(series)).items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in names:
            xs, ys = zip(*series[name])
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=name)
        ax.set_xlabel("step (train/) or epoch (val/)" if kind == "loss" else "epoch")
        ax.set_title(f"{run.parent.name}/{run.name}: {kind}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = run / "plots" / f"{kind}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lcm plot", description="PNG training curves from a run's metrics.csv.")
    parser.add_argument("run", help="run folder, e.g. runs/quickstart/version_0")
    ns = parser.parse_args(args)
    for path in plot_run(ns.run):
        print(path)
