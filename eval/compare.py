"""Concept models vs a token baseline of equal size on the same held-out problems: one command, one report.

    HF_HUB_OFFLINE=1 lcm eval compare -c eval/configs/logic.yaml      # or python -m lcm.eval.compare -c ...

Trains what is missing with `lcm fit` (finished runs are reused), then for every system -- each concept
model of the config, the token GPT (temperature / top-p sampling) and the same GPT in Soft Thinking mode --
generates k solutions per held-out problem on one device, and writes to `out_dir`: `metrics.json`,
`report.md` and PNG plots. Metric definitions: DESIGN.md section 3 and `lcm.eval.reasoning_metrics`.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import yaml

from lcm.errors import LCMError
from lcm.eval import reasoning_metrics as rm
from lcm.io import atomic_path, write_json
from lcm.progress import progress_bar

SAMPLING_KEYS = {"noise", "guidance", "diffusion_steps"}


@dataclass
class ConceptSystem:
    name: str
    config: str
    sampling: dict = field(default_factory=dict)  # generate() keywords: noise (Base-LCM), guidance, diffusion_steps

    def __post_init__(self) -> None:
        if not isinstance(self.sampling, dict) or set(self.sampling) - SAMPLING_KEYS:
            raise LCMError(f"concept system {self.name!r}: sampling must be a mapping with keys from "
                           f"{sorted(SAMPLING_KEYS)}, got {self.sampling!r}")


@dataclass
class TokenSystem:
    config: str
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 256


@dataclass
class SoftThinking:
    top_k: int = 30
    top_p: float = 0.95
    cold_stop_entropy: float = 0.01
    cold_stop_patience: int = 16


@dataclass
class CompareConfig:
    """One comparison: systems, held-out problems, samples per problem, where the report goes."""

    name: str
    out_dir: str
    concept: list[ConceptSystem]
    token: TokenSystem
    soft_thinking: SoftThinking = field(default_factory=SoftThinking)
    problems: int = 100  # held-out test problems (the first n of the shared test split)
    k: int = 8  # samples per problem (pass@k, diversity)
    max_steps: int = 24  # concept steps per solution (plans included)
    seed: int = 0  # training and sampling seed
    device: str = "cpu"
    runs_dir: str = "runs/compare"
    train_overrides: list[str] = field(default_factory=list)  # appended to every `lcm fit` (e.g. a GPU size)
    curve_problems: int = 50  # problems per checkpoint for the entropy-performance curve (greedy)
    show_progress: bool = True

    @classmethod
    def load(cls, path: str | Path) -> "CompareConfig":
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise LCMError(f"cannot read compare config {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
        if not isinstance(raw, dict):
            raise LCMError(f"compare config {path} is not a YAML mapping")
        return _build(cls, raw, str(path))


def _build(cls, raw: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise LCMError(f"{where}: unknown key(s) {sorted(unknown)} (allowed: {sorted(known)})")
    kw = dict(raw)
    nested = {"token": TokenSystem, "soft_thinking": SoftThinking}
    for key, sub in nested.items():
        if key in kw:
            kw[key] = _build(sub, kw[key] or {}, f"{where}: {key}")
    if "concept" in kw:
        kw["concept"] = [_build(ConceptSystem, c, f"{where}: concept") for c in kw["concept"] or []]
    try:
        return cls(**kw)
    except TypeError as e:
        raise LCMError(f"{where}: {e}") from e


# ---- per-system evaluation ---------------------------------------------------------------------------
@dataclass
class Sample:
    """One generated solution, whatever system wrote it."""

    text: str  # steps, one per line (plans excluded)
    steps: list[str]
    step_emb: np.ndarray | None  # (S, D) encoder embeddings of the step texts (same encoder for every system)
    hidden: np.ndarray  # (T, d) final-layer hidden states that produced the solution
    forward_passes: int  # network evaluations of the main model
    entropies: np.ndarray | None = None  # token systems: (n,) per-token entropy
    token_texts: list[str] | None = None
    soft_tokens: int = 0  # Soft Thinking: tokens generated as probability-weighted embeddings


def attach_step_embeddings(groups: list[list[Sample]], encoder) -> None:
    """Every system's steps embedded by the same encoder (one call over the unique step texts), so step
    trajectories and diversity compare like with like (a concept model's raw predictions carry its noise)."""
    lines = sorted({x for group in groups for s in group for x in s.steps})
    table = dict(zip(lines, encoder.encode(lines))) if lines else {}
    for group in groups:
        for s in group:
            s.step_emb = np.stack([table[x] for x in s.steps]) if s.steps else np.zeros((0, encoder.dim), np.float32)


def concept_samples(ckpt: Path, problems: list[str], cfg: CompareConfig, sampling: dict, show: bool,
                    label: str) -> tuple[list[list[Sample]], float, dict]:
    import torch

    from lcm.generate import ConceptGenerator

    gen = ConceptGenerator.from_checkpoint(ckpt, device=cfg.device)
    model = gen.model
    out, seconds = [], 0.0
    with progress_bar(len(problems), label, show) as advance:
        for i, problem in enumerate(problems):
            start = time.perf_counter()
            group = gen.generate(problem, num_samples=cfg.k, seed=cfg.seed + i, max_steps=cfg.max_steps, **sampling)
            seconds += time.perf_counter() - start
            group = [group] if cfg.k == 1 else group
            rows = []
            for g in group:
                steps = [s for s in g.steps if not s.is_plan]
                with torch.no_grad():  # the states that produced each generated concept
                    h = model.hidden_states(torch.from_numpy(np.stack(g.inputs))[None].to(model.device))[0]
                rows.append(Sample(text="\n".join(s.text for s in steps), steps=[s.text for s in steps], step_emb=None,
                                   hidden=h[g.prompt_concepts - 1: g.prompt_concepts - 1 + g.calls].float().cpu().numpy(),
                                   forward_passes=g.calls))
            out.append(rows)
            advance(1)
    attach_step_embeddings(out, gen.encoder)
    params = sum(p.numel() for p in model.net.parameters())
    return out, seconds, {"params": params, "model_class": type(model).__name__,
                          "denoiser_evals_per_call": model.denoiser_evals(**sampling)}


def token_samples(model, problems: list[str], cfg: CompareConfig, encoder, soft: bool, show: bool,
                  label: str) -> tuple[list[list[Sample]], float]:
    from lcm.train.token_data import solution_steps

    t, st = cfg.token, cfg.soft_thinking
    kwargs = (dict(mode="soft", num_samples=1, soft_top_k=st.top_k, soft_top_p=st.top_p,
                   cold_stop_entropy=st.cold_stop_entropy, cold_stop_patience=st.cold_stop_patience)
              if soft else dict(mode="sample", num_samples=cfg.k, temperature=t.temperature, top_p=t.top_p))
    out, seconds = [], 0.0
    with progress_bar(len(problems), label, show) as advance:
        for i, problem in enumerate(problems):
            start = time.perf_counter()
            group = model.generate(problem, max_new_tokens=t.max_new_tokens, seed=cfg.seed + i, **kwargs)
            seconds += time.perf_counter() - start
            out.append([Sample(text="\n".join(solution_steps(s.text)), steps=solution_steps(s.text), step_emb=None,
                               hidden=s.hidden, forward_passes=s.forward_passes, entropies=s.entropies,
                               token_texts=s.token_texts, soft_tokens=s.soft_tokens) for s in group])
            advance(1)
    attach_step_embeddings(out, encoder)
    return out, seconds


def summarize(groups: list[list[Sample]], golds: list[str], refs: list[str], seconds: float) -> dict:
    """Accuracy, pass@k, text quality, representation rank, diversity and cost of one system."""
    n_problems, k = len(groups), len(groups[0])
    correct = [[rm.answers_match(rm.parse_answer(s.text), g) for s in group] for group, g in zip(groups, golds)]
    pass_curve = [float(np.mean([rm.pass_at_k(k, sum(c), j) for c in correct])) for j in range(1, k + 1)]
    samples = [s for group in groups for s in group]
    steps = sum(len(s.steps) for s in samples)
    n_correct = int(np.sum(correct))
    nan = float("nan")
    ranks = [rm.effective_rank(s.hidden) for s in samples if len(s.hidden) >= 2]
    traj = [rm.effective_rank(s.step_emb) for s in samples if len(s.step_emb) >= 2]
    fwd = sum(s.forward_passes for s in samples)
    out = {
        "accuracy": float(np.mean(correct)), "pass_at_k": pass_curve[-1], "pass_curve": pass_curve, "k": k,
        "answered": float(np.mean([rm.parse_answer(s.text) is not None for s in samples])),
        "rouge_l": float(np.mean([rm.rouge_l(s.text, refs[i // k]) for i, s in enumerate(samples)])),
        "effective_rank_hidden": float(np.mean(ranks)) if ranks else nan,
        "hidden_positions": float(np.mean([len(s.hidden) for s in samples])),
        "effective_rank_steps": float(np.mean(traj)) if traj else nan,
        "steps_per_solution": steps / len(samples),
        # time: k samples of a problem run as one batch (Soft Thinking: one sample), on the same device
        "seconds_per_problem": seconds / n_problems,
        "seconds_per_sample": seconds / len(samples),
        "seconds_per_step": seconds / steps if steps else nan,
        "seconds_per_correct_sample": seconds / n_correct if n_correct else nan,
        "forward_passes_per_problem": fwd / n_problems,
        "forward_passes_per_step": fwd / steps if steps else nan,
    }
    if k > 1:
        def solution_vec(s: Sample) -> np.ndarray:  # mean unit step embedding
            e = s.step_emb / np.maximum(np.linalg.norm(s.step_emb, axis=1, keepdims=True), 1e-12)
            return e.mean(0)

        vendi = [rm.vendi_score(np.stack([solution_vec(s) for s in g if s.steps])) for g in groups
                 if sum(bool(s.steps) for s in g) >= 2]
        out.update({
            "distinct_1": float(np.mean([rm.distinct_n([s.text for s in g], 1) for g in groups])),
            "distinct_2": float(np.mean([rm.distinct_n([s.text for s in g], 2) for g in groups])),
            "self_bleu": float(np.mean([rm.self_bleu([s.text for s in g]) for g in groups])),
            "distinct_solutions": float(np.mean([len({s.text for s in g}) / k for g in groups])),
            "vendi": float(np.mean(vendi)) if vendi else nan,
        })
    if samples[0].entropies is not None:
        ent = np.concatenate([s.entropies for s in samples])
        out["entropy_mean"] = float(ent.mean()) if len(ent) else nan
        out["soft_token_share"] = sum(s.soft_tokens for s in samples) / max(len(ent), 1)
    return out


def token_entropy_stats(stats: dict, groups: list[list[Sample]], threshold: float) -> None:
    samples = [s for g in groups for s in g]
    ent = np.concatenate([s.entropies for s in samples])
    toks = [t for s in samples for t in s.token_texts]  # aligned with `ent`: one text per generated token
    share, top = rm.forking_tokens(ent, toks, threshold)
    stats.update({"forking_threshold": threshold, "forking_share": share,
                  "top_forking_tokens": [[repr(t), c] for t, c in top]})


def entropy_curve(run: Path, problems: list[str], golds: list[str], cfg: CompareConfig, show: bool) -> dict:
    """Greedy accuracy and mean token entropy of every saved token-baseline checkpoint; fit R = -a exp(H) + b."""
    from lcm.token_model import TokenLM

    ckpts = sorted((run / "checkpoints").glob("epoch*.ckpt"))
    points = []
    with progress_bar(len(ckpts) * len(problems), "entropy curve", show) as advance:
        for ckpt in ckpts:
            model = TokenLM.from_checkpoint(ckpt, device=cfg.device)
            ent, right = [], []
            for problem, gold in zip(problems, golds):
                s = model.generate(problem, mode="greedy", max_new_tokens=cfg.token.max_new_tokens)[0]
                ent.append(s.entropies.mean())
                right.append(rm.answers_match(rm.parse_answer(s.text), gold))
                advance(1)
            points.append({"checkpoint": ckpt.name, "entropy": float(np.mean(ent)), "accuracy": float(np.mean(right))})
    curve = {"points": points}
    if len(points) >= 3:  # two points fit two parameters exactly (R^2 = 1 says nothing)
        curve["fit"] = rm.fit_entropy_performance([p["entropy"] for p in points], [p["accuracy"] for p in points])
    return curve


# ---- the whole comparison ------------------------------------------------------------------------------
def run_compare(cfg: CompareConfig) -> dict:
    from lcm.encoders import SentenceTransformerEncoder
    from lcm.eval.planning_ablation import train_run
    from lcm.token_model import TokenLM
    from lcm.train.cli import make_cli
    from lcm.train.token_data import render_solution

    if not cfg.concept:
        raise LCMError("the compare config lists no concept systems")
    if cfg.k < 1 or cfg.problems < 1:
        raise LCMError(f"k and problems must be >= 1 (got k={cfg.k}, problems={cfg.problems})")
    root, out = Path(cfg.runs_dir) / cfg.name, Path(cfg.out_dir)
    docs = make_cli(["-c", cfg.token.config, *cfg.train_overrides], run=False).datamodule.documents("test")
    docs = docs[: cfg.problems]
    if not docs:
        raise LCMError(f"{cfg.token.config} holds out no test problems; raise data test_fraction or add documents")
    problems, golds, refs = [d.prompt_text for d in docs], [d.answer for d in docs], [render_solution(d) for d in docs]
    if any(g is None for g in golds):
        raise LCMError("held-out documents without an answer: accuracy needs a `#### answer` per problem")
    show = cfg.show_progress
    runs = {s.name: train_run(s.config, cfg.seed, root, label=s.name, overrides=cfg.train_overrides)
            for s in cfg.concept}
    token_run = train_run(cfg.token.config, cfg.seed, root, label="token GPT", overrides=cfg.train_overrides)
    encoder = SentenceTransformerEncoder()
    results, info = {}, {}
    for s in cfg.concept:
        dm_test = make_cli(["-c", s.config, *cfg.train_overrides], run=False).datamodule.documents("test")
        if [d.prompt_text for d in dm_test[: cfg.problems]] != problems:
            raise LCMError(f"{s.config} and {cfg.token.config} hold out different problems: use one data source")
        groups, seconds, meta = concept_samples(runs[s.name] / "checkpoints" / "best.ckpt", problems, cfg, s.sampling,
                                                show, s.name)
        results[s.name] = summarize(groups, golds, refs, seconds)
        info[s.name] = {"config": s.config, "sampling": s.sampling, **meta, "load_avg_1min": os.getloadavg()[0]}
    model = TokenLM.from_checkpoint(token_run / "checkpoints" / "best.ckpt", device=cfg.device)
    token_groups, seconds = token_samples(model, problems, cfg, encoder, soft=False, show=show, label="token GPT")
    results["token GPT"] = summarize(token_groups, golds, refs, seconds)
    token_load = os.getloadavg()[0]  # other processes on the machine slow every system; recorded, not hidden
    soft_groups, seconds = token_samples(model, problems, cfg, encoder, soft=True, show=show, label="Soft Thinking")
    results["Soft Thinking"] = summarize(soft_groups, golds, refs, seconds)
    threshold = rm.entropy_threshold(np.concatenate([s.entropies for g in token_groups for s in g]))
    for name, groups in (("token GPT", token_groups), ("Soft Thinking", soft_groups)):
        token_entropy_stats(results[name], groups, threshold)
    token_info = {"config": cfg.token.config, "params": model.num_params(), "temperature": cfg.token.temperature,
                  "top_p": cfg.token.top_p}
    info["token GPT"] = {**token_info, "load_avg_1min": token_load}
    info["Soft Thinking"] = {**token_info, "soft_thinking": vars(cfg.soft_thinking), "deterministic": True,
                             "load_avg_1min": os.getloadavg()[0]}
    curve = entropy_curve(token_run, problems[: cfg.curve_problems], golds[: cfg.curve_problems], cfg, show)
    for s in cfg.concept:
        r = results[s.name]
        r["denoiser_evals_per_step"] = r["forward_passes_per_step"] * info[s.name]["denoiser_evals_per_call"]
    base = results["token GPT"]
    for name, r in results.items():  # cost against the token baseline, same device
        r["time_per_problem_vs_token"] = r["seconds_per_problem"] / base["seconds_per_problem"]
        r["time_per_step_vs_token"] = r["seconds_per_step"] / base["seconds_per_step"]
    histograms = {name: np.concatenate([s.entropies for g in groups for s in g]).tolist()
                  for name, groups in (("token GPT", token_groups), ("Soft Thinking", soft_groups))}
    report = {"name": cfg.name, "problems": len(problems), "k": cfg.k, "seed": cfg.seed, "device": cfg.device,
              "systems": info, "results": results, "entropy_curve": curve,
              "chance_accuracy": chance_accuracy(golds)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", finite_or_null(report))
    plots(out, report, histograms)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(report), encoding="utf-8")
    return report


def finite_or_null(obj):
    """NaN/inf -> None, so metrics.json is strict JSON (n/a metrics, e.g. a rank of fewer than 2 states)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_null(v) for v in obj]
    return obj


def chance_accuracy(golds: list[str]) -> float | None:
    """Accuracy of always answering the most frequent gold answer (0.5 for balanced True/False)."""
    from collections import Counter

    top = Counter(golds).most_common(1)[0][1]
    return top / len(golds) if len(set(golds)) <= 10 else None


# ---- report ---------------------------------------------------------------------------------------------
COLUMNS = (("accuracy", "acc", ".3f"), ("pass_at_k", "pass@k", ".3f"), ("rouge_l", "ROUGE-L", ".3f"),
           ("forking_share", "forking share", ".3f"), ("entropy_mean", "mean H", ".3f"),
           ("effective_rank_hidden", "ER hidden", ".2f"), ("effective_rank_steps", "ER steps", ".2f"),
           ("distinct_2", "distinct-2", ".3f"), ("self_bleu", "self-BLEU", ".1f"), ("vendi", "Vendi", ".2f"),
           ("steps_per_solution", "steps", ".1f"), ("seconds_per_problem", "s/problem", ".3f"),
           ("seconds_per_sample", "s/sample", ".3f"), ("seconds_per_correct_sample", "s/correct", ".3f"),
           ("seconds_per_step", "s/step", ".4f"), ("time_per_step_vs_token", "step time vs token", ".2f"),
           ("time_per_problem_vs_token", "problem time vs token", ".2f"),
           ("forward_passes_per_step", "fwd/step", ".1f"), ("denoiser_evals_per_step", "denoiser/step", ".0f"),
           ("soft_token_share", "soft share", ".2f"))


def table(report: dict) -> list[str]:
    head = "| system | params | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, r in report["results"].items():
        cells = [f"{r[key]:{fmt}}" if isinstance(r.get(key), float) and np.isfinite(r[key]) else "n/a"
                 for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | {report['systems'][name]['params'] / 1e6:.2f}M | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    r, k = report["results"], report["k"]
    chance = report["chance_accuracy"]
    lines = [f"# Concept vs token: {report['name']}", "",
             f"{report['problems']} held-out problems, k = {k} samples per problem, seed {report['seed']}, "
             f"device {report['device']}." + (f" Chance accuracy (majority answer): {chance:.3f}." if chance else ""),
             "", *table(report), "",
             "- acc: mean over all samples (unbiased pass@1); pass@k with the unbiased estimator over k samples.",
             "- Soft Thinking is deterministic: one sample per problem, so its pass@k is its pass@1 and it has no "
             "diversity columns.",
             "- forking share: share of generated tokens at or above the token GPT's 80th-percentile entropy "
             f"({r['token GPT']['forking_threshold']:.3f} nats). Concept models have no token softmax in the "
             "reasoning loop: n/a.",
             "- ER hidden: effective rank of the final-layer states over one solution's generated positions (tokens "
             "for the GPT, concepts for concept models -- different position counts, see hidden_positions); "
             "ER steps: of the step-embedding trajectory.",
             "- distinct-2: unique / total bigrams pooled over the k solutions of a problem; self-BLEU 0-100 (lower "
             "= more diverse); Vendi over the k solutions' mean step embeddings.",
             "- Time: the k samples of a problem run as one batch on the same device (Soft Thinking: one sample, "
             "batch 1); s/correct = wall time per correct sample. fwd/step: main-network evaluations per reasoning "
             "step -- one new position per token for the GPT (KV cache), the whole concept sequence per call for "
             "concept models (no KV cache); denoiser/step: the diffusion model's DDIM denoiser passes (CFG doubles "
             "the rows). Retrieval and the encoder are in the wall time, not in the counts.",
             "- soft share: share of Soft Thinking tokens produced as probability-weighted embeddings before a cold "
             "stop.", ""]
    for name in ("token GPT", "Soft Thinking"):
        top = ", ".join(f"{t} ({c})" for t, c in r[name]["top_forking_tokens"])
        lines.append(f"Top forking tokens, {name}: {top}")
    curve = report["entropy_curve"]
    if "fit" in curve:
        f = curve["fit"]
        lines += ["", f"Entropy-performance curve over {len(curve['points'])} token-GPT checkpoints: "
                      f"R = -{f['a']:.4f}·exp(H) + {f['b']:.4f}, R² = {f['r2']:.3f}."]
    lines += ["", "Plots: entropy_histogram.png, accuracy_vs_samples.png, diversity.png, entropy_curve.png", ""]
    return "\n".join(lines)


def plots(out: Path, report: dict, histograms: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> None:
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)

    res = report["results"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, h in histograms.items():
        ax.hist(h, bins=50, alpha=0.6, label=name, density=True)
    ax.axvline(res["token GPT"]["forking_threshold"], color="k", ls="--", label="80th percentile (token GPT)")
    ax.set_xlabel("token entropy (nats)")
    ax.set_ylabel("density")
    ax.legend()
    save(fig, "entropy_histogram.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, r in res.items():
        ax.plot(range(1, len(r["pass_curve"]) + 1), r["pass_curve"], marker="o", label=name)
    if report["chance_accuracy"]:
        ax.axhline(report["chance_accuracy"], color="grey", ls=":", label="majority answer")
    ax.set_xlabel("samples k")
    ax.set_ylabel("pass@k")
    ax.legend()
    save(fig, "accuracy_vs_samples.png")

    names = [n for n in res if "distinct_2" in res[n]]  # none when k = 1
    metrics = (("distinct_2", "distinct-2"), ("distinct_solutions", "distinct solutions"), ("vendi", "Vendi / k"))
    if names:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            vals = [res[name][m] / (report["k"] if m == "vendi" else 1) for m, _ in metrics]
            ax.bar(np.arange(len(metrics)) + j * width, vals, width, label=name)
        ax.set_xticks(np.arange(len(metrics)) + width * (len(names) - 1) / 2, [m[1] for m in metrics])
        ax.legend()
        save(fig, "diversity.png")

    pts = report["entropy_curve"]["points"]
    if not pts:  # no epoch*.ckpt in the token run
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter([p["entropy"] for p in pts], [p["accuracy"] for p in pts], label="checkpoints")
    if "fit" in report["entropy_curve"]:
        f = report["entropy_curve"]["fit"]
        xs = np.linspace(min(p["entropy"] for p in pts), max(p["entropy"] for p in pts), 50)
        ax.plot(xs, -f["a"] * np.exp(xs) + f["b"], label=f"fit, R²={f['r2']:.2f}")
    ax.set_xlabel("mean token entropy (nats)")
    ax.set_ylabel("greedy accuracy")
    ax.legend()
    save(fig, "entropy_curve.png")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="lcm eval compare", description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", required=True, help="compare config (eval/configs/*.yaml)")
    p.add_argument("--problems", type=int, default=None, help="override the number of held-out problems")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    cfg = CompareConfig.load(args.config)
    if args.problems is not None:
        cfg.problems = args.problems
    cfg.show_progress = cfg.show_progress and not args.no_progress
    report = run_compare(cfg)
    print("\n".join(table(report)))
    print(f"wrote {cfg.out_dir}/metrics.json, report.md and plots")


if __name__ == "__main__":
    import sys

    from lcm.eval.cli import main as lcm_main

    lcm_main(["eval", "compare", *sys.argv[1:]])  # one error line for bad input, as `lcm eval compare`
