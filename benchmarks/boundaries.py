"""How generated solutions end: answered rate, steps per solution and stop reasons at several sampling noises.

For one concept checkpoint and the held-out problems of its training config, generates k samples per problem at
each noise level (Base-LCM: N(0, noise^2) added to each prediction in normalized space; a diffusion model
samples by itself and runs once) and reports
  answered    share of solutions that contain an answer line (`#### ...`)
  acc         share whose answer matches the gold answer
  steps       mean steps per solution (plans excluded)
  breaks      mean paragraph breaks per solution the model predicted (planning models)
  eot / rep / max   shares of solutions stopped by end-of-text, by a repeated step, at max_steps

Run (after `lcm fit -c train/configs/quickstart_planning.yaml`):
    HF_HUB_OFFLINE=1 python benchmarks/boundaries.py --ckpt runs/quickstart_planning/version_0/checkpoints/best.ckpt \
        --config train/configs/quickstart_planning.yaml [--noise 0 0.3 0.7] [--problems 40] [--k 4]
"""
from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from lcm.errors import run_command
from lcm.eval import reasoning_metrics as rm
from lcm.generate import ConceptGenerator
from lcm.io import write_json
from lcm.sampling import sampling_options

RESULTS = Path(__file__).resolve().parent / "results"
STOPS = ("end_of_text", "repetition", "max_steps")


def held_out(config: str, n: int) -> tuple[list[str], list[str], list]:
    """The first n held-out problems of a training config and their gold answers."""
    from lcm.train.cli import make_cli

    cli = make_cli(["-c", config, "--data.init_args.show_progress", "false"], run=False)
    docs = cli.datamodule.documents("test")[:n]
    return [d.prompt_text for d in docs], [d.answer for d in docs], docs


def outcome(gens: list, golds: list[str]) -> dict:
    """Answered rate, accuracy, steps, breaks and stop-reason shares of generations (one gold per generation)."""
    texts = ["\n".join(s.text for s in g.steps if not s.is_plan) for g in gens]
    answers = [rm.parse_answer(t) for t in texts]
    return {"answered": float(np.mean([a is not None for a in answers])),
            "accuracy": float(np.mean([rm.answers_match(a, g) for a, g in zip(answers, golds)])),
            "steps": float(np.mean([sum(not s.is_plan for s in g.steps) for g in gens])),
            "breaks": float(np.mean([g.breaks_predicted for g in gens])),
            **{stop: float(np.mean([g.stop_reason == stop for g in gens])) for stop in STOPS}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--config", required=True, help="the training config (its held-out problems are used)")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3, 0.7])
    p.add_argument("--problems", type=int, default=40)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-stop-on-repeat", dest="stop_on_repeat", action="store_false",
                   help="no loop stop (generation's stop_on_repeat=False)")
    p.add_argument("--gold-plans", action="store_true",
                   help="planning models: supply each problem's gold paragraphs as the plans (an oracle diagnostic: the "
                        "plan vector of a paragraph's own sentences also carries its content)")
    p.add_argument("--plan-source", choices=["sampled", "regressed"], default=None,
                   help="diffusion planning models: sampled plans or plans regressed by the context head (default: the "
                        "checkpoint's)")
    p.add_argument("--feedback", choices=["decoded", "predicted"], default="decoded",
                   help="what generation feeds back: the read-out sentence's (or plan's) embedding, or the raw prediction")
    p.add_argument("--label", default="", help="name of this measurement in the JSON (e.g. before / after)")
    p.add_argument("--out", type=Path, default=RESULTS / "boundaries.json")
    args = p.parse_args()
    gen = ConceptGenerator.from_checkpoint(args.ckpt)  # first: a bad checkpoint fails before the data is built
    problems, golds, docs = held_out(args.config, args.problems)
    plans = [["\n".join(par) for par in d.paragraphs] for d in docs] if args.gold_plans else None
    sampler = type(gen.model).__name__
    levels = args.noise if "noise" in sampling_options(gen.model) else [None]
    rows = []
    for noise in levels:
        start = time.perf_counter()
        kw = {"noise": noise} if noise is not None else {}
        if not args.stop_on_repeat:
            kw["stop_on_repeat"] = False
        if args.plan_source:
            kw["plan_source"] = args.plan_source
        kw["feedback"] = args.feedback
        groups = gen.generate(problems, num_samples=args.k, seed=args.seed, max_steps=args.max_steps, plans=plans, **kw)
        groups = [[g] for g in groups] if args.k == 1 else groups
        flat = [g for group in groups for g in group]
        rows.append({"noise": noise, **outcome(flat, [gold for gold in golds for _ in range(args.k)]),
                     "seconds": time.perf_counter() - start})
    table = Table(title=f"{args.ckpt} ({sampler}), {len(problems)} problems x k={args.k}")
    cols = ("noise", "answered", "accuracy", "steps", "breaks", *STOPS)
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row("sampler" if r["noise"] is None else f"{r['noise']:.1f}",
                      *(f"{r[c]:.3f}" if c not in ("steps", "breaks") else f"{r[c]:.2f}" for c in cols[1:]))
    Console().print(table)
    write_json(args.out, {"label": args.label, "ckpt": str(args.ckpt), "config": args.config, "model": sampler,
                          "stop_on_repeat": args.stop_on_repeat, "gold_plans": args.gold_plans, "feedback": args.feedback,
                          "plan_source": args.plan_source or getattr(getattr(gen.model, "diffusion", None), "plan_source", None),
                          "problems": len(problems), "k": args.k, "max_steps": args.max_steps, "rows": rows,
                          "date": dt.datetime.now().isoformat(timespec="seconds")})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_command(main)
