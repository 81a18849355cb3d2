"""`lcm eval rl`: the entropy-performance law fitted on the first third of the RL steps and extrapolated, from a
run's metrics.csv; a synthetic run that follows the law exactly is recovered."""
from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import run_lcm

from lcm.eval.rl_report import fit_and_extrapolate, law_points, read_run


def write_run(folder, steps: int = 30, val_every: int = 5, a: float = 0.2, b: float = 1.5):
    """metrics.csv of an RL run whose entropy falls linearly and whose rewards follow R = -a exp(H) + b."""
    folder.mkdir(parents=True)
    keys = ["epoch", "step", "train/reward", "train/entropy", "train/step_entropy", "val/accuracy"]
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for s in range(steps):
            h = 2.0 - 1.5 * s / (steps - 1)
            w.writerow({"epoch": 0, "step": s, "train/reward": -a * math.exp(h) + b, "train/entropy": h,
                        "train/step_entropy": 3 * h})
            if (s + 1) % val_every == 0:
                w.writerow({"epoch": 0, "step": s, "val/accuracy": -a * math.exp(h) + b})
    return folder


def test_a_run_that_follows_the_law_is_fitted_on_a_third_and_predicts_the_rest(tmp_path):
    series = read_run(write_run(tmp_path / "run"))
    hs, rs = law_points(series, "train/entropy", "train", window=1)
    assert len(hs) == 30
    law = fit_and_extrapolate(hs, rs)
    assert law["fit_points"] == 10 and law["a"] == pytest.approx(0.2) and law["b"] == pytest.approx(1.5)
    assert law["extrapolation_rmse"] < 1e-9 and law["r2"] == pytest.approx(1.0)
    hv, rv = law_points(series, "train/entropy", "val", window=1)
    assert len(hv) == 6  # one point per validation, H averaged over the steps since the previous one
    assert hv[0] == pytest.approx(sum(2.0 - 1.5 * s / 29 for s in range(5)) / 5)


def test_lcm_eval_rl_writes_the_laws_and_the_curves(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    code, _ = run_lcm(["eval", "rl", str(run), "--names", "synthetic", "--out", str(tmp_path / "rep"), "--window", "3"])
    assert code == 0
    report = json.loads((tmp_path / "rep" / "metrics.json").read_text())["runs"][0]
    assert set(report["laws"]) == {"unit/val", "unit/train", "step/val", "step/train"}
    assert report["laws"]["unit/train"]["a"] == pytest.approx(0.2, rel=1e-3)
    assert {p.name for p in (tmp_path / "rep").glob("*.png")} == {"entropy_vs_step.png", "accuracy_vs_step.png",
                                                                  "accuracy_vs_entropy.png"}
    code, err = run_lcm(["eval", "rl", str(tmp_path)], capsys)
    assert code == 2 and "no metrics.csv" in err and len(err.strip().splitlines()) == 1


def test_runs_sharing_a_name_are_seeds_reported_as_mean_and_std(tmp_path):
    """Two seeds of one system: first/last-window means per run, then mean ± sample std across runs."""
    runs = [write_run(tmp_path / f"s{i}", b=b) for i, b in enumerate((1.5, 1.7))]
    code, _ = run_lcm(["eval", "rl", *map(str, runs), str(write_run(tmp_path / "other")), "--names", "sys", "sys",
                       "other", "--out", str(tmp_path / "rep"), "--edge", "4"])
    assert code == 0
    systems = json.loads((tmp_path / "rep" / "metrics.json").read_text())["systems"]
    assert set(systems) == {"sys", "other"} and systems["sys"]["seeds"] == 2 and systems["other"]["seeds"] == 1
    h_first = sum(2.0 - 1.5 * s / 29 for s in range(4)) / 4
    h_last = sum(2.0 - 1.5 * s / 29 for s in range(26, 30)) / 4
    assert systems["sys"]["entropy per unit first"] == pytest.approx([h_first, 0.0])
    assert systems["sys"]["entropy change %"][0] == pytest.approx(100 * (h_last / h_first - 1))
    reward_first = [sum(-0.2 * math.exp(2.0 - 1.5 * s / 29) + b for s in range(4)) / 4 for b in (1.5, 1.7)]
    assert systems["sys"]["rollout reward first"] == pytest.approx([sum(reward_first) / 2, 0.2 / math.sqrt(2)])
    assert systems["other"]["greedy last"] == [pytest.approx(-0.2 * math.exp(0.5) + 1.5), None]
    md = (tmp_path / "rep" / "seeds.md").read_text()
    assert "| sys | 2 |" in md and "(first / last 4)" in md
