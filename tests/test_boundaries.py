"""Boundaries decided explicitly: each prediction is end-of-text, a break or a step by the argmax of its cosines,
so a noisy break is never read out as the end, and a step is never the end-of-text or break sentence.

Hand-made unit vectors on orthogonal axes give every cosine exactly; the end-to-end tests drive the real
generation loop with a real (tiny) concept model whose output layer is set to predict one fixed vector.
"""
import numpy as np
import pytest
import torch

from lcm.concepts import DEFAULT_BREAK_TEXT, DEFAULT_EOT_TEXT
from lcm.decoding import RetrievalDecoder
from lcm.errors import LCMError
from lcm.eval.report import table
from lcm.eval.sampling_runs import Sample
from lcm.eval.scoring import summarize
from lcm.generate import ConceptGenerator
from lcm.generation_step import Generation, Kind, Row, StepRule
from lcm.model import LCMConfig
from lcm.module import ConceptLM
from lcm.retrieval import SentenceBank

D = 384  # MiniLM's dimension: the real encoder embeds the problem text
EOT, BRK, STEP_A, STEP_B, PLAN, SPARE, PLAN_SPARE = 0, 1, 2, 3, 4, 10, 11
AXES = np.eye(D, dtype=np.float32)


def unit_with(cosines: dict[int, float], spare: int = SPARE) -> np.ndarray:
    """A unit vector with the given cosines to the axes; the rest of its length on axis `spare`. (D,)"""
    v = np.zeros(D, np.float32)
    for axis, c in cosines.items():
        v[axis] = c
    v[spare] = np.sqrt(1.0 - sum(c * c for c in cosines.values()))
    return v


# a noisy break: closest to the break concept, then end-of-text, then the best step
NOISY_BREAK = unit_with({BRK: 0.6, EOT: 0.5, STEP_A: 0.4})


def rule(**kw) -> StepRule:
    return StepRule(DEFAULT_EOT_TEXT, torch.from_numpy(AXES[BRK]), planning=True, **kw)


def mid_paragraph() -> Row:
    """A planning row after its paragraph's plan."""
    return Row(Generation("problem", prompt_concepts=1), [torch.zeros(D)], at_paragraph_start=False)


def test_a_noisy_break_is_a_break_never_the_end():
    r = mid_paragraph()
    assert rule().classify(r, eot_cos=0.5, break_cos=0.6, step_cos=0.4) is Kind.BREAK
    assert rule().classify(r, eot_cos=0.6, break_cos=0.5, step_cos=0.4) is Kind.END
    assert rule().classify(r, eot_cos=0.3, break_cos=0.35, step_cos=0.4) is Kind.STEP
    start = Row(Generation("problem", prompt_concepts=1), [torch.zeros(D)], at_paragraph_start=True)
    # no break before a plan: a break-like prediction there is read as the plan, not the end (it used to end
    # the two-tower diffusion model's solutions: test_a_break_right_after_a_break_is_read_as_the_plan_not_the_end)
    assert rule().classify(start, eot_cos=0.5, break_cos=0.9, step_cos=0.4) is Kind.PLAN
    assert rule().classify(start, eot_cos=0.5, break_cos=0.3, step_cos=0.4) is Kind.END
    assert rule().classify(start, eot_cos=0.3, break_cos=0.9, step_cos=0.4) is Kind.PLAN
    flat = StepRule(DEFAULT_EOT_TEXT, torch.from_numpy(AXES[BRK]))  # no planning: a break means nothing
    assert flat.classify(r, eot_cos=0.3, break_cos=0.9, step_cos=0.4) is Kind.STEP


def test_thresholds_are_floors_under_the_argmax():
    r = mid_paragraph()
    assert rule(eot_threshold=1.01).classify(r, eot_cos=0.95, break_cos=0.0, step_cos=0.4) is Kind.STEP  # never ends
    assert rule(break_threshold=0.7).classify(r, eot_cos=0.5, break_cos=0.6, step_cos=0.4) is Kind.END
    assert rule(eot_threshold=0.4).classify(r, eot_cos=0.5, break_cos=0.6, step_cos=0.4) is Kind.BREAK
    full = rule(max_paragraph_steps=0)
    assert full.classify(r, eot_cos=0.3, break_cos=0.35, step_cos=0.4) is Kind.FORCED_BREAK
    assert full.classify(r, eot_cos=0.5, break_cos=0.35, step_cos=0.4) is Kind.END


# ---- the real generation loop, a model that always predicts one vector -------------------------------------
def bank(texts_axes: dict[str, np.ndarray], encoder) -> SentenceBank:
    return SentenceBank(list(texts_axes), np.stack(list(texts_axes.values())), encoder.id)


def constant_generator(encoder, pred: np.ndarray, boundaries_in_bank: bool = False) -> ConceptGenerator:
    """A planning generator whose tiny real model predicts `pred` (D,) at every position (zero output weights,
    output bias `pred`, identity normalizer): a bank of end-of-text and two steps, a plan bank of one plan at
    cosine 0.55 to the noisy break."""
    model = ConceptLM(LCMConfig(embed_dim=D, d_model=32, n_layer=1, n_head=2, max_seq_len=64))
    with torch.no_grad():
        model.net.out_proj.weight.zero_()
        model.net.out_proj.bias.copy_(torch.from_numpy(pred))
        model.eot_embedding.copy_(torch.from_numpy(AXES[EOT]))
        model.break_embedding.copy_(torch.from_numpy(AXES[BRK]))
    model.meta = {"planning": True, "planner": "lcm.planners.MeanPlanner"}
    sentences = {DEFAULT_EOT_TEXT: AXES[EOT], "Step A.": AXES[STEP_A], "Step B.": AXES[STEP_B]}
    if boundaries_in_bank:
        sentences[DEFAULT_BREAK_TEXT] = AXES[BRK]
    plan = 0.55 * NOISY_BREAK + np.sqrt(1 - 0.55 ** 2) * AXES[PLAN_SPARE]
    return ConceptGenerator(model, encoder, bank(sentences, encoder), plan_bank=bank({"Plan.": plan}, encoder))


PROBLEM = "Tom has 3 apples. How many apples does Tom have?"


def test_generation_reads_a_noisy_break_as_a_break(encoder):
    """Before: cos 0.6 < 0.9 to the break made it a step, whose nearest bank sentence is end-of-text: the
    solution ended after its first plan."""
    out = constant_generator(encoder, NOISY_BREAK).generate(PROBLEM, max_steps=3)
    assert out.breaks_predicted == 2 and out.stop_reason == "max_steps"
    assert [s.text for s in out.steps] == ["Plan."] * 3 and [s.paragraph for s in out.steps] == [0, 1, 2]


def test_a_prediction_closest_to_end_of_text_ends_the_row(encoder):
    closest_to_eot = unit_with({EOT: 0.7, BRK: 0.3, STEP_A: 0.5})
    out = constant_generator(encoder, closest_to_eot).generate(PROBLEM, max_steps=5)
    assert out.stop_reason == "end_of_text" and out.steps == [] and out.calls == 1


def test_a_step_is_never_the_end_of_text_or_break_sentence(encoder):
    near_boundaries = unit_with({EOT: 0.7, BRK: 0.6, STEP_A: 0.3, STEP_B: 0.1})
    gen = constant_generator(encoder, near_boundaries, boundaries_in_bank=True)
    out = gen.generate(PROBLEM, max_steps=5, eot_threshold=1.01, break_threshold=1.01)  # floors: always a step
    assert [s.text for s in out.steps] == ["Plan.", "Step A."] and out.stop_reason == "repetition"
    read = RetrievalDecoder(gen.bank, exclude=(DEFAULT_EOT_TEXT, DEFAULT_BREAK_TEXT)).decode(near_boundaries[None])
    assert read[0].text == "Step A." and read[0].score == pytest.approx(0.3, abs=1e-5)
    scores, ids = gen.bank.search(near_boundaries[None], k=2, exclude=[0, 3])
    assert ids.tolist() == [[1, 2]] and np.allclose(scores, [[0.3, 0.1]], atol=1e-5)


# ---- answered rate and stop reasons in the comparison table -----------------------------------------------
def sample(text: str, stop: str) -> Sample:
    steps = text.splitlines()
    s = Sample(text=text, steps=steps, step_emb=AXES[: len(steps), :8], hidden=AXES[:3, :8], forward_passes=len(steps))
    s.stop_reason = stop  # what the sampling run records for the solution
    return s


def cells(md_table: list[str], system: str) -> dict[str, str]:
    head = [c.strip() for c in md_table[0].strip("|").split("|")]
    (row,) = [line for line in md_table if line.startswith(f"| {system} |")]
    return dict(zip(head, (c.strip() for c in row.strip("|").split("|"))))


def test_report_has_answered_rate_and_stop_shares():
    concept = [[sample("a\n#### 4", "end_of_text"), sample("b\n#### 5", "end_of_text")],
               [sample("c\n#### 4", "repetition"), sample("d\ne", "max_steps")]]
    token = [[sample("a\n#### 4", "eos"), sample("a\nb\nc", "max_tokens")], [sample("x", "eos"), sample("y", "eos")]]
    golds, refs = ["4", "4"], ["a\n#### 4", "c\n#### 4"]
    results = {"concept": summarize(concept, golds, refs, 1.0), "token": summarize(token, golds, refs, 1.0)}
    assert results["concept"]["answered"] == 0.75 and results["token"]["answered"] == 0.25
    assert (results["concept"]["stop_end_of_text"], results["concept"]["stop_repetition"],
            results["concept"]["stop_max_steps"]) == (0.5, 0.25, 0.25)
    assert (results["token"]["stop_end_of_text"], results["token"]["stop_repetition"],
            results["token"]["stop_max_steps"]) == (0.75, 0.0, 0.25)  # eos -> end, max_tokens -> max
    lines = table({"results": results, "systems": {"concept": {"params": 1e6}, "token": {"params": 2e6}}})
    row = cells(lines, "concept")
    assert (row["answered"], row["stop: end"], row["stop: repeat"], row["stop: max"]) == ("0.750", "0.50", "0.25", "0.25")
    row = cells(lines, "token")
    assert (row["answered"], row["stop: end"], row["stop: repeat"], row["stop: max"]) == ("0.250", "0.75", "0.00", "0.25")


def test_a_problem_given_as_its_prompt_sentences_is_not_resplit(trained_run):
    """A line-structured prompt ("Facts: ..." lines) passed as its sentences keeps one concept per sentence;
    the preview and comparisons pass held-out documents' prompts this way."""
    from lcm.generate import ConceptGenerator

    gen = ConceptGenerator.from_checkpoint(str(trained_run / "checkpoints" / "last.ckpt"))
    lines = ["Facts:", "x is an ancestor of y.", "How many eggs?"]
    out = gen.generate([lines], max_steps=2)[0]
    assert out.prompt_concepts == 3 and out.problem == "\n".join(lines)
    with pytest.raises(LCMError, match="the problem text is empty"):
        gen.generate([["", " "]])


def test_default_retrieval_reuses_the_rules_search(trained_run, monkeypatch):
    """The default read-out takes the boundary rule's nearest-sentence hit instead of searching the bank again:
    no extra decode call, and the same solutions as a retrieval decoder that searches by itself."""
    from lcm.decoding import RetrievalDecoder
    from lcm.generate import ConceptGenerator

    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    gen = ConceptGenerator.from_checkpoint(ckpt)
    calls = []
    monkeypatch.setattr(RetrievalDecoder, "decode", lambda self, p: calls.append(len(p)) or [])
    reused = gen.generate(["Ann has 3 pens and buys 4 more. How many pens does she have?"] * 2, num_samples=2,
                          noise=0.5, seed=0, max_steps=6)
    assert not calls and any(s.text for group in reused for g in group for s in g.steps)
    monkeypatch.undo()
    own = ConceptGenerator.from_checkpoint(ckpt)
    own.decoder = RetrievalDecoder(own.bank, exclude=own.boundary_texts)  # same bank and exclusions, own search
    own._retrieval_reads_rule = False
    searched = own.generate(["Ann has 3 pens and buys 4 more. How many pens does she have?"] * 2, num_samples=2,
                            noise=0.5, seed=0, max_steps=6)
    texts = lambda groups: [[[(s.text, round(s.score, 6)) for s in g.steps] for g in group] for group in groups]  # noqa: E731
    assert texts(reused) == texts(searched)


def test_a_loop_stops_a_recurring_step_does_not():
    """The repeat stop fires on a loop (the last L steps repeat the L before them), not on a step that recurs
    after others -- which gold solutions do (forks: "It leads to a dead end." after two detours) and which used
    to cut 12% of a logic-chain Base-LCM's solutions."""
    from lcm.generation_step import loops
    from lcm.train import Forks, LogicChains

    assert loops(["A", "A"]) and loops(["x", "A", "B", "A", "B"]) and loops(list("xABCDABCD"))
    assert not loops(["A", "B", "A"]) and not loops(["A"]) and not loops(list("ABCDEABCDE"))  # period 5 > 4
    assert not loops(["Every jompus is a lempus.", "So Polly is a jompus.", "Every jompus is a lempus."])
    for source in (LogicChains(n=300, seed=0), Forks(n=300, seed=0)):  # no gold solution is cut
        for doc in source.documents(256):
            assert not any(loops(doc.steps[:i]) for i in range(1, len(doc.steps) + 1)), doc.steps
    forks_recur = [d for d in Forks(n=300, seed=0).documents(256) if len(set(d.steps)) < len(d.steps)]
    assert forks_recur  # the old rule (any earlier step) would have cut these gold solutions


def test_generation_goes_on_after_a_recurring_step():
    """A solution that restates an earlier step after another one continues (the old rule stopped it)."""
    from lcm.decoding import Decoded

    rule = StepRule(eot_text="End of text.", break_concept=torch.zeros(4), max_steps=10)
    row = Row(Generation("p", prompt_concepts=1), [torch.zeros(4)], [], at_paragraph_start=False)
    texts = ["Every a is a b.", "So X is an a.", "Every a is a b.", "So X is a b."]
    alive = [rule.apply(row, Kind.STEP, np.zeros(4, dtype=np.float32), Decoded(t, np.zeros(4), 1.0, "retrieved"))
             for t in texts]
    assert alive == [True] * 4 and [s.text for s in row.gen.steps] == texts
    assert not rule.apply(row, Kind.STEP, np.zeros(4, dtype=np.float32), Decoded(texts[-1], np.zeros(4), 1.0, "retrieved"))
    assert row.gen.stop_reason == "repetition"  # "So X is a b." twice in a row: a loop


def test_a_break_right_after_a_break_is_read_as_the_plan_not_the_end():
    """At a paragraph start (after a break) a prediction closest to the break concept used to lose to
    end-of-text (0.49, the break's own cosine to it) against a poor plan match (0.30) and end the solution: the
    two-tower diffusion model's solutions ended after ~2 steps. Training puts a plan there: it is read as one."""
    rule = StepRule(eot_text=DEFAULT_EOT_TEXT, break_concept=torch.zeros(4), planning=True)
    row = Row(Generation("p", prompt_concepts=1), [torch.zeros(4)], [], at_paragraph_start=True)
    assert rule.classify(row, eot_cos=0.49, break_cos=1.0, step_cos=0.30) is Kind.PLAN
    assert rule.classify(row, eot_cos=0.95, break_cos=0.49, step_cos=0.30) is Kind.END  # a real end still ends
    row.at_paragraph_start = False
    assert rule.classify(row, eot_cos=0.49, break_cos=1.0, step_cos=0.30) is Kind.BREAK
