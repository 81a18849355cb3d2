"""Comparison controls (eval/controls.py): the encoder follower's walks as samples, and the token model restricted
to the bank -- every line the bank line of highest log-likelihood, checked against a brute-force computation
that tokenizes each whole candidate text and runs it without the KV cache."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from conftest import train_tiny_token_model

from lcm.errors import LCMError
from lcm.eval import reasoning_metrics as rm
from lcm.eval.controls import bank_restricted_samples, follower_samples
from lcm.eval.follower import follower_scores
from lcm.eval.scoring import summarize
from lcm.model import LCMConfig
from lcm.token_model import TokenLM
from lcm.train import LogicChains
from lcm.train.documents import Document
from lcm.train.token_data import render_solution

EOT = "End of text."


# ---- (i) the encoder follower --------------------------------------------------------------------------
class WordCounts:
    """A stand-in encoder over a fixed vocabulary: cosine = shared words, so walks are predictable by hand."""

    def __init__(self, texts: list[str]):
        self.vocab = sorted({w for t in texts for w in re.findall(r"\w+", t.lower())})
        self.dim = len(self.vocab)

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.array([[w in re.findall(r"\w+", t.lower()) for w in self.vocab] for t in texts], dtype=np.float32)


def test_follower_samples_are_its_walk_and_answer():
    chain = Document(prompt=["Every yumpus is blue.", "Every dax is red.", "Every wumpus is a yumpus.",
                             "Alex is a wumpus.", "Which property does Alex have?"], paragraphs=[["x"]], answer="blue")
    lost = Document(prompt=["Every fep is a gorp.", "Every wumpus is a fep.", "Alex is a wumpus.",
                            "Which property does Alex have?"], paragraphs=[["x"]], answer="red")  # no fact bears one
    encoder = WordCounts([t for d in (chain, lost) for t in d.prompt])
    (a,), (b,) = follower_samples([chain, lost], encoder)[0]
    assert a.steps == ["Every wumpus is a yumpus.", "Every yumpus is blue.", "#### blue"]
    assert a.text == "\n".join(a.steps) and rm.parse_answer(a.text) == "blue"
    assert a.forward_passes == 0 and a.hidden.shape == (0, encoder.dim) and a.stop_reason == "end_of_text"
    assert a.step_emb.shape == (3, encoder.dim)
    assert b.steps == ["Every wumpus is a fep.", "Every fep is a gorp."] and rm.parse_answer(b.text) is None


class Remembered:
    """The real encoder, each text encoded once (the walk and the step metrics embed the same facts)."""

    def __init__(self, encoder):
        self.encoder, self.dim, self.table = encoder, encoder.dim, {}

    def encode(self, texts: list[str]) -> np.ndarray:
        new = sorted(set(texts) - self.table.keys())
        self.table.update(zip(new, self.encoder.encode(new)) if new else ())
        return np.stack([self.table[t] for t in texts])


def test_follower_samples_score_exactly_the_followers_accuracy_on_logic_chains(encoder):
    docs, encoder = list(LogicChains(n=24).documents(256)), Remembered(encoder)
    groups, seconds = follower_samples(docs, encoder)
    stats = summarize(groups, [d.answer for d in docs], [render_solution(d) for d in docs], seconds)
    expected = follower_scores(docs, encoder.encode)["follower (cosine)"].mean()
    assert stats["accuracy"] == expected >= 0.7 and stats["answered"] == 1.0 and stats["stop_end_of_text"] == 1.0
    assert stats["forward_passes_per_problem"] == 0 and stats["steps_per_solution"] >= 2


# ---- (ii) the token model restricted to the bank ------------------------------------------------------------
ARCH = LCMConfig(embed_dim=16, d_model=32, n_layer=2, n_head=2, max_seq_len=64, dropout=0.0)


def problems(n: int = 64) -> list[dict[str, str]]:
    """Sums with a blank line before the answer line, so solutions have paragraphs as the generators' do."""
    return [{"prompt": f"Ann has {a} pens and buys {b} more. How many pens?",
             "solution": f"{a} + {b} = {a + b}\n\n#### {a + b}"}
            for a, b in ((i % 9 + 1, i // 9 % 7 + 1) for i in range(n))]


@pytest.fixture(scope="module")
def trained():
    """A tiny real TokenLM trained for 100 steps by Lightning (it learns the format: an equation, a blank line, the
    answer line, <eos>), and its bank: every solution line and the end of text. One thread: on shared cores a
    model this small runs 20x slower on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data = problems()
    model, _ = train_tiny_token_model(data, ARCH, steps=100, name="sums")
    bank = sorted({line for r in data for line in r["solution"].splitlines() if line} | {EOT})
    yield model.eval(), bank
    torch.set_num_threads(threads)


@torch.no_grad()
def brute_force(model: TokenLM, prompt: str, bank: list[str], max_steps: int) -> tuple[list[str], list[float], str]:
    """Greedy bank-restricted decoding the slow way: each candidate's whole text tokenized and run uncached."""
    tok, lines = model.tokenizer, [t for t in bank if t != EOT]
    nl, eos, prompt_ids = tok("\n")["input_ids"][0], tok.eos_token_id, model.prompt_ids(prompt)
    solution, steps, entropies = "", [], []
    while len(steps) < max_steps:
        start = len(prompt_ids) + len(tok(solution)["input_ids"]) if solution else len(prompt_ids)
        scores, after = [], []
        for line in lines:
            ids = prompt_ids + tok(solution + line)["input_ids"]
            logp = torch.log_softmax(model.net(torch.tensor([ids + [nl]])).logits[0].float(), -1)  # (T, V)
            tokens = sum(float(logp[j - 1, ids[j]]) for j in range(start, len(ids)))
            scores.append(tokens + float(torch.logaddexp(logp[len(ids) - 1, nl], logp[len(ids) - 1, eos])))
            after.append((logp[len(ids) - 1, eos] > logp[len(ids) - 1, nl], logp[len(ids)].argmax() == nl))
        p = np.exp(np.array(scores) - max(scores))
        p /= p.sum()
        entropies.append(float(-(p * np.log(np.maximum(p, 1e-300))).sum()))
        best = int(np.argmax(scores))
        if lines[best] in steps:
            return steps, entropies, "repetition"
        steps.append(lines[best])
        ends, blank = after[best]
        if ends:
            return steps, entropies, "end_of_text"
        solution += lines[best] + ("\n\n" if blank else "\n")
    return steps, entropies, "max_steps"


def test_each_line_is_the_best_bank_line_by_log_likelihood_and_stops_at_end_of_text(trained):
    model, bank = trained
    rows = problems()[:2]
    groups, seconds = bank_restricted_samples(model, [r["prompt"] for r in rows], bank, EOT, max_steps=6)
    n_lines = len(bank) - 1
    for (s,), row in zip(groups, rows):
        steps, entropies, reason = brute_force(model, row["prompt"], bank, 6)
        assert s.steps == steps and s.stop_reason == reason == "end_of_text"
        assert s.text == "\n".join(steps) and rm.parse_answer(s.text) is not None and len(steps) == 2
        np.testing.assert_allclose(s.step_entropies, entropies, rtol=1e-4, atol=1e-5)
        assert all(0 <= h <= math.log(n_lines) for h in s.step_entropies)
        assert s.hidden.shape == (len(steps), ARCH.d_model)  # one state per decision
        assert s.forward_passes == 1 + len(steps) * 1 + (len(steps) - 1)  # prefill, one bank batch, extensions
    assert seconds > 0
    small, _ = bank_restricted_samples(model, [rows[0]["prompt"]], bank, EOT, max_steps=6, batch_size=7)
    assert small[0][0].steps == groups[0][0].steps  # padding and batching change nothing
    np.testing.assert_allclose(small[0][0].step_entropies, groups[0][0].step_entropies, rtol=1e-4, atol=1e-5)
    assert small[0][0].forward_passes == 1 + 2 * math.ceil(n_lines / 7) + 1


def test_summarize_scores_the_control_like_any_system(trained, encoder):
    model, bank = trained
    rows = problems()[:4]
    groups, seconds = bank_restricted_samples(model, [r["prompt"] for r in rows], bank, EOT, max_steps=6,
                                              encoder=encoder)
    stats = summarize(groups, [r["solution"].split("#### ")[1] for r in rows], [r["solution"] for r in rows], seconds)
    assert stats["answered"] == 1.0 and stats["stop_end_of_text"] == 1.0
    assert 0 <= stats["step_entropy"] <= math.log(len(bank) - 1) and stats["forward_passes_per_step"] > 1


def test_repetition_max_steps_and_bad_input(trained):
    model, _ = trained
    prompt = problems()[0]["prompt"]
    (rep,), = bank_restricted_samples(model, [prompt], ["1 + 1 = 2", EOT], EOT, max_steps=6)[0]
    assert rep.steps == ["1 + 1 = 2"] and rep.stop_reason == "repetition"  # the model goes on; only a repeat is left
    assert rep.step_entropies == [0.0, 0.0]  # one line: no choice
    (cut,), = bank_restricted_samples(model, [prompt], ["1 + 1 = 2", "#### 2"], EOT, max_steps=1)[0]
    assert len(cut.steps) == 1 and cut.stop_reason == "max_steps"
    with pytest.raises(LCMError, match="at least one sentence besides the end of text"):
        bank_restricted_samples(model, [prompt], [EOT], EOT, max_steps=4)
    with pytest.raises(LCMError, match="training mode"):
        bank_restricted_samples(model.train(), [prompt], ["1 + 1 = 2"], EOT, max_steps=4)
    model.eval()
