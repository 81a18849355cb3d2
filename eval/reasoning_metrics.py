"""Metrics of the concept-vs-token comparison (definitions: docs/metrics.md).

Pure functions over numbers and strings, so each one is tested against hand-computed values.
"""
from __future__ import annotations

from collections import Counter
from functools import lru_cache

import numpy as np

from lcm.answers import ANSWER, answers_match, parse_answer, pass_at_k  # noqa: F401 - re-exported
from lcm.eval.text_metrics import tokens
from lcm.metrics import effective_rank, effective_rank_dynamics, vendi_score  # noqa: F401 - re-exported


def bootstrap_ci(values, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of `values` (one per problem: problems are the unit
    that is resampled, so k samples of one problem never count as k independent draws)."""
    x = np.asarray(values, dtype=np.float64)
    if not len(x):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(1)
    tail = (1.0 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def accuracy_by_hops(per_problem, hops) -> dict[str, float]:
    """Mean of per-problem scores for each hop count: {str(hops): mean}, in hop order."""
    per_problem, hops = np.asarray(per_problem, dtype=np.float64), np.asarray(hops)
    return {str(int(h)): float(per_problem[hops == h].mean()) for h in np.unique(hops)}


def accuracy_summary(per_problem, hops) -> dict:
    """Per-problem scores -> their mean, its 95% bootstrap CI over problems, and the mean per hop count."""
    scores = np.asarray(per_problem, dtype=np.float64)
    return {"accuracy": float(scores.mean()), "accuracy_ci": list(bootstrap_ci(scores)),
            "accuracy_by_hops": accuracy_by_hops(scores, hops)}


def fewest_hops(by_hops: dict[str, float]) -> float:
    """The accuracy at the fewest hops of an `accuracy_by_hops` dict."""
    return by_hops[min(by_hops, key=int)]


def over_seeds(accuracies: list[float], per_problem: list[list[float]]) -> dict:
    """One system's accuracy over seeds: the mean, `accuracy_std` (sample std; 0 for one seed), the seeds' own
    values, each problem's accuracy averaged over seeds, and the bootstrap CI over problems on those."""
    problems = np.mean(np.asarray(per_problem, dtype=np.float64), axis=0)
    return {"accuracy": float(np.mean(accuracies)), "accuracy_seeds": list(accuracies),
            "accuracy_std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0,
            "per_problem_accuracy": problems.tolist(), "accuracy_ci": list(bootstrap_ci(problems))}


# ---- token entropy -----------------------------------------------------------------------------------
def entropy_threshold(entropies: np.ndarray, rho: float = 0.2) -> float:
    """Entropy at the (1 - rho) quantile: tokens at or above it are the forking tokens."""
    return float(np.quantile(np.asarray(entropies, dtype=np.float64), 1.0 - rho))


def forking_tokens(entropies: np.ndarray, token_texts: list[str], threshold: float,
                   top: int = 10) -> tuple[float, list[tuple[str, int]]]:
    """(share of tokens with entropy >= threshold, the `top` most frequent such tokens with counts)."""
    h = np.asarray(entropies, dtype=np.float64)
    if len(h) != len(token_texts):
        raise ValueError(f"{len(h)} entropies for {len(token_texts)} tokens")
    if not len(h):
        return 0.0, []
    fork = h >= threshold
    counts = Counter(t for t, f in zip(token_texts, fork) if f)
    return float(fork.mean()), counts.most_common(top)


# ---- representation rank and diversity ------------------------------------------------------------
def step_boundary_states(hidden: np.ndarray, token_texts: list[str]) -> np.ndarray:
    """(n_steps, d) one token-model state per reasoning step: the state that produced each step's last token (a
    token holding a line break ends a step; the final token ends the last one). The token-side unit that matches
    a concept model's one state per step, so effective ranks compare like with like."""
    h = np.asarray(hidden)
    if len(h) != len(token_texts):
        raise ValueError(f"{len(h)} states for {len(token_texts)} tokens")
    ends = [i for i, t in enumerate(token_texts) if "\n" in t]
    if len(token_texts) and (not ends or ends[-1] != len(token_texts) - 1):
        ends.append(len(token_texts) - 1)
    return h[ends]


def line_entropies(entropies: np.ndarray, token_texts: list[str]) -> np.ndarray:
    """(n_steps,) a token model's entropy per reasoning step: the sum of its token entropies (nats) over each
    line, the step's tokens and the one that ends it. The token-side match of a concept policy's step entropy
    (`lcm.step_policy.step_entropy`): both are the uncertainty of producing one step."""
    h = np.asarray(entropies, dtype=np.float64)
    if len(h) != len(token_texts):
        raise ValueError(f"{len(h)} entropies for {len(token_texts)} tokens")
    out, total = [], 0.0
    for value, text in zip(h, token_texts):
        total += value
        if "\n" in text:
            out.append(total)
            total = 0.0
    if len(token_texts) and "\n" not in token_texts[-1]:
        out.append(total)
    return np.asarray(out)


def distinct_n(texts: list[str], n: int) -> float:
    """Li et al. (2016) distinct-n: unique n-grams pooled over `texts`, divided by the total number of generated
    tokens (their "divided by total number of generated words"), not by the number of n-grams."""
    toks = [tokens(t) for t in texts]
    grams = {tuple(t[i:i + n]) for t in toks for i in range(len(t) - n + 1)}
    total = sum(map(len, toks))
    return len(grams) / total if total else 0.0


def self_bleu(texts: list[str]) -> float:
    """Mean sacrebleu sentence BLEU (0-100) of each text against all the others as references."""
    import sacrebleu

    if len(texts) < 2:
        return float("nan")
    scores = [sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1:]).score for i, t in enumerate(texts)]
    return float(np.mean(scores))


# ---- text quality --------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _rouge_l_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 (longest common subsequence, beta = 1) by `rouge-score`, Google's reimplementation of Lin's
    ROUGE: "rougeL" over the whole text (newlines are just spaces), no stemming.

    Its tokenizer lowercases and keeps only runs of [a-z0-9]: punctuation is dropped and splits tokens
    ("3.5" -> "3", "5"; "don't" -> "don", "t"), numbers are kept, and non-ASCII letters are dropped ("café" ->
    "caf"). The hand-written LCS it replaces (`text_metrics.tokens`) kept case, counted every punctuation mark
    as a token and kept Unicode letters. Two texts without any token score 1.0 (rouge-score says 0.0 when
    either side is empty); one empty side scores 0.0."""
    from rouge_score.tokenizers import DefaultTokenizer

    if not DefaultTokenizer().tokenize(pred) and not DefaultTokenizer().tokenize(ref):
        return 1.0
    return float(_rouge_l_scorer().score(ref, pred)["rougeL"].fmeasure)


# ---- entropy-performance curve -------------------------------------------------------------------
def fit_entropy_performance(entropy: list[float], score: list[float]) -> dict[str, float]:
    """Least-squares fit of R = -a * exp(H) + b with a >= 0 (Cui et al.: performance falls as entropy is spent,
    so a negative a is not the law) over checkpoints; a, b, R^2 and whether the bound a = 0 is active.

    The problem is convex in (a, b); when the unconstrained optimum has a < 0 the constrained one lies on a = 0,
    where b is the mean score (R^2 = 0): then the data show no entropy-performance relation of this form."""
    h, r = np.asarray(entropy, dtype=np.float64), np.asarray(score, dtype=np.float64)
    if len(h) < 2 or len(h) != len(r):
        raise ValueError(f"need >= 2 (entropy, score) pairs of equal length, got {len(h)} and {len(r)}")
    design = np.stack([-np.exp(h), np.ones_like(h)], axis=1)  # (N, 2)
    (a, b), *_ = np.linalg.lstsq(design, r, rcond=None)
    bound = bool(a < 0)
    if bound:
        a, b = 0.0, float(r.mean())
    resid = r - design @ np.array([a, b])
    total = ((r - r.mean()) ** 2).sum()
    r2 = 1.0 - (resid ** 2).sum() / total if total > 0 else float("nan")
    return {"a": float(a), "b": float(b), "r2": float(r2), "a_at_bound": bound}
