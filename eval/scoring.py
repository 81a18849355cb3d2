"""Scoring the samples of one system: accuracy, pass@k, answered rate and stop reasons, text quality, rank,
diversity, entropy and cost.

Metric definitions: docs/metrics.md and `lcm.eval.reasoning_metrics`.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from lcm.eval import reasoning_metrics as rm
from lcm.eval.sampling_runs import Sample
from lcm.retrieval import unit_rows

NAN = float("nan")
STOP_REASONS = ("end_of_text", "repetition", "max_steps")  # a concept model's `Generation.stop_reason`
# a token model stops at <eos> (its end of text) or at max_new_tokens (its step cap): reported in the same columns
TOKEN_STOPS = {"eos": "end_of_text", "max_tokens": "max_steps"}


def mean_or_nan(values: list[float]) -> float:
    return float(np.mean(values)) if values else NAN


def ratio(total: float, count: float) -> float:
    return total / count if count else NAN


def summarize(groups: list[list[Sample]], golds: list[str], refs: list[str], seconds: float,
              hops: list[int] | None = None) -> dict:
    """Accuracy (with a bootstrap CI over problems, and per hop count when `hops` gives each problem's),
    pass@k, text quality, representation rank on matched units, step entropy, diversity and cost of one system."""
    k = len(groups[0])
    samples = [s for group in groups for s in group]
    acc = accuracy(groups, golds, hops)
    n_correct = acc.pop("n_correct")
    out = {**acc, **outcomes(samples), **cost(groups, seconds), "seconds_per_correct_sample": ratio(seconds, n_correct),
           "rouge_l": float(np.mean([rm.rouge_l(s.text, refs[i // k]) for i, s in enumerate(samples)])),
           "effective_rank_hidden": mean_or_nan([rm.effective_rank(s.hidden) for s in samples if len(s.hidden) >= 2]),
           "hidden_positions": float(np.mean([len(s.hidden) for s in samples])),
           "effective_rank_steps": mean_or_nan([rm.effective_rank(s.step_emb) for s in samples
                                                if len(s.step_emb) >= 2]),
           **step_units(samples)}
    if k > 1:
        out.update(diversity(groups))
    if samples[0].entropies is not None:
        ent = np.concatenate([s.entropies for s in samples])
        out["entropy_mean"] = float(ent.mean()) if len(ent) else NAN
        out["soft_token_share"] = sum(s.soft_tokens for s in samples) / max(len(ent), 1)
    return out


def accuracy(groups: list[list[Sample]], golds: list[str], hops: list[int] | None = None) -> dict:
    """Mean exact-match accuracy over all samples, its 95% bootstrap CI over problems, per hop count (when given),
    and the unbiased pass@j curve for j = 1..k."""
    k = len(groups[0])
    correct = [[rm.answers_match(rm.parse_answer(s.text), g) for s in group] for group, g in zip(groups, golds)]
    per_problem = [float(np.mean(c)) for c in correct]
    pass_curve = [float(np.mean([rm.pass_at_k(k, sum(c), j) for c in correct])) for j in range(1, k + 1)]
    out = {"accuracy": float(np.mean(correct)), "accuracy_ci": list(rm.bootstrap_ci(per_problem)),
           "pass_at_k": pass_curve[-1], "pass_curve": pass_curve, "k": k, "n_correct": int(np.sum(correct)),
           "per_problem_accuracy": per_problem}
    if hops is not None:
        out["accuracy_by_hops"] = rm.accuracy_by_hops(per_problem, hops)
    return out


def step_units(samples: list[Sample]) -> dict:
    """Entropy and effective rank on matched units, one per reasoning step: concept models' step-policy entropy
    per prediction and one state per concept; token models' line entropy (token entropies summed over a line) and
    the state at each line's last token (`reasoning_metrics.line_entropies`, `step_boundary_states`). Nats per
    step; ER and ERV (VERL) per solution, averaged."""
    entropies, states = [], []
    for s in samples:
        if s.entropies is not None and s.token_texts is not None:  # a token model
            entropies += rm.line_entropies(s.entropies, s.token_texts).tolist()
            states.append(rm.step_boundary_states(s.hidden, s.token_texts))
        else:
            entropies += list(s.step_entropies or [])
            states.append(s.hidden)
    ranks = [rm.effective_rank(h) for h in states if len(h) >= 2]
    erv = [rm.effective_rank_dynamics(h)[0] for h in states if len(h) >= 3]
    return {"step_entropy": mean_or_nan(entropies), "effective_rank_step_states": mean_or_nan(ranks),
            "erv_step_states": mean_or_nan(erv), "step_states": float(np.mean([len(h) for h in states]))}


def outcomes(samples: list[Sample]) -> dict:
    """How solutions end: the answered rate (share with an answer line `#### ...`) and the share of samples per
    stop reason, `stop_end_of_text` / `stop_repetition` / `stop_max_steps` (token models' eos / max_tokens mapped
    onto them; n/a when the samples do not record why they stopped)."""
    reasons = [getattr(s, "stop_reason", None) for s in samples]
    reasons = [TOKEN_STOPS.get(r, r) for r in reasons]
    unknown = {r for r in reasons if r is not None and r not in STOP_REASONS}
    if unknown:
        raise ValueError(f"unknown stop reasons {sorted(unknown)}; known: {STOP_REASONS + tuple(TOKEN_STOPS)}")
    recorded = None not in reasons
    return {"answered": float(np.mean([rm.parse_answer(s.text) is not None for s in samples])),
            **{f"stop_{r}": float(np.mean([x == r for x in reasons])) if recorded else NAN for r in STOP_REASONS}}


def cost(groups: list[list[Sample]], seconds: float) -> dict:
    """Wall time and main-network forward passes per problem, sample, step and correct sample."""
    samples = [s for group in groups for s in group]
    steps = sum(len(s.steps) for s in samples)
    fwd = sum(s.forward_passes for s in samples)
    # time: k samples of a problem run as one batch (Soft Thinking: one sample), on the same device
    return {"steps_per_solution": steps / len(samples),
            "seconds_per_problem": seconds / len(groups), "seconds_per_sample": seconds / len(samples),
            "seconds_per_step": ratio(seconds, steps),
            "forward_passes_per_problem": fwd / len(groups), "forward_passes_per_step": ratio(fwd, steps)}


def diversity(groups: list[list[Sample]]) -> dict:
    """Distinct-1/2, self-BLEU, share of distinct solutions and Vendi over the k samples of each problem."""
    k = len(groups[0])
    texts = [[s.text for s in g] for g in groups]
    vendi = [rm.vendi_score(np.stack([unit_rows(s.step_emb).mean(0) for s in g if s.steps])) for g in groups
             if sum(bool(s.steps) for s in g) >= 2]  # a solution's vector: its mean unit step embedding
    return {"distinct_1": float(np.mean([rm.distinct_n(t, 1) for t in texts])),
            "distinct_2": float(np.mean([rm.distinct_n(t, 2) for t in texts])),
            "self_bleu": float(np.mean([rm.self_bleu(t) for t in texts])),
            "distinct_solutions": float(np.mean([len(set(t)) / k for t in texts])),
            "vendi": mean_or_nan(vendi)}


def token_entropy_stats(stats: dict, groups: list[list[Sample]], threshold: float) -> None:
    """Forking-token share against a fixed entropy threshold and the most frequent forking tokens."""
    samples = [s for g in groups for s in g]
    ent = np.concatenate([s.entropies for s in samples])
    toks = [t for s in samples for t in s.token_texts]  # aligned with `ent`: one text per generated token
    share, top = rm.forking_tokens(ent, toks, threshold)
    stats.update({"forking_threshold": threshold, "forking_share": share,
                  "top_forking_tokens": [[repr(t), c] for t, c in top]})


def relative_cost(results: dict[str, dict], denoiser_evals_per_call: dict[str, int], baseline: str) -> None:
    """Denoiser passes per step of the concept systems, and every system's time against `baseline`."""
    for name, evals in denoiser_evals_per_call.items():
        results[name]["denoiser_evals_per_step"] = results[name]["forward_passes_per_step"] * evals
    base = results[baseline]
    for r in results.values():  # same device, one run
        r["time_per_problem_vs_token"] = r["seconds_per_problem"] / base["seconds_per_problem"]
        r["time_per_step_vs_token"] = r["seconds_per_step"] / base["seconds_per_step"]


def chance_accuracy(golds: list[str], docs: list | None = None) -> float | None:
    """Accuracy of guessing: the mean of 1 / the number of possible answers when every problem's task declares it
    (`meta["answer_options"]`: forks 24, logic chains 2; the held-out sample's majority share would overstate a
    24-way task), else of always answering the most frequent gold answer; None for open answers (gsm numbers)."""
    if docs and all(d.meta.get("answer_options") for d in docs):
        return float(np.mean([1 / d.meta["answer_options"] for d in docs]))
    top = Counter(golds).most_common(1)[0][1]
    return top / len(golds) if len(set(golds)) <= 10 else None
