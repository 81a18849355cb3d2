"""MSE vs MSE + InfoNCE for Base-LCM on forks: same data, budget and seeds; answer accuracy where MSE must decide.

For each seed, trains `forks.yaml` and `forks_contrastive.yaml` (identical but for `model.contrastive`) with
`lcm fit`, then generates greedily (Base-LCM is deterministic without noise) for the first `--problems`
held-out problems, given as their training prompt sentences, and scores the final answer (one of 24
properties: chance 1/24). Every answer is a decision at a fork of the task, where regressing to the
conditional mean lands between the options. The zero-parameter encoder follower on the same problems is the
control. Also reported: the last validation epoch's teacher-forced step retrieval and step-policy entropy.

    HF_HUB_OFFLINE=1 python -m lcm.eval.objective_ablation --seeds 0 1 2 [--overrides --trainer.max_epochs 10]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lcm.eval import reasoning_metrics as rm
from lcm.io import write_json

CONFIGS = {"MSE": "train/configs/forks.yaml", "MSE + InfoNCE": "train/configs/forks_contrastive.yaml"}
VALIDATION = ("val/step_retrieval_acc", "val/step_cosine", "val/step_entropy", "val/loss")


def answer_scores(ckpt: Path, docs: list, max_steps: int, device: str = "cpu") -> dict:
    """Greedy generations for `docs` (their prompt sentences) -> per-problem correctness, answered rate, stops."""
    from lcm.generate import ConceptGenerator

    gens = ConceptGenerator.from_checkpoint(ckpt, device=device).generate([d.prompt for d in docs], max_steps=max_steps)
    answers = [rm.parse_answer(g.text) for g in gens]
    return {"correct": [float(rm.answers_match(a, d.answer)) for a, d in zip(answers, docs)],
            "answered": float(np.mean([a is not None for a in answers])),
            "stop_end_of_text": float(np.mean([g.stop_reason == "end_of_text" for g in gens])),
            "steps": float(np.mean([len(g.steps) for g in gens]))}


def follower_control(docs: list) -> np.ndarray:
    """Per-problem correctness of the zero-parameter encoder follower (its gated "cosine" variant)."""
    from lcm.encoders import SentenceTransformerEncoder
    from lcm.eval.follower import follower_scores

    return follower_scores(docs, SentenceTransformerEncoder().encode)["follower (cosine)"]


def summarize(rows: list[dict], hops: list[int]) -> dict:
    """Seeds -> mean ± std of accuracy (and the rest), with a bootstrap CI over problems (seed-averaged), and the
    seed-averaged accuracy per hop count (`hops`: each problem's)."""
    out = rm.over_seeds([float(np.mean(r["correct"])) for r in rows], [r["correct"] for r in rows])
    out["accuracy_by_hops"] = rm.accuracy_by_hops(np.mean([r["correct"] for r in rows], axis=0), hops)
    for key in ("answered", "stop_end_of_text", "steps", *VALIDATION):
        vals = [r[key] for r in rows if key in r]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    return out


def main() -> None:
    from lcm.eval.compare import test_documents
    from lcm.eval.planning_ablation import last_validation, train_run

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--problems", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=32)
    p.add_argument("--root", type=Path, default=Path("runs/objective_ablation"))
    p.add_argument("--overrides", nargs=argparse.REMAINDER, default=[], help="appended to every `lcm fit`")
    p.add_argument("--out", type=Path, default=Path("runs/objective_ablation/results.json"))
    args = p.parse_args()
    docs = test_documents(CONFIGS["MSE"], args.overrides, args.problems)
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for seed in args.seeds:
        for name, config in CONFIGS.items():
            run = train_run(config, seed, args.root, label=name, overrides=args.overrides)
            row = {"seed": seed, **answer_scores(run / "checkpoints" / "best.ckpt", docs, args.max_steps),
                   **{k: v for k, v in last_validation(run / "metrics.csv").items() if k in VALIDATION}}
            runs[name].append(row)
            print(name, seed, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)}, flush=True)
    follower = follower_control(docs)
    hops = [d.meta["hops"] for d in docs]
    summary = {name: summarize(rows, hops) for name, rows in runs.items()}
    summary["encoder follower (0 parameters)"] = rm.accuracy_summary(follower, hops)
    write_json(args.out, {"seeds": args.seeds, "problems": len(docs), "overrides": args.overrides, "chance": 1 / 24,
                          "runs": runs, "summary": summary})
    for name, s in summary.items():
        lo, hi = s["accuracy_ci"]
        extra = "".join(f"  {k.split('/')[-1]} {s[k]:.3f}" for k in ("answered", *VALIDATION) if k in s)
        print(f"{name:32s} acc {s['accuracy']:.3f} ± {s.get('accuracy_std', 0):.3f} [{lo:.3f}, {hi:.3f}]{extra}")
        print(" " * 33 + "by hops: " + "  ".join(f"{h}: {a:.3f}" for h, a in s["accuracy_by_hops"].items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
