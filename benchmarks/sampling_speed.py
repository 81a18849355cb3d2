"""k sampled reasoning paths per problem: batched vs one sample at a time, Base-LCM vs two-tower (and one-tower) diffusion.

For each concept checkpoint, generates k samples for each of `--problems` held-out gsm problems
  batched      one `generate(problems, num_samples=k)` call: all k x problems rows share one forward per step
  one by one   k x problems separate `generate(problem, seed=...)` calls (the reference)
Methods alternate for `--repeats` rounds; medians are reported as samples/s and steps/s, and the
batched / one-by-one ratio is measured in the same run.

Run (after the diffusion comparison or `lcm fit` of both configs):
    HF_HUB_OFFLINE=1 python benchmarks/sampling_speed.py [--base CKPT] [--diffusion CKPT] [--one-tower CKPT] [--k 8]
        [--problems-from train/configs/logic_planning.yaml]
A one-tower checkpoint (`diffusion.tower: one`) adds its rows: it runs its tower over the context once per concept
(keys and values cached) and its query through all of its layers at every DDIM step, where the two-tower model runs
its contextualizer once per concept and only the denoiser per step.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lcm.errors import run_command
from lcm.generate import ConceptGenerator
from lcm.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path("runs/diffusion_compare")


def default_ckpt(prefix: str) -> Path:
    found = sorted(RUNS.glob(f"{prefix}-*_seed0/version_0/checkpoints/last.ckpt"))
    return found[0] if found else RUNS / f"{prefix}-missing"


def print_table(result: dict, methods: list[str], steps: dict[str, int], n: int) -> None:
    med = result["median_seconds"]
    table = Table(title=f"{result['problems']} problems x k={result['k']} samples, CPU, {result['torch_threads']} "
                        f"threads, median of {result['repeats']}")
    for col in ("method", "samples/s", "steps/s", "seconds"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for m in methods:
        table.add_row(m, f"{n / med[m]:.1f}", f"{steps[m] / med[m]:.1f}", f"{med[m]:.2f}")
    Console().print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, default=default_ckpt("quickstart"))
    p.add_argument("--diffusion", type=Path, default=default_ckpt("quickstart_diffusion"))
    p.add_argument("--one-tower", type=Path, default=None, help="a one-tower diffusion checkpoint (optional rows)")
    p.add_argument("--problems-from", default="train/configs/quickstart.yaml", help="training config of the problems")
    p.add_argument("--base-noise", type=float, default=0.5)
    p.add_argument("--ddim-steps", type=int, default=None, help="diffusion DDIM steps (default: the checkpoint's)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--problems", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "sampling_speed.json")
    args = p.parse_args()
    from lcm.eval.planning_ablation import test_problems

    problems = test_problems(args.problems_from)[: args.problems]
    load_before = os.getloadavg()[0]
    gens = {"Base-LCM": (ConceptGenerator.from_checkpoint(args.base), {"noise": args.base_noise}),
            "two-tower diffusion": (ConceptGenerator.from_checkpoint(args.diffusion), {"ddim_steps": args.ddim_steps})}
    if args.one_tower is not None:
        gens["one-tower diffusion"] = (ConceptGenerator.from_checkpoint(args.one_tower), {"ddim_steps": args.ddim_steps})
    k = args.k

    def batched(gen, kw):
        return lambda: [s for group in gen.generate(problems, num_samples=k, seed=0, max_steps=args.max_steps, **kw)
                        for s in group]

    def one_by_one(gen, kw):
        return lambda: [gen.generate(p, seed=j, max_steps=args.max_steps, **kw) for p in problems for j in range(k)]

    methods = {}
    for name, (gen, kw) in gens.items():
        methods[f"{name}, batched"] = batched(gen, kw)
        methods[f"{name}, one by one"] = one_by_one(gen, kw)
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    steps: dict[str, int] = {}
    with torch.no_grad():
        for r in range(args.repeats):
            for m in (list(methods) if r % 2 == 0 else list(reversed(methods))):
                t0 = time.perf_counter()
                out = methods[m]()
                seconds[m].append(time.perf_counter() - t0)
                steps[m] = sum(len(g.steps) for g in out)
    n = len(problems) * k
    med = {m: statistics.median(v) for m, v in seconds.items()}
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "problems": len(problems), "k": k,
        "repeats": args.repeats, "ddim_steps": args.ddim_steps, "torch_threads": torch.get_num_threads(),
        "load_avg_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "params": {name: sum(p.numel() for p in g.model.net.parameters()) for name, (g, _) in gens.items()},
        "seconds": seconds, "median_seconds": med, "samples_per_s": {m: n / v for m, v in med.items()},
        "steps_per_s": {m: steps[m] / med[m] for m in med},
        "batching_speedup": {name: med[f"{name}, one by one"] / med[f"{name}, batched"] for name in gens},
    }
    print_table(result, list(methods), steps, n)
    for name, x in result["batching_speedup"].items():
        print(f"batching speedup, {name}: {x:.2f}x")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_command(main)
