"""Time to sample one next concept: Base-LCM vs two-tower vs one-tower diffusion, on the same contexts.

For each checkpoint, `model.next_concept` on a batch of `--rows` random contexts of `--length` concepts (the cost
does not depend on what the weights learned, so untrained checkpoints of the shipped shapes measure it too), median
of `--repeats` timed calls after one warm-up call; the DDIM steps and guidance are each diffusion checkpoint's own
(`--ddim-steps` / `--guidance` override them). The two-tower model runs its contextualizer once per concept and its
denoiser at every DDIM step; the one-tower model runs its tower over the context once per concept (keys and
values cached) and then only its query through the whole tower at every DDIM step.

    HF_HUB_OFFLINE=1 python benchmarks/concept_step_speed.py \
        --ckpt base=runs/logic_planning/version_0/checkpoints/last.ckpt \
        two-tower=runs/logic_diffusion/version_0/checkpoints/last.ckpt \
        one-tower=runs/logic_diffusion_one_tower/version_0/checkpoints/last.ckpt
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


def time_next_concept(model, rows: int, length: int, repeats: int, **sampling) -> list[float]:
    """Seconds of `repeats` calls of next_concept on (rows, length) random contexts (one untimed warm-up call)."""
    x = torch.randn(rows, length, model.arch.embed_dim, generator=torch.Generator().manual_seed(0))
    lengths = torch.full((rows,), length)
    seconds = []
    with torch.no_grad():
        for i in range(repeats + 1):
            start = time.perf_counter()
            model.next_concept(x, lengths, torch.Generator().manual_seed(i), **sampling)
            if i:
                seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", nargs="+", required=True, metavar="NAME=CKPT")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--length", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ddim-steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--out", type=Path, default=RESULTS / "concept_step_speed.json")
    args = p.parse_args()
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "rows": args.rows, "length": args.length,
              "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
              "load_avg_1min_start": os.getloadavg()[0], "systems": {}}
    for entry in args.ckpt:
        name, _, path = entry.partition("=")
        model = ConceptGenerator.from_checkpoint(path).model
        diffusion = hasattr(model, "diffusion")
        sampling = {k: v for k, v in (("ddim_steps", args.ddim_steps), ("guidance", args.guidance)) if v is not None}
        seconds = time_next_concept(model, args.rows, args.length, args.repeats, **(sampling if diffusion else {}))
        med = statistics.median(seconds)
        result["systems"][name] = {
            "checkpoint": path, "params": sum(q.numel() for q in model.net.parameters()),
            "denoiser_evals": model.denoiser_evals(**(sampling if diffusion else {})), "seconds": seconds,
            "ms_per_concept": 1000 * med / args.rows}
    base = next(iter(result["systems"].values()))["ms_per_concept"]
    table = Table(title=f"next concept, {args.rows} rows x {args.length}-concept contexts, {result['torch_threads']} "
                        f"threads, median of {args.repeats}")
    for col in ("system", "params", "denoiser passes", "ms / concept", f"vs {next(iter(result['systems']))}"):
        table.add_column(col, justify="left" if col == "system" else "right")
    for name, r in result["systems"].items():
        r["ratio_to_first"] = r["ms_per_concept"] / base
        table.add_row(name, f"{r['params'] / 1e6:.2f}M", str(r["denoiser_evals"]), f"{r['ms_per_concept']:.2f}",
                      f"{r['ratio_to_first']:.1f}x")
    result["load_avg_1min_end"] = os.getloadavg()[0]
    Console().print(table)
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_command(main)
