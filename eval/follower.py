"""The zero-parameter encoder follower: how far a frozen-encoder lookup gets on a task with no training at all.

A control for every comparison (docs/metrics.md, docs/tasks.md). If it scores high, the task measures the
encoder's lexical similarity, not reasoning. It works on any list of `Document`s whose prompt ends with
"<entity fact>. <question>" (LogicChains, Forks):

- **facts** = prompt sentences but the last two; **start** = the second-to-last (the entity fact);
  the last (the question) is never walked;
- **walk**: from the start, step to the unvisited fact whose MiniLM embedding has the highest cosine to the
  query, never revisiting, until it lands on an *answer-bearing* fact or `budget` steps are spent (then it
  takes the answer-bearing fact closest to the last query). Query variants:
  `cosine` the last visited sentence; `novelty` the last minus half the one before (what the last step
  added: the new category word); `word` only facts that contain the last visited sentence's final word
  (string match of the category it reached, plural forms included), best cosine first, all facts when
  none does;
- **reading** (`AnswerReader`): with open answers (a word or phrase, e.g. a property) a fact bears the
  answer options it names and reads as the last one it names; with yes/no answers (True/False, Yes/No) a
  fact bears an answer when it names the question's last word and reads as negative when it has a negation.

Heuristic rows without an encoder show there is no cheap shortcut: the majority answer, the first / last
answer-bearing fact in the prompt, and a uniformly random answer-bearing fact (its expected accuracy).

    python -m lcm.eval.follower --source forks --n 500      # or: lcm eval follower --source logic
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lcm.errors import LCMError
from lcm.eval import reasoning_metrics as rm
from lcm.retrieval import unit_rows
from lcm.train.documents import Document

VARIANTS = ("cosine", "novelty", "word")
NEGATIONS = frozenset({"no", "not", "never", "none", "nothing", "neither", "nor"})
YES_NO = ({"true": True, "false": False}, {"yes": True, "no": False})
WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def same_word(a: str, b: str) -> bool:
    """One word the other plus a plural ending ("florp" / "florps", "impus" / "impuses")."""
    short, long = sorted((a, b), key=len)
    return len(short) >= 3 and long.startswith(short) and long[len(short):] in ("", "s", "es")


class AnswerReader:
    """Which facts bear an answer, and which answer each one gives (see the module docstring)."""

    def __init__(self, golds: list[str]):
        if not golds:
            raise LCMError("the follower needs documents with answers")
        self.options = sorted(set(golds))
        lowered = {g.lower() for g in golds}
        self.polarity = next((p for p in YES_NO if lowered <= set(p)), None)
        spelled = {g.lower(): g for g in golds}
        if self.polarity is not None:  # how this data spells each polarity ("True", "yes", ...)
            self.says = {v: spelled.get(k, k.capitalize()) for k, v in self.polarity.items()}
        self.patterns = [(g, re.compile(rf"\b{re.escape(g)}\b", re.IGNORECASE)) for g in self.options]

    def read(self, fact: str, question: str) -> str | None:
        """The answer `fact` gives to `question`, or None when it bears none."""
        if self.polarity is not None:
            target = (words(question) or [""])[-1]
            fact_words = words(fact)
            if target not in fact_words:
                return None
            return self.says[not NEGATIONS.intersection(fact_words)]
        found = [(m.start(), g) for g, pattern in self.patterns for m in pattern.finditer(fact)]
        return max(found)[1] if found else None


@dataclass
class Problem:
    """What the follower sees of a document: facts, the start sentence, the question, the gold answer."""

    facts: list[str]
    start: str
    question: str
    gold: str


def problem_of(doc: Document) -> Problem:
    if len(doc.prompt) < 3 or doc.answer is None:
        raise LCMError(f"the follower needs prompts of facts, an entity fact and a question, with an answer "
                       f"(document {doc.meta.get('index', '?')} has {len(doc.prompt)} prompt sentences)")
    return Problem(doc.prompt[:-2], doc.prompt[-2], doc.prompt[-1], doc.answer)


@dataclass
class Walk:
    """One walk: the facts it visited, in order (the answer-bearing fact it reads last), and its answer."""

    facts: list[str]
    answer: str | None


def walk(p: Problem, fact_vecs: np.ndarray, start_vec: np.ndarray, readings: list[str | None], variant: str,
         budget: int) -> Walk:
    """The follower's walk on one problem (see the module docstring). fact_vecs: (F, D) unit rows."""
    visited = np.zeros(len(p.facts), dtype=bool)
    trail, last, path = [start_vec], p.start, []
    for _ in range(min(budget, len(p.facts))):
        allowed = ~visited
        if variant == "word":
            tail = (words(last) or [""])[-1]
            named = allowed & np.array([any(same_word(tail, w) for w in words(f)) for f in p.facts])
            allowed = named if named.any() else allowed
        query = trail[-1] - 0.5 * trail[-2] if variant == "novelty" and len(trail) > 1 else trail[-1]
        scores = np.where(allowed, fact_vecs @ query, -np.inf)
        i = int(np.argmax(scores))
        visited[i], last = True, p.facts[i]
        trail.append(fact_vecs[i])
        path.append(p.facts[i])
        if readings[i] is not None:
            return Walk(path, readings[i])
    bearing = [i for i, r in enumerate(readings) if r is not None]
    if not bearing:
        return Walk(path, None)
    i = max(bearing, key=lambda i: float(fact_vecs[i] @ trail[-1]))  # out of budget: the closest answer
    return Walk(path + [p.facts[i]], readings[i])


def heuristics(problems: list[Problem], readings: list[list[str | None]]) -> dict[str, np.ndarray]:
    """Per-problem scores of the encoder-free shortcuts (the random pick scores its expected accuracy)."""
    majority = Counter(p.gold for p in problems).most_common(1)[0][0]
    bearing = [[r for r in rs if r is not None] for rs in readings]
    return {
        "majority answer": np.array([p.gold == majority for p in problems], dtype=float),
        "first answer-bearing fact": np.array([bool(b) and b[0] == p.gold for p, b in zip(problems, bearing)], float),
        "last answer-bearing fact": np.array([bool(b) and b[-1] == p.gold for p, b in zip(problems, bearing)], float),
        "random answer-bearing fact": np.array([np.mean([r == p.gold for r in b]) if b else 0.0
                                                for p, b in zip(problems, bearing)]),
    }


def read_problems(docs: list[Document]) -> tuple[list[Problem], list[list[str | None]]]:
    """Each document as the follower sees it, and the answer each of its facts gives (None: bears none)."""
    problems = [problem_of(d) for d in docs]
    reader = AnswerReader([p.gold for p in problems])
    return problems, [[reader.read(f, p.question) for f in p.facts] for p in problems]


def follower_walks(docs: list[Document], embed: Callable[[list[str]], np.ndarray], variants=VARIANTS,
                   budget: int | None = None) -> dict[str, list[Walk]]:
    """{variant: one walk per document} on `docs` (one `embed` call for all their sentences).

    embed: texts -> (N, D) embeddings (the frozen encoder, e.g. through `EmbeddingCache.get`).
    budget: most steps of a walk (default: as many as the problem has facts)."""
    problems, readings = read_problems(docs)
    texts = sorted({t for p in problems for t in (*p.facts, p.start)})
    row = {t: i for i, t in enumerate(texts)}
    vecs = unit_rows(np.asarray(embed(texts), dtype=np.float32))
    return {variant: [walk(p, vecs[[row[f] for f in p.facts]], vecs[row[p.start]], rs, variant,
                           budget or len(p.facts)) for p, rs in zip(problems, readings)] for variant in variants}


def follower_scores(docs: list[Document], embed: Callable[[list[str]], np.ndarray],
                    budget: int | None = None) -> dict[str, np.ndarray]:
    """Per-problem 0/1 scores of every follower variant and heuristic on `docs` (arguments: `follower_walks`)."""
    problems, readings = read_problems(docs)
    scores = {f"follower ({variant})": np.array([w.answer == p.gold for w, p in zip(walks, problems)], dtype=float)
              for variant, walks in follower_walks(docs, embed, budget=budget).items()}
    return scores | heuristics(problems, readings)


def by_hops(docs: list[Document], scores: np.ndarray) -> dict[int, tuple[float, int]]:
    """Accuracy and count per hop count, for sources that record `meta["hops"]`."""
    groups: dict[int, list[float]] = defaultdict(list)
    for doc, s in zip(docs, scores):
        if "hops" in doc.meta:
            groups[doc.meta["hops"]].append(s)
    return {h: (float(np.mean(v)), len(v)) for h, v in sorted(groups.items())}


def report(docs: list[Document], scores: dict[str, np.ndarray], title: str) -> str:
    """The printed table: accuracy with its 95% bootstrap CI per row, the chance rate, cosine accuracy by hops."""
    options = {d.answer for d in docs}
    lines = [f"{title}: {len(docs)} problems, {len(options)} answer options, chance {1 / len(options):.3f}"]
    for name, s in scores.items():
        lo, hi = rm.bootstrap_ci(s)
        lines.append(f"  {name:<28} {s.mean():.3f}  95% CI [{lo:.3f}, {hi:.3f}]")
    hops = by_hops(docs, scores["follower (cosine)"])
    if hops:
        lines.append("  follower (cosine) by hops:  " + "  ".join(f"{h}: {a:.2f} (n={n})" for h, (a, n) in hops.items()))
    return "\n".join(lines)


def source_of(name: str, n: int, seed: int, min_hops: int | None, max_hops: int | None):
    """The generator named on the command line, at its default hops unless given."""
    from lcm.train import Forks, LogicChains

    cls = {"forks": Forks, "logic": LogicChains}[name]
    hops = {k: v for k, v in (("min_hops", min_hops), ("max_hops", max_hops)) if v is not None}
    return cls(n=n, seed=seed, **hops)


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lcm eval follower", description="Accuracy of the zero-parameter "
                                     "encoder follower and of encoder-free heuristics on a generated task.")
    parser.add_argument("--source", choices=("forks", "logic"), default="forks")
    parser.add_argument("--n", type=int, default=500, help="problems")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-hops", type=int, default=None)
    parser.add_argument("--max-hops", type=int, default=None)
    parser.add_argument("--budget", type=int, default=None, help="most steps of a walk (default: all facts)")
    parser.add_argument("--max-chars", type=int, default=256)
    parser.add_argument("--cache", default=".cache/lcm", help="embedding cache folder (shared with `lcm fit`)")
    ns = parser.parse_args(args)
    if ns.budget is not None and ns.budget < 1:
        raise LCMError(f"--budget must be >= 1, got {ns.budget}")
    from lcm.encoders import SentenceTransformerEncoder
    from lcm.encoders.cache import EmbeddingCache

    source = source_of(ns.source, ns.n, ns.seed, ns.min_hops, ns.max_hops)
    docs = list(source.documents(ns.max_chars))
    cache = EmbeddingCache(ns.cache, SentenceTransformerEncoder(), show_progress=False)
    print(report(docs, follower_scores(docs, cache.get, ns.budget), source.describe()))


if __name__ == "__main__":
    from lcm.eval.cli import main as lcm_main

    lcm_main(["eval", "follower", *sys.argv[1:]])
