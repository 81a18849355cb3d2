"""Sampling every system of a comparison: k solutions per held-out problem, timed, as `Sample`s.

Concept models through `ConceptGenerator.generate`, the token baseline (a Hugging Face causal LM, `TokenLM`) with
temperature / top-p sampling or in Soft Thinking mode, and greedy decoding of every saved token-baseline checkpoint
for the entropy-performance curve.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from lcm.errors import LCMError
from lcm.eval import reasoning_metrics as rm
from lcm.eval.compare_config import CompareConfig, Sampling
from lcm.progress import progress_bar
from lcm.sampling import sampling_options


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
    stop_reason: str | None = None  # concept: end_of_text / repetition / max_steps; token: eos / max_tokens
    step_entropies: list[float] | None = None  # concept models: the step policy's entropy (nats) per prediction


def attach_step_embeddings(groups: list[list[Sample]], encoder) -> None:
    """Every system's steps embedded by the same encoder (one call over the unique step texts), so step
    trajectories and diversity compare like with like (a concept model's raw predictions carry its noise)."""
    lines = sorted({x for group in groups for s in group for x in s.steps})
    table = dict(zip(lines, encoder.encode(lines))) if lines else {}
    for group in groups:
        for s in group:
            s.step_emb = np.stack([table[x] for x in s.steps]) if s.steps else np.zeros((0, encoder.dim), np.float32)


def timed_per_problem(problems: list[str], label: str, show: bool, sample: Callable[[int, str], list]):
    """[sample(i, problem) for every problem] and the seconds spent inside `sample` (nothing else is timed)."""
    out, seconds = [], 0.0
    with progress_bar(len(problems), label, show) as advance:
        for i, problem in enumerate(problems):
            start = time.perf_counter()
            out.append(sample(i, problem))
            seconds += time.perf_counter() - start
            advance(1)
    return out, seconds


def concept_sample(g, model) -> Sample:
    """A `Generation` of a concept model as a Sample, with the hidden states that produced its concepts."""
    import torch

    steps = [s for s in g.steps if not s.is_plan]
    with torch.no_grad():
        h = model.hidden_states(torch.from_numpy(np.stack(g.inputs))[None].to(model.device))[0]
    return Sample(text="\n".join(s.text for s in steps), steps=[s.text for s in steps], step_emb=None,
                  hidden=h[g.prompt_concepts - 1: g.prompt_concepts - 1 + g.calls].float().cpu().numpy(),
                  forward_passes=g.calls, stop_reason=g.stop_reason, step_entropies=list(g.entropies) or None)


def concept_samples(ckpt: Path, problems: list[str] | list[list[str]], cfg: CompareConfig, sampling: Sampling,
                    show: bool, label: str, decoder=None) -> tuple[list[list[Sample]], float, dict]:
    """k samples per problem (its text, or its prompt sentences) from a concept checkpoint, read out by retrieval
    or by `decoder` (a `ConceptDecoder`); the seconds time generation only (not the read-back of hidden states and
    step embeddings)."""
    from lcm.generate import ConceptGenerator

    gen = ConceptGenerator.from_checkpoint(ckpt, device=cfg.device, decoder=decoder)
    kw = sampling.kwargs()

    def sample(i: int, problem) -> list:
        group = gen.generate([problem], num_samples=cfg.k, seed=cfg.seed + i, max_steps=cfg.max_steps, **kw)[0]
        return [group] if cfg.k == 1 else group

    generations, seconds = timed_per_problem(problems, label, show, sample)
    model = gen.model
    out = [[concept_sample(g, model) for g in group] for group in generations]
    attach_step_embeddings(out, gen.encoder)
    params = sum(p.numel() for p in model.net.parameters())
    has_noise = "noise" in sampling_options(model)  # Base-LCM: noise 0 is greedy
    return out, seconds, {"params": params, "model_class": type(model).__name__,
                          "denoiser_evals_per_call": model.denoiser_evals(**kw), "has_noise": has_noise}


TokenRun = Literal["sample", "greedy", "soft", "soft_noisy"]  # the token model's rows of a comparison


def token_keywords(cfg: CompareConfig, soft: bool = False, mode: TokenRun | None = None) -> dict:
    """The keywords of `TokenLM.generate` for one token-model row: "sample" (k samples at the token config's
    temperature / top-p), "greedy" (one argmax solution), "soft" (Soft Thinking at `cfg.soft_thinking` without noise:
    one solution, as the official evaluation runs it), "soft_noisy" (k samples, the concept token perturbed by
    `soft_thinking.noise`; Gumbel unless the config names Dirichlet, as the follow-up found Gumbel-Softmax the better
    randomness). `soft` is the older switch (True: "soft")."""
    mode = mode or ("soft" if soft else "sample")
    t, st = cfg.token, cfg.soft_thinking
    if mode == "sample":
        return dict(mode="sample", num_samples=cfg.k, temperature=t.temperature, top_p=t.top_p)
    if mode == "greedy":
        return dict(mode="greedy", num_samples=1)
    if mode == "soft":
        return dict(mode="soft", num_samples=1, soft=replace(st, noise="none"))
    if mode == "soft_noisy":
        return dict(mode="soft", num_samples=cfg.k, soft=st if st.noise != "none" else replace(st, noise="gumbel"))
    raise LCMError(f"token run mode {mode!r} is none of sample, greedy, soft, soft_noisy")


def token_samples(model, problems: list[str], cfg: CompareConfig, encoder, mode: TokenRun, show: bool,
                  label: str) -> tuple[list[list[Sample]], float]:
    """The token baseline's solutions per problem in one of `token_keywords`' modes: k sampled ("sample",
    "soft_noisy") or one ("greedy", "soft")."""
    from lcm.train.token_data import solution_steps

    kw = token_keywords(cfg, mode=mode)
    groups, seconds = timed_per_problem(problems, label, show, lambda i, problem: model.generate(
        problem, max_new_tokens=cfg.token.max_new_tokens, seed=cfg.seed + i, **kw))
    out = [[Sample(text="\n".join(solution_steps(s.text)), steps=solution_steps(s.text), step_emb=None,
                   hidden=s.hidden, forward_passes=s.forward_passes, entropies=s.entropies,
                   token_texts=s.token_texts, soft_tokens=s.soft_tokens, stop_reason=s.stop_reason)
            for s in group] for group in groups]
    attach_step_embeddings(out, encoder)
    return out, seconds


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
