"""The seed table of `lcm eval rl`: runs given the same `--names` label are seeds of one system, reported as
mean ± std over those seeds (sample std, ddof 1; one run: no std).

Per run, the numbers are: held-out greedy accuracy and pass@k (the largest k logged) at the first and the last
validation; and the mean over the first and over the last `edge` RL steps of the rollout entropy per unit and per
step, the rollout reward, the effective rank of the per-step hidden states and the Vendi score of the group's
rollouts -- the "first 10 -> last 10" columns of docs/results.md. The entropy change is (last - first) / first per
run, then averaged, so a seed's own baseline is its reference.
"""
from __future__ import annotations

import numpy as np

# (column label, metric key) pairs averaged over the first / last `edge` RL steps
EDGE_METRICS = (("entropy per unit", "train/entropy"), ("entropy per step", "train/step_entropy"),
                ("rollout reward", "train/reward"), ("effective rank", "train/effective_rank"),
                ("Vendi", "train/vendi"), ("completion units", "train/completions/mean_units"))


def first_last(values: dict[int, float]) -> tuple[float, float]:
    """A logged series' values at its first and its last step."""
    steps = sorted(values)
    return values[steps[0]], values[steps[-1]]


def run_numbers(series: dict[str, dict[int, float]], edge: int) -> dict[str, float]:
    """One run's first/last numbers (see the module docstring); metrics the run did not log are left out."""
    out: dict[str, float] = {}
    if series.get("val/accuracy"):
        out["greedy first"], out["greedy last"] = first_last(series["val/accuracy"])
    passes = [k for k in series if k.startswith("val/pass@") and series[k]]
    if passes:
        top = max(passes, key=lambda k: int(k.split("@")[1]))
        out[f"{top[4:]} first"], out[f"{top[4:]} last"] = first_last(series[top])
    for label, key in EDGE_METRICS:
        if not series.get(key) or (key == "train/step_entropy" and series[key] == series.get("train/entropy")):
            continue  # a concept policy's unit is its step: one column, not two equal ones
        steps = sorted(series[key])
        out[f"{label} first"] = float(np.mean([series[key][s] for s in steps[:edge]]))
        out[f"{label} last"] = float(np.mean([series[key][s] for s in steps[-edge:]]))
    if "entropy per unit first" in out and out["entropy per unit first"]:
        out["entropy change %"] = 100 * (out["entropy per unit last"] / out["entropy per unit first"] - 1)
    return out


def aggregate(runs: list[tuple[str, dict]], edge: int) -> dict[str, dict]:
    """{system: {"seeds": n, number: [mean, std]}} over the runs that share a label, in first-seen order."""
    groups: dict[str, list[dict[str, float]]] = {}
    for name, series in runs:
        groups.setdefault(name, []).append(run_numbers(series, edge))
    out: dict[str, dict] = {}
    for name, numbers in groups.items():
        keys = [k for k in numbers[0] if all(k in n for n in numbers)]
        row: dict = {"seeds": len(numbers)}
        for k in keys:
            vals = np.array([n[k] for n in numbers])
            row[k] = [float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else None]
        out[name] = row
    return out


def _cell(row: dict, key: str) -> str:
    if key not in row:
        return "--"
    mean, std = row[key]
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def seed_table(systems: dict[str, dict], edge: int) -> str:
    """Markdown: one row per system, each number "first -> last" as mean ± std over its seeds."""
    labels = ["greedy"] + sorted({k[:-6] for row in systems.values() for k in row if k.startswith("pass@")
                                  and k.endswith(" first")}) + [label for label, _ in EDGE_METRICS]
    labels = [lab for lab in labels if any(f"{lab} first" in row for row in systems.values())]
    head = ["system", "seeds"] + [lab if lab == "greedy" or lab.startswith("pass@") else f"{lab} (first / last {edge})"
                                  for lab in labels] + ["entropy change %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in systems.items():
        cells = [f"{_cell(row, lab + ' first')} -> {_cell(row, lab + ' last')}" for lab in labels]
        change = row.get("entropy change %")
        pct = "--" if change is None else (f"{change[0]:+.1f}" if change[1] is None else f"{change[0]:+.1f} ± {change[1]:.1f}")
        lines.append("| " + " | ".join([name, str(row["seeds"])] + cells + [pct]) + " |")
    return "\n".join(lines)
