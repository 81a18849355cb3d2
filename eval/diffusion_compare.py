"""Base-LCM vs two-tower diffusion LCM: same data, same budget, several seeds; a guidance sweep.

For each seed, trains `quickstart.yaml` (Base-LCM) and `quickstart_diffusion.yaml` (two-tower) with
`lcm fit` (reusing finished runs), then on the held-out problems:
- teacher-forced next-step scores on step positions (validation split): cosine to the gold step and
  retrieval top-1 accuracy. The diffusion model's predictions are *samples* (DDIM, fixed eval seed).
- diversity of k sampled continuations per test problem (`generate(num_samples=k, seed=...)`):
  mean pairwise cosine distance of the k first-step predicted embeddings; share of distinct decoded
  first steps, and of distinct whole solutions, among the k. Base-LCM samples with its only noise
  option: Gaussian noise of std `--base-noise` added to its prediction in normalized space.
- samples/s: k sampled reasoning paths for every test problem in one batched call, divided by wall time.
Then, for the two-tower checkpoints, the same scores at guidance 1, 2, 3, 5.

    HF_HUB_OFFLINE=1 python -m lcm.eval.diffusion_compare --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np

from lcm.diffusion import DiffusionLCM
from lcm.eval.planning_ablation import test_problems, train_run
from lcm.io import write_json

CONFIGS = {"Base-LCM": "train/configs/quickstart.yaml", "two-tower diffusion": "train/configs/quickstart_diffusion.yaml"}


def pairwise_cosine_distance(x: np.ndarray) -> float:
    """Mean 1 - cos over all pairs of rows of (k, D)."""
    from lcm.retrieval import unit_rows

    u = unit_rows(x)
    sim = u @ u.T
    k = len(u)
    return float((k * k - sim.sum()) / (k * (k - 1)))  # diagonal terms are 1 - 1 = 0


def diversity(gen, problems: list[str], k: int, seed: int, max_steps: int, **sampling) -> dict[str, float]:
    start = time.perf_counter()
    groups = gen.generate(problems, num_samples=k, seed=seed, max_steps=max_steps, **sampling)
    seconds = time.perf_counter() - start
    dist, distinct_first, distinct_solution = [], [], []
    for group in groups:
        firsts = [g.steps[0] for g in group if g.steps]
        if len(firsts) >= 2:
            dist.append(pairwise_cosine_distance(np.stack([s.embedding for s in firsts])))
        distinct_first.append(len({s.text for s in firsts}) / k)
        distinct_solution.append(len({g.text for g in group}) / k)
    steps = sum(len(g.steps) for group in groups for g in group)
    return {"pairwise_cosine_distance": float(np.mean(dist)) if dist else 0.0,
            "distinct_first_steps": float(np.mean(distinct_first)),
            "distinct_solutions": float(np.mean(distinct_solution)),
            "samples_per_s": len(problems) * k / seconds, "steps_per_s": steps / seconds}


def teacher_forced(model, config: str) -> dict[str, float]:
    """Validation-split step cosine and retrieval accuracy of `model` as it is (e.g. another guidance)."""
    import lightning as L

    from lcm.train.cli import make_cli

    dm = make_cli(["-c", config, "--data.init_args.show_progress", "false"], run=False).datamodule
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    out = trainer.validate(model, datamodule=dm, verbose=False)[0]
    return {k: float(out[f"val/{k}"]) for k in ("step_cosine", "step_retrieval_acc")}


def with_settings(model, **changes):
    """The two-tower model with some of its diffusion settings replaced (guidance, ddim_steps, ...)."""
    model.diffusion = model.net.diffusion = dataclasses.replace(model.diffusion, **changes)
    return model


def mean_std(rows: list[dict]) -> dict[str, tuple[float, float]]:
    return {k: (statistics.mean(r[k] for r in rows), statistics.pstdev(r[k] for r in rows)) for k in rows[0]
            if k != "seed"}


def main() -> None:
    from lcm.generate import ConceptGenerator

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--k", type=int, default=8, help="sampled continuations per problem")
    p.add_argument("--problems", type=int, default=40, help="held-out test problems sampled k times")
    p.add_argument("--max-steps", type=int, default=12)
    p.add_argument("--base-noise", type=float, default=0.5, help="Base-LCM sampling noise (normalized units)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0])
    p.add_argument("--ddim-steps", type=int, default=None, help="two-tower DDIM steps (default: the checkpoint's)")
    p.add_argument("--root", type=Path, default=Path("runs/diffusion_compare"))
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--out", type=Path, default=Path("runs/diffusion_compare/results.json"))
    args = p.parse_args()
    problems = test_problems(CONFIGS["Base-LCM"])[: args.problems]
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    sweep: dict[str, list[dict]] = {str(g): [] for g in args.guidance}
    for seed in args.seeds:
        for name, config in CONFIGS.items():
            run = train_run(config, seed, args.root, args.retrain, label=name)
            gen = ConceptGenerator.from_checkpoint(run / "checkpoints" / "last.ckpt")
            diffusion = isinstance(gen.model, DiffusionLCM)
            sampling = {} if diffusion else {"noise": args.base_noise}
            if diffusion and args.ddim_steps:  # teacher-forced scores and samples alike
                with_settings(gen.model, ddim_steps=args.ddim_steps)
            row = {"seed": seed, **teacher_forced(gen.model, config),
                   **diversity(gen, problems, args.k, seed, args.max_steps, **sampling)}
            runs[name].append(row)
            print(name, {k: round(v, 4) for k, v in row.items()}, flush=True)
            if diffusion:
                default = gen.model.diffusion.guidance
                for g in args.guidance:
                    with_settings(gen.model, guidance=g)
                    grow = {"seed": seed, **teacher_forced(gen.model, config),
                            **diversity(gen, problems, args.k, seed, args.max_steps)}
                    sweep[str(g)].append(grow)
                    print(f"  guidance {g}", {k: round(v, 4) for k, v in grow.items()}, flush=True)
                with_settings(gen.model, guidance=default)
    summary = {name: mean_std(rows) for name, rows in runs.items()}
    sweep_summary = {g: mean_std(rows) for g, rows in sweep.items() if rows}
    write_json(args.out, {"seeds": args.seeds, "k": args.k, "problems": len(problems), "base_noise": args.base_noise,
                          "runs": runs, "summary": summary, "guidance_sweep": sweep, "guidance_summary": sweep_summary})
    cols = ("step_cosine", "step_retrieval_acc", "pairwise_cosine_distance", "distinct_first_steps",
            "distinct_solutions", "samples_per_s")
    print("| system | " + " | ".join(cols) + " |")
    for name, s in [*summary.items(), *[(f"two-tower, guidance {g}", s) for g, s in sweep_summary.items()]]:
        print(f"| {name} | " + " | ".join(f"{s[c][0]:.3f} ± {s[c][1]:.3f}" for c in cols) + " |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
