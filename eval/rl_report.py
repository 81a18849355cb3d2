"""`lcm eval rl RUN [RUN ...]`: the entropy-performance law across RL steps, per run, with its curves.

For each RL run folder (`lcm fit -c train/configs/rl_*.yaml`, its metrics.csv) and each entropy -- per unit
(`train/entropy`: a token for the token policy, a step for concept policies) and per step (`train/step_entropy`:
the token policy's sum over a line) -- fit R = -a exp(H) + b with a >= 0 (Cui et al.) on the first third of the RL
steps and predict the rest, two ways:
- `val`: R = held-out greedy accuracy at each validation, H = the mean rollout entropy of the steps since the
  previous validation (the paper's setting: entropy of the policy's own rollouts, R on validation);
- `train`: R = the rollouts' reward at each step (every step's problems are new to the policy), H = their entropy,
  both averaged over windows of `--window` steps.
Reports a, b, R^2 on the fitted third, the RMSE of the prediction on the rest, and writes `metrics.json` and PNGs
(entropy vs step, accuracy vs step, accuracy vs entropy with each fitted law) to `--out`. Runs given one `--names`
label are seeds of one system: a second table (`eval/rl_seeds.py`, also `seeds.md`) gives each system's first -> last
numbers as mean ± std over its seeds.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from lcm.errors import LCMError
from lcm.eval.reasoning_metrics import fit_entropy_performance
from lcm.eval.rl_seeds import aggregate, first_last, seed_table
from lcm.io import atomic_path, write_json

# per unit, per reasoning step (the same series for concept policies: then drawn once), and the Monte Carlo entropy
# of the Gaussian concept policy's read-out sentence (its differential entropy is no entropy over sentences)
ENTROPIES = {"unit": "train/entropy", "step": "train/step_entropy", "retrieved": "train/retrieved_entropy"}
MIN_FIT = 3  # points the law is fitted on: two parameters through two points fit any pair exactly


def read_run(run: Path) -> dict[str, dict[int, float]]:
    """metrics.csv -> {metric: {step: value}} (the last row of a step wins: a resumed run)."""
    path = run / "metrics.csv"
    if not path.is_file():
        raise LCMError(f"{run} has no metrics.csv (pass an RL run folder such as runs/rl_token/version_0)")
    out: dict[str, dict[int, float]] = {}
    for row in csv.DictReader(path.open(encoding="utf-8")):
        for key, value in row.items():
            if key not in ("epoch", "step") and value not in ("", None):
                out.setdefault(key, {})[int(row["step"])] = float(value)
    if "train/reward" not in out:
        raise LCMError(f"{path} is not an RL run's log (no train/reward): train one with lcm fit -c train/configs/rl_*.yaml")
    return out


def law_points(series: dict[str, dict[int, float]], entropy_key: str, how: str, window: int) -> tuple[list, list]:
    """(H, R) points across RL steps, in step order (see the module docstring)."""
    h = series.get(entropy_key, {})
    if how == "val":
        val = sorted(series.get("val/accuracy", {}).items())
        points, prev = [], -1
        for step, acc in val:
            hs = [v for s, v in h.items() if prev < s <= step]
            prev = step
            if hs:
                points.append((float(np.mean(hs)), acc))
        return [p[0] for p in points], [p[1] for p in points]
    steps = sorted(set(h) & set(series["train/reward"]))
    chunks = [steps[i:i + window] for i in range(0, len(steps) - window + 1, window)]
    return ([float(np.mean([h[s] for s in c])) for c in chunks],
            [float(np.mean([series["train/reward"][s] for s in c])) for c in chunks])


def fit_and_extrapolate(hs: list[float], rs: list[float]) -> dict:
    """Fit on the first third (at least `MIN_FIT` points), predict the rest: a, b, R^2 (fit), extrapolation RMSE."""
    n = len(hs)
    k = max(MIN_FIT, n // 3)
    if n < k + 1:
        return {"points": n, "note": "too few points to fit on a third and predict the rest"}
    if max(hs) > 700:  # exp(H) overflows float64: a sum over many tokens is no entropy this law is about
        return {"points": n, "note": f"entropy {max(hs):.0f} nats is beyond exp()'s range"}
    fit = fit_entropy_performance(hs[:k], rs[:k])
    pred = -fit["a"] * np.exp(np.asarray(hs[k:])) + fit["b"]
    rmse = float(np.sqrt(np.mean((pred - np.asarray(rs[k:])) ** 2)))
    return {**fit, "points": n, "fit_points": k, "extrapolation_rmse": rmse,
            "entropy_first": hs[0], "entropy_last": hs[-1], "score_first": rs[0], "score_last": rs[-1]}


def summarize(name: str, series: dict, window: int) -> dict:
    val = series.get("val/accuracy", {})
    val_first, val_last = first_last(val) if val else (None, None)
    out = {"name": name, "rl_steps": max(series["train/reward"]) + 1,
           "val_accuracy_first": val_first, "val_accuracy_last": val_last, "laws": {}}
    for unit, key in ENTROPIES.items():
        if key not in series or (unit == "step" and series[key] == series.get(ENTROPIES["unit"])):
            continue
        out[f"{unit}_entropy_first"], out[f"{unit}_entropy_last"] = first_last(series[key])
        for how in ("val", "train"):
            out["laws"][f"{unit}/{how}"] = fit_and_extrapolate(*law_points(series, key, how, window))
    return out


def plot(runs: list[tuple[str, dict]], reports: list[dict], out: Path, window: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    panels = (("entropy_vs_step", "RL step", "entropy (nats per unit)"),
              ("accuracy_vs_step", "RL step", "accuracy"), ("accuracy_vs_entropy", "entropy (nats per unit)",
                                                            "held-out greedy accuracy"))
    for fname, xlabel, ylabel in panels:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (name, s), rep in zip(runs, reports):
            if fname == "entropy_vs_step":
                ax.plot(*zip(*sorted(s["train/entropy"].items())), label=name)
            elif fname == "accuracy_vs_step":
                ax.plot(*zip(*sorted(s["train/reward"].items())), alpha=0.35, label=f"{name}: rollout reward")
                if s.get("val/accuracy"):
                    ax.plot(*zip(*sorted(s["val/accuracy"].items())), marker="o", label=f"{name}: held-out greedy")
            else:
                hs, rs = law_points(s, ENTROPIES["unit"], "val", window)
                line = ax.plot(hs, rs, marker="o", linestyle="", label=name)[0]
                law = rep["laws"].get("unit/val", {})
                if "a" in law and hs:
                    grid = np.linspace(min(hs), max(hs), 50)
                    ax.plot(grid, -law["a"] * np.exp(grid) + law["b"], color=line.get_color(), linestyle="--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        path = out / f"{fname}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        files.append(path)
    return files


def table(reports: list[dict]) -> str:
    head = "| run | law | points | a | b | R^2 (fit) | extrapolation RMSE | H first -> last | R first -> last |"
    lines = [head, "|" + "---|" * 9]
    for rep in reports:
        for law, f in rep["laws"].items():
            if "a" not in f:
                lines.append(f"| {rep['name']} | {law} | {f['points']} | {f['note']} |||||")
                continue
            lines.append(f"| {rep['name']} | {law} | {f['points']} | {f['a']:.4g} | {f['b']:.3f} | {f['r2']:.3f} | "
                         f"{f['extrapolation_rmse']:.3f} | {f['entropy_first']:.3f} -> {f['entropy_last']:.3f} | "
                         f"{f['score_first']:.3f} -> {f['score_last']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="lcm eval rl", description="Entropy-performance law across RL steps: fit on the "
                                "first third, predict the rest; curves and metrics.json.")
    p.add_argument("runs", nargs="+", help="RL run folders (runs/rl_token/version_0 ...)")
    p.add_argument("--names", nargs="*", default=None, help="a label per run (default: the folder path)")
    p.add_argument("--out", default="runs/rl_report", help="folder for metrics.json and the PNGs")
    p.add_argument("--window", type=int, default=5, help="RL steps averaged into one point of the train law")
    p.add_argument("--edge", type=int, default=10, help="RL steps averaged at each end of a run in the seed table")
    ns = p.parse_args(argv)
    if ns.names and len(ns.names) != len(ns.runs):
        raise LCMError(f"--names has {len(ns.names)} labels for {len(ns.runs)} runs")
    if ns.window < 1 or ns.edge < 1:
        raise LCMError(f"--window and --edge must be >= 1, not {ns.window} and {ns.edge}")
    names = ns.names or ns.runs
    runs = [(name, read_run(Path(r))) for name, r in zip(names, ns.runs)]
    reports = [summarize(name, s, ns.window) for name, s in runs]
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    files = plot(runs, reports, out, ns.window)
    systems = aggregate(runs, ns.edge)
    seeds_md = seed_table(systems, ns.edge)
    write_json(out / "metrics.json", {"window": ns.window, "edge": ns.edge, "runs": reports, "systems": systems})
    with atomic_path(out / "seeds.md") as tmp:
        tmp.write_text(seeds_md + "\n", encoding="utf-8")
    print(table(reports))
    print()
    print(seeds_md)
    print(f"wrote {out / 'metrics.json'}, seeds.md and {', '.join(f.name for f in files)}")
