"""Controls of a comparison, as `Sample` groups that `scoring.summarize` scores like any system.

- **Encoder follower** (`follower_samples`): the zero-parameter walk of `lcm.eval.follower` (cosine variant),
  its visited facts as the steps and its answer as a final `#### X` line. No network, no training.
- **Token model restricted to the bank** (`bank_restricted_samples`): the token model chooses every step from
  the concept model's generation bank by its own log-likelihood, greedily -- the same closed set retrieval reads
  out of, scored by the token model.

How a bank line is scored. `TokenLM` trains on `[bos] prompt "\\n" solution [eos]`, the solution one step per
line with a blank line between paragraphs, and its byte-level BPE splits at newlines (`"\\n\\n"` is two `"\\n"`
tokens), so a solution's tokens are its lines' tokens joined by `"\\n"` tokens. With the solution so far as
prefix P, line s scores

    log p(s | P) + log(p("\\n" | P s) + p(<eos> | P s))     (a whole line: its tokens, then a line end)

and the best line is appended. Its end decides the rest, as in training, where <eos> directly follows the last
line: <eos> more likely than "\\n" ends the solution (stop reason "end_of_text"); otherwise the line ends with
"\\n", and with a second "\\n" (a paragraph break) when that is the model's greedy next token -- the prefix is
the token model's own rendering. A line that makes the solution loop stops it ("repetition", not appended; the
concept models' rule, `lcm.generation_step.loops`), as does `max_steps`, or a prefix with no room left in the
model's context for any line ("max_steps").
The step entropy is that of softmax(scores) over the bank: the token model's step policy over the same closed
set as the concept model's (nats, in [0, log N]).

Cost: every step scores all N bank lines -- one forward of the new prefix tokens (KV cache), then the lines as
continuations of the cached prefix in batches of `batch_size` (about N x (line tokens + 1) token positions per
step). No pre-filter: one that keeps the argmax would still have to score every line for the entropy.
Measured on the 2-core CPU (2 threads, light load, d_model 256 x 4 layers): the logic bank (1,537 lines) about
1.1 s per step; the forks bank (9,365 lines, 282-token prompts) about 19 s per step -- minutes per problem, so
on a CPU run this control on a subset of the problems, or on a GPU.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from lcm.errors import LCMError
from lcm.eval.follower import follower_walks
from lcm.eval.sampling_runs import Sample, attach_step_embeddings, timed_per_problem
from lcm.generation_step import loops
from lcm.token_model import TokenLM, cache_keyword
from lcm.train.documents import Document


# ---- (i) the zero-parameter encoder follower ----------------------------------------------------------
def follower_samples(docs: list[Document], encoder) -> tuple[list[list[Sample]], float]:
    """One sample per document from the follower's cosine walk -> (groups, seconds: embedding + walks).

    encoder: the comparison's frozen encoder (`encode(texts) -> (N, D)`, `dim`); it embeds the prompts for the
    walk and the steps for the step metrics."""
    start = time.perf_counter()
    walks = follower_walks(docs, encoder.encode, variants=("cosine",))["cosine"]
    seconds = time.perf_counter() - start
    groups = [[follower_sample(w.facts, w.answer, encoder.dim)] for w in walks]
    attach_step_embeddings(groups, encoder)
    return groups, seconds


def follower_sample(facts: list[str], answer: str | None, dim: int) -> Sample:
    steps = [*facts, f"#### {answer}"] if answer is not None else list(facts)
    return Sample(text="\n".join(steps), steps=steps, step_emb=None, hidden=np.zeros((0, dim), np.float32),
                  forward_passes=0, stop_reason="end_of_text")


# ---- (ii) the token model restricted to the bank ---------------------------------------------------------
@dataclass
class LineBank:
    """The closed set as token ids, shortest lines first (batches pad little)."""

    texts: list[str]
    ids: torch.Tensor  # (N, L + 1) each line's tokens, then "\n", then padding
    lengths: torch.Tensor  # (N,) tokens per line, without the "\n"
    newline: int  # the "\n" token id


def line_bank(model: TokenLM, bank_texts: list[str], eot_text: str) -> LineBank:
    """The bank's distinct lines but the end-of-text sentence, tokenized as the token model writes them."""
    if model.tokenizer is None:
        raise LCMError("the token model has no tokenizer: train it with `lcm fit` or load a checkpoint")
    texts = sorted({t.strip() for t in bank_texts} - {eot_text, ""})
    if not texts:
        raise LCMError("bank-restricted decoding needs a bank with at least one sentence besides the end of text")
    tok = model.tokenizer
    encoded = tok(texts, add_special_tokens=False)["input_ids"]
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    if len(newline) != 1 or not lines_compose(tok, texts[:2], newline[0]):
        raise LCMError("the token model's tokenizer does not split a solution at its newlines; bank-restricted "
                       "scoring needs a solution's tokens to be its lines' tokens joined by the newline token")
    order = sorted(range(len(texts)), key=lambda i: (len(encoded[i]), i))
    ids = torch.full((len(texts), max(map(len, encoded)) + 1), tok.pad_token_id, dtype=torch.long)
    for r, i in enumerate(order):
        ids[r, : len(encoded[i]) + 1] = torch.tensor([*encoded[i], newline[0]])
    return LineBank([texts[i] for i in order], ids, torch.tensor([len(encoded[i]) for i in order]), newline[0])


def lines_compose(tok, texts: list[str], newline: int) -> bool:
    """Whether `a\\nb` and `a\\n\\nb` tokenize as a's tokens, newline token(s), b's tokens."""
    a, b = texts[0], texts[-1]
    ea, eb = (tok(t, add_special_tokens=False)["input_ids"] for t in (a, b))
    return all(tok(a + sep + b, add_special_tokens=False)["input_ids"] == ea + [newline] * len(sep) + eb
               for sep in ("\n", "\n\n"))


def forward(model: TokenLM, cache, ids: torch.Tensor) -> torch.Tensor:
    """ids (B, T) after the cached positions -> final-layer hidden states (B, T, d), after the final norm."""
    base = model.net.base_model
    return base(input_ids=ids.to(model.device), use_cache=True, **{cache_keyword(type(base)): cache}).last_hidden_state


@dataclass
class LineScores:
    scores: torch.Tensor  # (N,) log p(line + line end | prefix); -inf for lines that do not fit the context
    ends: torch.Tensor  # (N,) the line ends the solution: p(<eos>) > p("\n") after it
    breaks: torch.Tensor  # (N,) the model's greedy token after the line's "\n" is another "\n"
    calls: int  # network evaluations


@torch.no_grad()
def score_lines(model: TokenLM, cache, first: torch.Tensor, bank: LineBank, room: int,
                batch_size: int) -> LineScores:
    """Every bank line scored as the continuation of a cached prefix.

    cache: the prefix's KV cache (left untouched); first: (V,) log-probs of the token after the prefix;
    room: token positions left in the context after the prefix."""
    eos, nl, dev = model.tokenizer.eos_token_id, bank.newline, first.device
    parts = []  # per batch: (scores, ends, breaks)
    for lo in range(0, len(bank.texts), batch_size):
        n = bank.lengths[lo: lo + batch_size].to(dev)  # (B,)
        ids = bank.ids[lo: lo + batch_size, : int(n.max()) + 1].to(dev)  # (B, T) line, "\n", padding
        c = copy.deepcopy(cache)
        c.batch_repeat_interleave(len(n))  # every row continues the same prefix
        logp = torch.log_softmax(model.net.get_output_embeddings()(forward(model, c, ids)).float(), -1)  # (B, T, V)
        rows = torch.arange(len(n), device=dev)
        inner = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1): log p(token j+1 | ..., token j)
        within = torch.arange(ids.shape[1] - 1, device=dev) < (n - 1)[:, None]  # token j+1 is in the line
        last = logp[rows, n - 1]  # (B, V) the token after the line
        score = first[ids[:, 0]] + inner.masked_fill(~within, 0.0).sum(1) + torch.logaddexp(last[:, nl], last[:, eos])
        score = score.masked_fill(n + 1 > room, -torch.inf)  # the line and its end must fit the context
        breaks = logp[rows, n].argmax(-1) == nl  # after the line's "\n"
        parts.append((score.cpu(), (last[:, eos] > last[:, nl]).cpu(), breaks.cpu()))
    return LineScores(*(torch.cat(column) for column in zip(*parts)), calls=len(parts))


def policy_entropy(scores: torch.Tensor) -> float:
    """Entropy (nats) of softmax(scores); -inf scores have probability 0."""
    return float(torch.special.entr(torch.softmax(scores, 0)).sum())


@torch.no_grad()
def bank_restricted_solution(model: TokenLM, prompt: str, bank: LineBank, max_steps: int,
                             batch_size: int) -> Sample:
    """One greedy solution whose every line is the bank line the token model scores best (module docstring)."""
    from transformers import DynamicCache

    ids = model.prompt_ids(prompt)
    room = model.context - len(ids)  # token positions left for the solution and its <eos>
    if room < 1:
        raise LCMError(f"prompt of {len(ids)} tokens fills the model's context ({model.context})")
    cache, head = DynamicCache(), model.net.get_output_embeddings()
    h = forward(model, cache, torch.tensor([ids]))[0, -1]  # (d,) the state that predicts the first line
    calls, steps, states, entropies, reason = 1, [], [], [], "max_steps"
    while len(steps) < max_steps:
        s = score_lines(model, cache, torch.log_softmax(head(h).float(), -1), bank, room, batch_size)
        calls += s.calls
        best = int(s.scores.argmax())
        if s.scores[best] == -torch.inf:  # no line fits in the context: the token model's max_tokens
            break
        states.append(h.float().cpu().numpy())
        entropies.append(policy_entropy(s.scores))
        if loops([*steps, bank.texts[best]]):
            reason = "repetition"
            break
        steps.append(bank.texts[best])
        if s.ends[best]:
            reason = "end_of_text"
            break
        if len(steps) == max_steps:
            break
        n = int(bank.lengths[best])
        new = [*bank.ids[best, : n + 1].tolist(), *([bank.newline] if s.breaks[best] else [])]  # line "\n" ["\n"]
        h = forward(model, cache, torch.tensor([new]))[0, -1]
        calls, room = calls + 1, room - len(new)
    return Sample(text="\n".join(steps), steps=steps, step_emb=None,
                  hidden=np.stack(states) if states else np.zeros((0, model.net.config.hidden_size), np.float32),
                  forward_passes=calls, stop_reason=reason, step_entropies=entropies)


def bank_restricted_samples(model: TokenLM, problems: list[str], bank_texts: list[str], eot_text: str,
                            max_steps: int, batch_size: int = 256, encoder=None, show: bool = False,
                            label: str = "token (bank)") -> tuple[list[list[Sample]], float]:
    """One greedy bank-restricted solution per problem -> (groups, seconds spent decoding).

    problems: prompts rendered as the token model was trained (`render_prompt`, i.e. `Document.prompt_text`).
    bank_texts: the concept model's generation bank (`SentenceBank.load(<run>/checkpoints/bank).texts`);
    eot_text: its end-of-text sentence, left out. encoder: when given, the steps get its embeddings
    (`attach_step_embeddings`, which `summarize` needs). forward_passes count network evaluations: one per
    prefix extension and one per batch of bank lines per step."""
    if max_steps < 1 or batch_size < 1:
        raise LCMError(f"max_steps and batch_size must be >= 1, got {max_steps} and {batch_size}")
    if model.net.training:
        raise LCMError("the token model is in training mode (dropout on): call model.eval() first")
    bank = line_bank(model, bank_texts, eot_text)
    groups, seconds = timed_per_problem(problems, label, show, lambda i, problem: [
        bank_restricted_solution(model, problem, bank, max_steps, batch_size)])
    if encoder is not None:
        attach_step_embeddings(groups, encoder)
    return groups, seconds
