"""Accuracy against diversity, over sampling settings: where, if anywhere, does a sampler give more distinct correct
solutions at equal accuracy?

For the held-out problems of a training config, every checkpoint of every system samples k solutions per problem
at each of its settings -- Base-LCM: `--noise` values; a diffusion model (two- or one-tower): the grid of
`--guidance` x `--eta` -- and each (system, setting) point gets
  accuracy            per sample, mean over seeds ± std, 95% bootstrap CI over problems (seed-averaged per problem)
  distinct correct    distinct correct solutions per problem (unique solution texts among the correct ones, of k)
  distinct            distinct solutions per problem, correct or not
  answered            share of samples with an answer line
  ROUGE-L             of each sample against the problem's reference solution (`rouge-score`), mean
Several checkpoints of one system are its seeds (`--system NAME CKPT [CKPT ...]`).

    HF_HUB_OFFLINE=1 lcm eval frontier --config train/configs/forks.yaml \
        --system Base-LCM runs/forks/version_0/checkpoints/best.ckpt \
        --system "two-tower" runs/forks_diffusion/version_0/checkpoints/best.ckpt

Writes `frontier.json`, `frontier.md` and `frontier.png` (accuracy on x, distinct correct solutions on y, one
line per system through its settings) to `--out`.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from lcm.errors import LCMError
from lcm.eval import reasoning_metrics as rm
from lcm.eval.compare import add_overrides_argument
from lcm.io import atomic_path, write_json
from lcm.sampling import sampling_options


def settings_for(model, noise: list[float], guidance: list[float], eta: list[float],
                 plan_source: str | None = None) -> list[dict]:
    """The sampling settings a model kind takes: Base-LCM one per noise value, diffusion the guidance x eta grid
    (each with `plan_source` when given)."""
    if "noise" in sampling_options(model):
        return [{"noise": v} for v in noise]
    plans = {"plan_source": plan_source} if plan_source else {}
    return [{"guidance": g, "eta": e, **plans} for g, e in itertools.product(guidance, eta)]


def label(setting: dict) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in setting.items())


def problem_scores(texts: list[str], gold: str, ref: str) -> dict[str, float]:
    """One problem's k solutions (plans excluded, one step per line) -> its scores (module docstring)."""
    answers = [rm.parse_answer(t) for t in texts]
    correct = [rm.answers_match(a, gold) for a in answers]
    return {"accuracy": float(np.mean(correct)), "answered": float(np.mean([a is not None for a in answers])),
            "distinct_correct": float(len({t for t, c in zip(texts, correct) if c})),
            "distinct": float(len(set(texts))), "rouge_l": float(np.mean([rm.rouge_l(t, ref) for t in texts]))}


def sample_point(gen, prompts: list[list[str]], golds: list[str], refs: list[str], setting: dict, k: int,
                 max_steps: int, feedback: str = "decoded") -> dict[str, list[float]]:
    """One checkpoint at one setting: {score: per-problem values} (k samples per problem, seeded by problem)."""
    per_problem = []
    for i, (prompt, gold, ref) in enumerate(zip(prompts, golds, refs)):
        group = gen.generate([prompt], num_samples=k, seed=i, max_steps=max_steps, feedback=feedback, **setting)[0]
        group = group if k > 1 else [group]
        texts = ["\n".join(s.text for s in g.steps if not s.is_plan) for g in group]
        per_problem.append(problem_scores(texts, gold, ref))
    return {key: [p[key] for p in per_problem] for key in per_problem[0]}


def aggregate(by_seed: list[dict[str, list[float]]]) -> dict:
    """Seeds of one (system, setting) -> means over seeds with their std, and CIs over problems."""
    out = rm.over_seeds([float(np.mean(s["accuracy"])) for s in by_seed], [s["accuracy"] for s in by_seed])
    out.pop("per_problem_accuracy")
    for key in ("distinct_correct", "distinct", "answered", "rouge_l"):
        means = [float(np.mean(s[key])) for s in by_seed]
        out[key] = float(np.mean(means))
        out[f"{key}_std"] = float(np.std(means, ddof=1)) if len(means) > 1 else 0.0
    out["distinct_correct_ci"] = list(rm.bootstrap_ci(np.mean([s["distinct_correct"] for s in by_seed], axis=0)))
    return out


def run_frontier(config: str, systems: dict[str, list[str]], problems: int, k: int, max_steps: int,
                 noise: list[float], guidance: list[float], eta: list[float], plan_source: str | None = None,
                 feedback: str = "decoded", overrides: list[str] | None = None) -> dict:
    """{system: [{setting, scores}, ...]} over every checkpoint of every system (see the module docstring)."""
    from lcm.eval.compare import held_out_for
    from lcm.generate import ConceptGenerator
    from lcm.train.token_data import render_solution

    docs = held_out_for(systems, config, overrides or [], problems)
    if not docs or any(d.answer is None for d in docs):
        raise LCMError(f"{config} holds out no problems with answers: the frontier needs `#### answer` per problem")
    prompts, golds, refs = [list(d.prompt) for d in docs], [d.answer for d in docs], [render_solution(d) for d in docs]
    report = {"config": config, "overrides": overrides or [], "problems": len(docs), "k": k, "max_steps": max_steps,
              "feedback": feedback, "systems": {}}
    for name, ckpts in systems.items():
        gens = [ConceptGenerator.from_checkpoint(c) for c in ckpts]
        points = []
        for setting in settings_for(gens[0].model, noise, guidance, eta, plan_source):
            by_seed = [sample_point(g, prompts, golds, refs, setting, k, max_steps, feedback) for g in gens]
            points.append({"setting": setting, "label": label(setting), **aggregate(by_seed)})
        report["systems"][name] = {"checkpoints": [str(c) for c in ckpts], "points": points,
                                   "params": sum(p.numel() for p in gens[0].model.net.parameters())}
    return report


def markdown(report: dict) -> str:
    lines = [f"# Accuracy against diversity: {report['config']}", "",
             f"{report['problems']} held-out problems, k = {report['k']} samples each, at most {report['max_steps']} "
             f"steps, {report.get('feedback', 'decoded')} concepts fed back; mean ± std over the checkpoints (seeds) "
             "of each system, 95% bootstrap CI over problems.", "",
             "| system | setting | accuracy [95% CI] | distinct correct / problem [95% CI] | distinct / problem | "
             "answered | ROUGE-L |", "|---|---|---|---|---|---|---|"]
    for name, s in report["systems"].items():
        for q in s["points"]:
            lo, hi = q["accuracy_ci"]
            dlo, dhi = q["distinct_correct_ci"]
            lines.append(f"| {name} ({len(s['checkpoints'])} seeds, {s['params'] / 1e6:.2f}M) | {q['label']} | "
                         f"{q['accuracy']:.3f} ± {q['accuracy_std']:.3f} [{lo:.3f}, {hi:.3f}] | "
                         f"{q['distinct_correct']:.2f} ± {q['distinct_correct_std']:.2f} [{dlo:.2f}, {dhi:.2f}] | "
                         f"{q['distinct']:.2f} | {q['answered']:.3f} | {q['rouge_l']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, s in report["systems"].items():
        x = [q["accuracy"] for q in s["points"]]
        y = [q["distinct_correct"] for q in s["points"]]
        ax.errorbar(x, y, xerr=[q["accuracy_std"] for q in s["points"]],
                    yerr=[q["distinct_correct_std"] for q in s["points"]], marker="o", capsize=2, label=name)
        for xi, yi, q in zip(x, y, s["points"]):
            ax.annotate(q["label"], (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("accuracy per sample")
    ax.set_ylabel(f"distinct correct solutions per problem (of k = {report['k']})")
    ax.set_title("accuracy vs diversity over sampling settings (± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="lcm eval frontier", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="training config whose held-out problems are answered")
    p.add_argument("--system", nargs="+", action="append", required=True, metavar=("NAME", "CKPT"),
                   help="a system's name and its checkpoints (one per seed); repeat for each system")
    p.add_argument("--problems", type=int, default=100)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=32)
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0], help="Base-LCM settings")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0], help="diffusion settings")
    p.add_argument("--eta", type=float, nargs="+", default=[0.0, 1.0], help="diffusion settings")
    p.add_argument("--plan-source", choices=["sampled", "regressed"], default=None,
                   help="diffusion planning models: sampled or regressed plans at every setting (default: each "
                        "checkpoint's)")
    p.add_argument("--feedback", choices=["decoded", "predicted"], default="decoded",
                   help="what each generated concept is fed back as: its read-out sentence's embedding (default) or "
                        "the raw prediction (generate's `feedback`)")
    p.add_argument("--out", type=Path, default=Path("runs/frontier"))
    add_overrides_argument(p)
    ns = p.parse_args(argv)
    systems = {}
    for entry in ns.system:
        if entry[0] in systems:
            raise LCMError(f"--system {entry[0]!r} is given twice: list all its checkpoints after one --system")
        if len(entry) < 2:
            raise LCMError(f"--system {entry[0]!r} names no checkpoint: give --system NAME CKPT [CKPT ...]")
        missing = [c for c in entry[1:] if not Path(c).is_file()]
        if missing:
            raise LCMError(f"--system {entry[0]!r}: no checkpoint at {', '.join(missing)}")
        systems[entry[0]] = entry[1:]
    if ns.k < 1 or ns.problems < 1:
        raise LCMError(f"--k and --problems must be >= 1 (got {ns.k}, {ns.problems})")
    report = run_frontier(ns.config, systems, ns.problems, ns.k, ns.max_steps, ns.noise, ns.guidance, ns.eta,
                          ns.plan_source, ns.feedback, ns.overrides)
    ns.out.mkdir(parents=True, exist_ok=True)
    write_json(ns.out / "frontier.json", report)
    with atomic_path(ns.out / "frontier.md") as tmp:
        tmp.write_text(markdown(report), encoding="utf-8")
    plot(report, ns.out / "frontier.png")
    print(markdown(report))
    print(f"wrote {ns.out}/frontier.json, frontier.md, frontier.png")


if __name__ == "__main__":
    import sys

    from lcm.eval.cli import main as lcm_main

    lcm_main(["eval", "frontier", *sys.argv[1:]])
