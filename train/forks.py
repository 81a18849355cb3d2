"""Forks: multi-hop deduction with branching rules, dead ends and decoys, which a lexical lookup cannot follow.

`LogicChains` is solved by a follower with zero trained parameters (`lcm.eval.follower`): its decoy chain
shares no category with the true one, so "the prompt sentence most like the last step" never meets a rival.
Here every hop meets rivals that share the current category word:

- the entity's **path** c0 -> c1 -> ... -> ch ("Every wumpus is a yumpus.") ends in the one property rule
  reachable from the entity ("Every tumpus is sour."); h, the hop count, is drawn per problem;
- **forks**: path categories get a second rule into a **dead end** (a category, sometimes two, from which
  no property follows), so out-degree is 2 where the walk must choose;
- **decoys**: six more property rules at the ends of decoy chains (half branch off an earlier one); a decoy
  chain may point *into* the path or a dead end ("Every lorpus is a yumpus."), a rule that names a category
  the entity reaches but leads nowhere it can go;
- the answer is the property reached, one of 24 (chance 1/24); decoy properties differ from it.

Every sentence is drawn from at least three paraphrase templates, chosen at random per sentence, so a
wording and a decision can be told apart. The solution walks the path one hop per paragraph; at a fork it
sometimes first tries the dead end and backs up ("Try the rule ... It leads to a dead end. Back to X."),
so a trained policy has a real choice at forks. The last step is `#### <property>`.

Problem i depends only on (seed, i); `Forks.problems(epoch)` regenerates a fresh training stream per epoch,
skipping held-out problems by a hash of their prompt text. `Forks(problem_sets=E)` is how training uses it:
the data holds E sets (set e = `problems(e)`'s stream) and epoch e trains on set e mod E only.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Iterator

from lcm.errors import LCMError
from lcm.text import cap_all
from lcm.train.corpus import CorpusSource
from lcm.train.documents import Document

# Invented category words: distinct spellings, so an encoder can tell them apart; enough for the largest problem.
CATEGORIES = (
    "wumpus", "yumpus", "zumpus", "dumpus", "rompus", "numpus", "tumpus", "vumpus", "impus", "jompus", "gorpus",
    "shumpus", "lempus", "sterpus", "grimpus", "lorpus", "brimpus", "timpus", "dax", "blicket", "wug", "fep",
    "toma", "zorb", "glorp", "snark", "frib", "mip", "tove", "borogove", "slithy", "kazoo", "quimble", "zibble",
    "florp", "gazzer", "yorrel", "plonk", "drabble", "skeeb", "vorn", "hattock", "jiblet", "mungo", "ozzle",
    "pelk", "quaggle", "raspin", "tiddle", "ulm", "wexel", "yarb", "zonk", "bazzle", "crumble", "dimble", "embit",
    "fizzet", "grue", "hobnob", "inkle", "jotter", "kibble", "lunt", "marbit", "nizzle", "oppet", "prindle",
    "quonk", "rubbet", "sprock", "trindle", "umber", "vexil", "wabble", "yoink", "zephel", "blort", "clunge",
    "dweeb", "frumple", "glimmet", "hizzet", "jarble")
PROPERTIES = ("red", "blue", "green", "yellow", "orange", "purple", "hot", "cold", "small", "large", "happy", "sad",
              "bright", "dull", "fast", "slow", "wooden", "metallic", "sweet", "sour", "loud", "quiet", "shy", "fuzzy")
NAMES = ("Alex", "Sam", "Max", "Fae", "Rex", "Wren", "Polly", "Stella", "Sally", "Jack", "Nora", "Theo")
DECOYS = 6  # decoy property rules per problem
MAX_HOPS = 8

# Paraphrases per sentence type. Slots: {x}/{y} a category, {a_x} with its article, {xs} its plural, {p} a
# property, {name} the entity. Some put the subject last ("Yumpuses include every wumpus."), so the last word
# of a rule is not always where it leads. The answer line `#### {p}` is a format marker, not prose, so it has one form.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "link": ("Every {x} is {a_y}.", "Each {x} is also {a_y}.", "All {xs} are {ys}.",
             "Anything that is {a_x} is {a_y}.", "If something is {a_x}, then it is {a_y}.",
             "Being {a_y} follows from being {a_x}.", "{Ys} include every {x}."),
    "property": ("Every {x} is {p}.", "All {xs} are {p}.", "Each {x} is {p}.", "Anything that is {a_x} is {p}.",
                 "{Xs} are always {p}.", "Being {p} is true of every {x}."),
    "entity": ("{name} is {a_x}.", "{name} is known to be {a_x}.", "We are told that {name} is {a_x}."),
    "question": ("Which property does {name} have?", "What property must {name} have?",
                 "Find the property that {name} has."),
    "so": ("So {name} is {a_y}.", "Hence {name} is {a_y}.", "That makes {name} {a_y}.", "{name} is therefore {a_y}."),
    "try": ("Try the rule that every {x} is {a_y}.", "One option: all {xs} are {ys}.",
            "Suppose we follow the rule from {x} to {y}."),
    "would": ("Then {name} would be {a_y}.", "That would make {name} {a_y}.", "{name} would then be {a_y}."),
    "dead_end": ("Nothing follows from {y}: a dead end.", "No rule starts from {y}, so this is a dead end.",
                 "It leads to a dead end."),
    "back": ("Back to {x}.", "Go back to {x} and try another rule.", "Return to {x} instead."),
    "so_property": ("So {name} is {p}.", "Hence {name} is {p}.", "{name} is therefore {p}."),
}


def article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def plural(noun: str) -> str:
    return f"{noun}es" if noun.endswith(("s", "x", "z", "sh", "ch")) else f"{noun}s"


def say(rng: random.Random, kind: str, name: str = "", x: str = "", y: str = "", p: str = "") -> str:
    """One sentence of type `kind` in a randomly chosen paraphrase."""
    slots = {"name": name, "p": p, "x": x, "y": y}
    for key, noun in (("x", x), ("y", y)):
        if noun:
            slots.update({f"a_{key}": article(noun), f"{key}s": plural(noun), f"{key.upper()}s": plural(noun).capitalize()})
    return rng.choice(TEMPLATES[kind]).format_map(slots)


@dataclass
class Graph:
    """One problem's rules: category links (x, y) meaning "every x is a y", and property rules {category: p}."""

    path: list[str]
    links: list[tuple[str, str]] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    dead_ends: dict[str, list[str]] = field(default_factory=dict)  # fork category -> its dead-end branch


def build_graph(rng: random.Random, hops: int, fork_p: float) -> Graph:
    """The path, its dead-end forks (at least one), and decoy chains that may point into the path."""
    fresh = iter(rng.sample(CATEGORIES, len(CATEGORIES)))
    path = [next(fresh) for _ in range(hops + 1)]
    props = rng.sample(PROPERTIES, DECOYS + 1)
    g = Graph(path=path, links=list(zip(path, path[1:])), properties={path[-1]: props[0]})
    forks = [i for i in range(hops) if rng.random() < fork_p] or [rng.randrange(hops)]
    for i in forks:
        branch = [path[i]] + [next(fresh) for _ in range(1 if rng.random() < 0.7 else 2)]
        g.links += list(zip(branch, branch[1:]))
        g.dead_ends[path[i]] = branch[1:]
    decoys: list[str] = []
    reached = path + [c for branch in g.dead_ends.values() for c in branch]  # what the entity reaches
    for p in props[1:]:  # decoy chains; half branch off an earlier decoy chain, so decoys fork too
        root = rng.choice(decoys) if decoys and rng.random() < 0.5 else next(fresh)
        decoy = [root] + [next(fresh) for _ in range(rng.randint(1, hops))]
        decoys += decoy[1:] if root in decoys else decoy
        g.links += list(zip(decoy, decoy[1:]))
        g.properties[decoy[-1]] = p
        if rng.random() < 0.5:  # a rule into the path or a dead end: names its category, leads nowhere new
            g.links.append((rng.choice(decoy[:-1]), rng.choice(reached)))
    return g


def prompt_of(rng: random.Random, g: Graph, name: str) -> list[str]:
    facts = [say(rng, "link", x=x, y=y) for x, y in g.links]
    facts += [say(rng, "property", x=c, p=p) for c, p in g.properties.items()]
    rng.shuffle(facts)
    return facts + [say(rng, "entity", name=name, x=g.path[0]), say(rng, "question", name=name)]


def detour(rng: random.Random, start: str, branch: list[str], name: str) -> list[str]:
    """A tried wrong branch: follow it to its end, find nothing, back up."""
    steps = [say(rng, "try", x=start, y=branch[0]), say(rng, "would", name=name, y=branch[0])]
    for x, y in zip(branch, branch[1:]):
        steps += [say(rng, "link", x=x, y=y), say(rng, "would", name=name, y=y)]
    return steps + [say(rng, "dead_end", y=branch[-1]), say(rng, "back", x=start)]


def solution_of(rng: random.Random, g: Graph, name: str, detour_p: float) -> list[list[str]]:
    """One paragraph per hop (rule, conclusion); a detour paragraph before some forks; the property last."""
    paragraphs = []
    for x, y in zip(g.path, g.path[1:]):
        if x in g.dead_ends and rng.random() < detour_p:
            paragraphs.append(detour(rng, x, g.dead_ends[x], name))
        paragraphs.append([say(rng, "link", x=x, y=y), say(rng, "so", name=name, y=y)])
    end, answer = g.path[-1], g.properties[g.path[-1]]
    paragraphs.append([say(rng, "property", x=end, p=answer), say(rng, "so_property", name=name, p=answer),
                       f"#### {answer}"])
    return paragraphs


def forks_problem(rng: random.Random, hops: int, fork_p: float = 0.6,
                  detour_p: float = 0.3) -> tuple[list[str], list[list[str]], str]:
    """(prompt sentences, solution paragraphs, answer property) of one problem with `hops` links to the answer."""
    g = build_graph(rng, hops, fork_p)
    name = rng.choice(NAMES)
    return prompt_of(rng, g, name), solution_of(rng, g, name, detour_p), g.properties[g.path[-1]]


def prompt_key(doc: Document) -> str:
    """Hash of a problem's prompt text: how held-out problems are recognised in a regenerated stream."""
    return hashlib.blake2b(doc.prompt_text.encode(), digest_size=16).hexdigest()


class Forks(CorpusSource):
    """Generated multi-hop deduction with forks, dead ends and decoys (see the module docstring).

    Args:
        n: number of problems (per epoch, for `problems`).
        seed: generator seed (problem i depends only on seed and i).
        min_hops / max_hops: links from the entity's category to its property, drawn uniformly per problem.
        fork_p: chance that a path category also leads into a dead end (at least one fork per problem).
        detour_p: chance that the solution first tries a fork's dead end and backs up.
        problem_sets: fresh problems per epoch: `documents` yields this many sets of n problems (set e > 0 from
            the stream of `problems(e)`), and training reads set e mod problem_sets in epoch e
            (`lcm.train.loaders.ProblemSetSampler`); held-out problems come from set 0 only (a later set's
            problem that the split would hold out is dropped). Every set is encoded once, up front (cached).
    """

    def __init__(self, n: int = 2000, seed: int = 0, min_hops: int = 2, max_hops: int = 6, fork_p: float = 0.6,
                 detour_p: float = 0.3, problem_sets: int = 1):
        if n < 1 or not 1 <= min_hops <= max_hops <= MAX_HOPS:
            raise LCMError(f"Forks needs n >= 1 and 1 <= min_hops <= max_hops <= {MAX_HOPS} "
                           f"(got n={n}, hops {min_hops}..{max_hops})")
        if problem_sets < 1:
            raise LCMError(f"Forks needs problem_sets >= 1 (got {problem_sets})")
        self.problem_sets = problem_sets
        if not (0 <= fork_p <= 1 and 0 <= detour_p <= 1):
            raise LCMError(f"Forks needs fork_p and detour_p in [0, 1] (got {fork_p}, {detour_p})")
        self.n, self.seed = n, seed
        self.min_hops, self.max_hops = min_hops, max_hops
        self.fork_p, self.detour_p = fork_p, detour_p

    def describe(self) -> str:
        sets = f", {self.problem_sets} problem sets" if self.problem_sets > 1 else ""
        return f"forks (n={self.n}{sets}, seed={self.seed}, {self.min_hops}-{self.max_hops} hops)"

    def problem(self, stream: str, i: int, max_chars: int) -> Document:
        """Problem i of a seed stream: a function of (stream, i) alone."""
        rng = random.Random(f"{stream}:{i}")
        hops = rng.randint(self.min_hops, self.max_hops)
        prompt, paragraphs, answer = forks_problem(rng, hops, self.fork_p, self.detour_p)
        return Document(prompt=cap_all(prompt, max_chars), paragraphs=[cap_all(p, max_chars) for p in paragraphs],
                        answer=answer, meta={"source": "forks", "index": i, "hops": hops,
                                                     "answer_options": len(PROPERTIES)})

    def documents(self, max_chars: int) -> Iterator[Document]:
        for e in range(self.problem_sets):
            for i in range(self.n):
                doc = self.problem(self.stream(e), i, max_chars)
                doc.meta["problem_set"] = e
                yield doc

    def stream(self, epoch: int) -> str:
        """The seed stream of an epoch's problems: "<seed>" for epoch 0 (the held-out problems' stream), then
        "<seed>/<epoch>"."""
        return str(self.seed) if epoch == 0 else f"{self.seed}/{epoch}"

    def problems(self, epoch: int, exclude: Collection[str] = (), max_chars: int = 256) -> Iterator[Document]:
        """`n` training problems for `epoch`, none whose `prompt_key` is in `exclude` (the held-out problems).

        Epoch 0 is the `documents` stream (seed stream "<seed>"); epoch e > 0 draws from its own stream
        "<seed>/<e>", so every epoch sees fresh problems while (seed, epoch) fixes them all."""
        if epoch < 0:
            raise LCMError(f"Forks.problems needs epoch >= 0, got {epoch}")
        stream = self.stream(epoch)
        kept, i = 0, 0
        while kept < self.n:
            doc = self.problem(stream, i, max_chars)
            i += 1
            if prompt_key(doc) not in exclude:
                kept += 1
                yield doc
