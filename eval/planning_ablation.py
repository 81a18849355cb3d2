"""Planning vs no planning: same data, same budget, several seeds (teacher-forced metrics + generation).

For each seed, trains `quickstart.yaml` and `quickstart_planning.yaml` with `lcm fit`, reads the last
validation epoch from metrics.csv (step-only cosine and retrieval accuracy: plans and breaks are not
steps, so this compares like with like), then generates for every held-out test problem and counts
how generations end: `predicted` = stopped at end-of-text with no break forced by the paragraph cap.

    HF_HUB_OFFLINE=1 python -m lcm.eval.planning_ablation --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from lcm.io import write_json

CONFIGS = {"no planning": "train/configs/quickstart.yaml", "planning": "train/configs/quickstart_planning.yaml"}
METRICS = ("val/step_cosine", "val/step_retrieval_acc", "val/cosine", "val/boundary_acc")


def last_validation(metrics_csv: Path) -> dict[str, float]:
    rows = [r for r in csv.DictReader(open(metrics_csv)) if r.get("val/step_cosine")]
    return {k: float(v) for k, v in rows[-1].items() if v and k.startswith("val/")}


def finished(run: Path) -> bool:
    """The run's `fit` ended (it wrote training_cost.json, `lcm.train.cost`), or, for runs older than that file,
    it validated its last epoch (last.ckpt alone is written after every epoch). The file is what tells a run
    limited by `max_steps` (max_epochs -1) apart from an interrupted one."""
    import yaml

    if (run / "training_cost.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file():
        return True
    try:
        max_epochs = yaml.safe_load(open(run / "config.yaml"))["trainer"]["max_epochs"]
        rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("val/loss")]
    except (OSError, KeyError, TypeError):
        return False
    return bool(rows) and int(rows[-1]["epoch"]) == max_epochs - 1 and (run / "checkpoints" / "last.ckpt").is_file()


def train_run(config: str, seed: int, root: Path, retrain: bool = False, label: str = "",
              overrides: tuple[str, ...] | list[str] = ()) -> Path:
    """`lcm fit -c config [overrides]` with `seed` under `root`, or the finished run already there; returns the
    run folder. The config's content and the overrides are in the run name: an edited config never reuses
    an older run."""
    digest = hashlib.blake2b(Path(config).read_bytes() + "\0".join(overrides).encode(), digest_size=4).hexdigest()
    run_name = f"{Path(config).stem}-{digest}_seed{seed}"
    cmd = [sys.executable, "-m", "lcm.eval.cli", "fit", "-c", config, *overrides, "--seed_everything", str(seed),
           "--trainer.logger.init_args.save_dir", str(root), "--trainer.logger.init_args.name", run_name,
           "--trainer.logger.init_args.version", "0", "--trainer.enable_progress_bar", "false"]
    run = root / run_name / "version_0"
    if finished(run) and not retrain:
        print(f"[{label or config}, seed {seed}] reusing {run}", flush=True)
    else:
        shutil.rmtree(run, ignore_errors=True)  # an interrupted run starts over
        print(f"[{label or config}, seed {seed}] {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return run


def generation_stats(ckpt: Path, problems: list[str], max_steps: int) -> dict[str, float]:
    from lcm.generate import ConceptGenerator

    gens = ConceptGenerator.from_checkpoint(ckpt).generate(problems, max_steps=max_steps)
    n = len(gens)
    return {
        "end_of_text_rate": sum(g.stop_reason == "end_of_text" for g in gens) / n,
        "predicted_end_rate": sum(g.stop_reason == "end_of_text" and g.breaks_forced == 0 for g in gens) / n,
        "mean_paragraphs": sum(len(g.paragraphs) for g in gens) / n,
        "breaks_predicted": sum(g.breaks_predicted for g in gens),
        "breaks_forced": sum(g.breaks_forced for g in gens),
    }


def test_problems(config: str) -> list[str]:
    """Held-out problems exactly as `lcm fit` splits them (built from the config, cache reused)."""
    from lcm.train.cli import make_cli

    cli = make_cli(["-c", config, "--data.init_args.show_progress", "false"], run=False)
    return [d.prompt_text for d in cli.datamodule.documents("test")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-steps", type=int, default=16)
    p.add_argument("--root", type=Path, default=Path("runs/planning_ablation"))
    p.add_argument("--retrain", action="store_true", help="train again even where a finished run exists")
    p.add_argument("--out", type=Path, default=Path("runs/planning_ablation/results.json"))
    args = p.parse_args()
    problems = test_problems(CONFIGS["planning"])
    results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for seed in args.seeds:
        for name, config in CONFIGS.items():
            run = train_run(config, seed, args.root, args.retrain, label=name)
            row = {"seed": seed, **last_validation(run / "metrics.csv"),
                   **generation_stats(run / "checkpoints" / "last.ckpt", problems, args.max_steps)}
            results[name].append(row)
            print({k: round(v, 4) for k, v in row.items()}, flush=True)
    summary = {name: {k: (statistics.mean(r[k] for r in rows), statistics.pstdev(r[k] for r in rows))
                      for k in rows[0] if k != "seed"} for name, rows in results.items()}
    write_json(args.out, {"seeds": args.seeds, "test_problems": len(problems), "runs": results, "summary": summary})
    print(f"\n{'':14s}" + "".join(f"{k:>26s}" for k in (*METRICS, "predicted_end_rate")))
    for name, s in summary.items():
        print(f"{name:14s}" + "".join(f"{s[k][0]:>18.4f} ± {s[k][1]:.4f}" if k in s else f"{'-':>26s}"
                                      for k in (*METRICS, "predicted_end_rate")))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
