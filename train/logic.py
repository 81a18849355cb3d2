"""Logic chains: an offline generator of multi-hop deduction problems whose steps are sentences.

ProntoQA-style: fictional categories linked by rules ("Every wumpus is a yumpus."), one property rule
at the end of the chain ("No zumpus is red."), and a question "True or false: Alex is red." A decoy chain
of the same length over other categories ends in the same property with the opposite polarity, so the
prompt always holds one positive and one negative rule about the asked property, in chains of the same
shape: only following the chain from the entity's category decides the answer (no counting shortcut).
An unrelated property rule on a random category adds noise. The solution walks the chain one hop per
paragraph (the rule, then what follows for the entity) and ends with `#### True` or `#### False`;
answers are balanced, so chance accuracy is 0.5. Unlike gsm_symbolic, every step is a natural-language
sentence and no arithmetic is needed.
"""
from __future__ import annotations

import random
from typing import Iterator

from lcm.errors import LCMError
from lcm.text import cap_all
from lcm.train.corpus import CorpusSource
from lcm.train.documents import Document

CATEGORIES = ("wumpus", "yumpus", "zumpus", "dumpus", "rompus", "numpus", "tumpus", "vumpus", "impus", "jompus",
              "gorpus", "shumpus", "lempus", "sterpus", "grimpus", "lorpus", "brimpus", "timpus")
PROPERTIES = ("red", "blue", "green", "hot", "cold", "small", "large", "happy", "sad", "bright", "dull", "fast",
              "slow", "wooden", "metallic", "sweet", "sour", "loud", "quiet", "shy")
NAMES = ("Alex", "Sam", "Max", "Fae", "Rex", "Wren", "Polly", "Stella", "Sally", "Jack")


def a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def property_rule(category: str, prop: str, holds: bool) -> str:
    return f"Every {category} is {prop}." if holds else f"No {category} is {prop}."


def logic_problem(rng: random.Random, hops: int) -> tuple[list[str], list[list[str]], str]:
    """(prompt sentences, solution paragraphs, answer "True"/"False") of one problem."""
    cats = rng.sample(CATEGORIES, 2 * (hops + 1))
    chain, decoy = cats[: hops + 1], cats[hops + 1:]
    prop, other_prop = rng.sample(PROPERTIES, 2)
    holds = rng.random() < 0.5
    name = rng.choice(NAMES)

    def links(c: list[str]) -> list[str]:
        return [f"Every {x} is {a(y)}." for x, y in zip(c, c[1:])]

    final = property_rule(chain[-1], prop, holds)
    facts = links(chain) + [final] + links(decoy) + [property_rule(decoy[-1], prop, not holds),
                                                     property_rule(rng.choice(cats), other_prop, rng.random() < 0.5)]
    rng.shuffle(facts)
    prompt = facts + [f"{name} is {a(chain[0])}.", f"True or false: {name} is {prop}."]
    paragraphs = [[link, f"So {name} is {a(y)}."] for link, y in zip(links(chain), chain[1:])]
    paragraphs.append([final, f"So {name} is {'' if holds else 'not '}{prop}.", f"#### {holds}"])
    return prompt, paragraphs, str(holds)


class LogicChains(CorpusSource):
    """Generated multi-hop deduction problems (see the module docstring).

    Args:
        n: number of problems.
        seed: generator seed (problem i depends only on seed and i).
        min_hops / max_hops: chain length, drawn uniformly per problem (the decoy chain has the same length).
    """

    def __init__(self, n: int = 2000, seed: int = 0, min_hops: int = 2, max_hops: int = 4):
        limit = len(CATEGORIES) // 2 - 1  # two chains of max_hops + 1 distinct categories
        if n < 1 or not 1 <= min_hops <= max_hops <= limit:
            raise LCMError(f"LogicChains needs n >= 1 and 1 <= min_hops <= max_hops <= {limit} "
                           f"(got n={n}, hops {min_hops}..{max_hops})")
        self.n, self.seed = n, seed
        self.min_hops, self.max_hops = min_hops, max_hops

    def describe(self) -> str:
        return f"logic chains (n={self.n}, seed={self.seed}, {self.min_hops}-{self.max_hops} hops)"

    def documents(self, max_chars: int) -> Iterator[Document]:
        for i in range(self.n):
            rng = random.Random(f"{self.seed}:{i}")
            hops = rng.randint(self.min_hops, self.max_hops)
            prompt, paragraphs, answer = logic_problem(rng, hops)
            yield Document(prompt=cap_all(prompt, max_chars), paragraphs=[cap_all(p, max_chars) for p in paragraphs],
                           answer=answer, meta={"source": "logic_chains", "index": i, "hops": hops,
                                                    "answer_options": 2})
