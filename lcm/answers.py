"""Final answers of generated solutions: the verifiable reward of RL and the accuracy of every comparison.

A solution's answer is its last `#### X` line (gsm_symbolic's and the forks task's answer marker); answers match
exactly after trimming, numbers by value. Both kinds of model are scored by these two functions alone.
"""
from __future__ import annotations

import math
import re

ANSWER = re.compile(r"####[ \t]*(\S.*?)[ \t]*$", re.MULTILINE)


def parse_answer(text: str) -> str | None:
    """The final answer of a solution: the last `#### X` line, or None when there is none."""
    found = ANSWER.findall(text)
    return found[-1].strip() if found else None


def answers_match(pred: str | None, gold: str) -> bool:
    """Exact match after trimming; numbers compare by value ("1,200" == "1200.0")."""
    if pred is None:
        return False
    p, g = pred.replace(",", "").strip(), gold.replace(",", "").strip()
    try:
        return math.isclose(float(p), float(g), rel_tol=0, abs_tol=1e-9)
    except ValueError:
        return p.lower() == g.lower()


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
