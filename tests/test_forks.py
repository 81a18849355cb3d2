"""Forks (train/forks.py) and the zero-parameter encoder follower (eval/follower.py).

The generator is checked through its text: a parser built from the templates solves every prompt, so a
problem is only accepted when exactly one property follows from the entity and it is the answer.
"""
from __future__ import annotations

import re
from collections import Counter, deque

import numpy as np
import pytest
from conftest import run_lcm

from lcm.errors import LCMError
from lcm.eval.follower import AnswerReader, follower_scores
from lcm.text import split_and_cap
from lcm.train import Forks, LogicChains
from lcm.train.datamodule import split_of
from lcm.train.documents import Document
from lcm.train.forks import CATEGORIES, DECOYS, PROPERTIES, TEMPLATES, plural, prompt_key

SINGULAR = {**{c: c for c in CATEGORIES}, **{plural(c): c for c in CATEGORIES},
            **{plural(c).capitalize(): c for c in CATEGORIES}}
SLOT = {"x": r"(?P<x>\w+)", "a_x": r"an? (?P<x>\w+)", "xs": r"(?P<x>\w+)", "Xs": r"(?P<x>\w+)",
        "y": r"(?P<y>\w+)", "a_y": r"an? (?P<y>\w+)", "ys": r"(?P<y>\w+)", "Ys": r"(?P<y>\w+)",
        "p": r"(?P<p>\w+)", "name": r"(?P<name>[A-Z]\w+)"}


def pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # literal, slot, literal, ...
    return re.compile("".join(SLOT[s] if i % 2 else re.escape(s) for i, s in enumerate(parts)) + "$")


PATTERNS = {kind: [pattern(t) for t in templates] for kind, templates in TEMPLATES.items()}


def parse(kind: str, sentence: str) -> tuple[int, dict] | None:
    """(template index, slots) of a sentence of this kind whose categories and property are real ones."""
    for i, pat in enumerate(PATTERNS[kind]):
        m = pat.match(sentence)
        if m is None:
            continue
        slots = m.groupdict()
        cats = [slots[k] for k in ("x", "y") if k in slots]
        if all(c in SINGULAR for c in cats) and slots.get("p", "red") in PROPERTIES:
            return i, {k: SINGULAR.get(v, v) if k in "xy" else v for k, v in slots.items()}
    return None


def solve(doc: Document) -> dict:
    """Parse the prompt into a rule graph and follow it from the entity's category (breadth first)."""
    links, props = {}, {}
    for fact in doc.prompt[:-2]:
        if (hit := parse("link", fact)) is not None:
            links.setdefault(hit[1]["x"], []).append(hit[1]["y"])
        elif (hit := parse("property", fact)) is not None:
            props[hit[1]["x"]] = hit[1]["p"]
        else:
            raise AssertionError(f"unparsed fact {fact!r}")
    start = parse("entity", doc.prompt[-2])[1]["x"]
    assert parse("question", doc.prompt[-1]) is not None
    seen, todo = {start}, deque([start])
    while todo:
        for y in links.get(todo.popleft(), []):
            if y not in seen:
                seen.add(y)
                todo.append(y)
    into = [y for x, ys in links.items() if x not in seen for y in ys if y in seen]
    return {"answers": {props[c] for c in seen if c in props}, "props": props, "links": links, "seen": seen,
            "into": into}


@pytest.fixture(scope="module")
def docs():
    return list(Forks(n=200, seed=0).documents(256))


def test_each_prompt_has_one_reachable_property_behind_forks_and_dead_ends(docs):
    crossed = 0
    for doc in docs:
        g = solve(doc)
        assert g["answers"] == {doc.answer} and doc.steps[-1] == f"#### {doc.answer}"
        assert len(g["props"]) == DECOYS + 1
        assert any(len(g["links"].get(c, [])) >= 2 for c in g["seen"])  # a fork the entity meets
        assert any(c not in g["links"] and c not in g["props"] for c in g["seen"])  # and a dead end
        crossed += bool(g["into"])  # a decoy rule naming a category the entity reaches
    assert crossed > len(docs) // 2


def test_every_paraphrase_template_is_used(docs):
    used = Counter()
    for doc in docs:
        for kind in TEMPLATES:
            for s in doc.prompt + doc.steps:
                if (hit := parse(kind, s)) is not None:
                    used[kind, hit[0]] += 1
    for kind, templates in TEMPLATES.items():
        assert len(templates) >= 3
        assert [i for i in range(len(templates)) if used[kind, i] == 0] == [], kind


def test_answers_hops_and_detours(docs):
    answers = Counter(d.answer for d in docs)
    assert len(answers) >= 20 and max(answers.values()) / len(docs) < 0.1
    assert set(d.meta["hops"] for d in docs) == set(range(2, 7))
    detours = [any("dead end" in s for s in d.steps) for d in docs]
    assert 0.1 < np.mean(detours) < 0.7
    plain = Forks(n=50, detour_p=0.0).documents(256)
    assert not any("dead end" in s for d in plain for s in d.steps)


def test_deterministic_and_split_like_the_data_module(docs):
    again = list(Forks(n=20, seed=0).documents(256))
    assert [(d.prompt, d.paragraphs) for d in again] == [(d.prompt, d.paragraphs) for d in docs[:20]]
    other = list(Forks(n=20, seed=1).documents(256))
    assert all(a.prompt != b.prompt for a, b in zip(again, other))
    assert all(split_and_cap(d.prompt_text, 256) == d.prompt for d in docs)  # generation splits it the same


def test_epoch_streams_are_fresh_and_skip_held_out_problems():
    source = Forks(n=40, seed=2)
    docs = list(source.documents(256))
    held = {prompt_key(d) for d in docs if split_of(d, 0.2, 0.2, 0) != "train"}
    assert held and held <= {prompt_key(d) for d in source.problems(0)}  # epoch 0 would contain them
    for epoch in (0, 1, 2):
        stream = list(source.problems(epoch, exclude=held))
        assert len(stream) == 40 and not held & {prompt_key(d) for d in stream}
    fresh = {prompt_key(d) for d in source.problems(1)}
    assert not fresh & {prompt_key(d) for d in docs}
    assert fresh == {prompt_key(d) for d in source.problems(1)}


@pytest.mark.parametrize("kwargs", [{"min_hops": 0}, {"max_hops": 9}, {"min_hops": 4, "max_hops": 3}, {"n": 0},
                                    {"fork_p": 1.5}])
def test_bad_settings_are_one_line_errors(kwargs):
    with pytest.raises(LCMError, match="Forks needs"):
        Forks(**kwargs)


def test_answer_reader_open_and_yes_no():
    yes_no = AnswerReader(["True", "False"])
    assert yes_no.read("No wumpus is red.", "True or false: Alex is red.") == "False"
    assert yes_no.read("Every wumpus is red.", "True or false: Alex is red.") == "True"
    assert yes_no.read("Every wumpus is blue.", "True or false: Alex is red.") is None
    open_ = AnswerReader(["red", "sour"])
    assert open_.read("Anything that is a tumpus is sour.", "Which property does Alex have?") == "sour"
    assert open_.read("Every wumpus is reddish.", "Which property does Alex have?") is None


def bag_of_words(texts: list[str]) -> np.ndarray:
    """A stand-in encoder: cosine = shared words, so walks are predictable by hand."""
    vocab = sorted({w for t in texts for w in re.findall(r"\w+", t.lower())})
    return np.array([[w in re.findall(r"\w+", t.lower()) for w in vocab] for t in texts], dtype=np.float32)


def test_walk_follows_shared_words_and_stops_at_the_first_answer():
    chain = Document(prompt=["Every yumpus is blue.", "Every dax is red.", "Every wumpus is a yumpus.",
                             "Alex is a wumpus.", "Which property does Alex have?"], paragraphs=[["x"]], answer="blue")
    trap = Document(prompt=["A wumpus is blue.", "Every wumpus is a yumpus.", "Every yumpus is red.",
                            "Alex is a wumpus.", "Which property does Alex have?"], paragraphs=[["x"]], answer="red")
    scores = follower_scores([chain, trap], bag_of_words)
    assert scores["follower (cosine)"].tolist() == [1.0, 0.0]  # the trap's first step is the blue rule
    assert scores["first answer-bearing fact"].tolist() == [1.0, 0.0]
    assert scores["random answer-bearing fact"].tolist() == [0.5, 0.5]


@pytest.fixture(scope="module")
def cache(encoder, tmp_path_factory):
    from lcm.encoders.cache import EmbeddingCache

    return EmbeddingCache(tmp_path_factory.mktemp("emb"), encoder, show_progress=False)


def test_follower_solves_logic_chains_but_not_forks(cache):
    logic = follower_scores(list(LogicChains(n=30).documents(256)), cache.get)
    assert logic["follower (cosine)"].mean() >= 0.7 and logic["follower (word)"].mean() >= 0.9
    forks = follower_scores(list(Forks(n=40).documents(256)), cache.get)
    assert forks["follower (cosine)"].mean() <= 0.30  # the gate; 0.2 on these 40, 0.17 on 500
    for name, s in forks.items():  # 40 problems: 95% CIs are about +-0.13 wide, hence the slack
        assert s.mean() <= (0.5 if name == "follower (word)" else 0.35), name


def test_follower_command_prints_accuracy_ci_and_chance(cache, capsys):
    code, _ = run_lcm(["eval", "follower", "--source", "logic", "--n", "30", "--cache", str(cache.root)])
    out = capsys.readouterr().out
    assert code == 0 and "30 problems, 2 answer options, chance 0.500" in out
    assert re.search(r"follower \(cosine\) +\d\.\d{3}  95% CI \[\d\.\d{3}, \d\.\d{3}\]", out)


def test_follower_command_rejects_a_bad_budget(capsys):
    code, err = run_lcm(["eval", "follower", "--budget", "0"], capsys)
    assert code == 2 and "error: --budget must be >= 1" in err


def test_problem_sets_give_every_epoch_fresh_problems(encoder, tmp_path):
    """Forks(problem_sets=3) through the concept data: epoch e trains on set e mod 3 only (the loader's sampler,
    as Lightning drives it with set_epoch), every epoch has as many windows, the held-out problems are set 0's
    and none of them (nor a later set's problem the split would hold out) is ever trained on."""
    from lcm.train.datamodule import ConceptDataModule

    dm = ConceptDataModule(Forks(n=30, seed=0, problem_sets=3), encoder=encoder, cache_dir=str(tmp_path / "c"),
                           show_progress=False, batch_size=4, max_seq_len=96, val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    docs = dm.corpus.docs
    assert {d.meta["problem_set"] for d in docs["val"] + docs["test"]} == {0}
    assert dm.corpus.stats["held_out_later_sets"] > 0
    held = {prompt_key(d) for d in docs["val"] + docs["test"]}
    assert not held & {prompt_key(d) for d in docs["train"]}
    train_sets = np.array([d.meta["problem_set"] for d in docs["train"]])
    assert set(train_sets) == {0, 1, 2} and list(dm.corpus.train_sets) == list(train_sets)
    first_ids = {tuple(dm.corpus.seqs["train"][i][0][:8]): s for i, s in enumerate(train_sets)}  # doc -> its set
    loader = dm.train_dataloader()
    per_epoch = []
    for epoch in range(4):
        loader.sampler.set_epoch(epoch)
        seen = [first_ids[tuple(ids[:8].tolist())] for b in loader for ids in b["ids"]]
        assert set(seen) == {epoch % 3}, epoch
        per_epoch.append(len(seen))
    assert len(set(per_epoch)) == 1 and per_epoch[0] == min(np.bincount(train_sets))


def test_lightning_sets_the_problem_set_epoch_and_the_token_data_follows(tmp_path):
    """Lightning calls set_epoch on the sampler before each epoch; the token baseline's loader reads the same
    set per epoch (the same problem stream for every system)."""
    import lightning as L
    import torch

    from lcm.train.token_data import TokenDataModule

    dm = TokenDataModule(Forks(n=20, seed=0, problem_sets=2), batch_size=8)
    loader = dm.train_dataloader()
    sets = np.array([d.meta["problem_set"] for d in dm.documents("train")])
    prompts = {d.prompt_text.replace(" ", ""): s for d, s in zip(dm.documents("train"), sets)}

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, i):
            self.seen += [(self.current_epoch, prompts[p.replace(" ", "")]) for p in batch["prompt"]]
            return self.w.sum() * 0 + self.w.pow(2).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    probe = Probe()
    L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu").fit(probe, loader)
    assert {e: {s for ep, s in probe.seen if ep == e} for e in range(3)} == {0: {0}, 1: {1}, 2: {0}}
