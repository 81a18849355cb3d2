"""Paragraph-level planning: segmentation edge cases, planners, sequence layout, generation with plans."""

import numpy as np
import pytest
import torch
from conftest import CONFIGS, TINY_FIT, fit_in, run_lcm

from lcm.concepts import ConceptType as C
from lcm.errors import LCMError
from lcm.planners import ExtractivePlanner, MeanPlanner, Paragraph, Planning, group_by_similarity, group_fixed, structure
from lcm.train import ConceptDataModule, DatasetSource


def test_structure_no_breaks_and_empty():
    assert structure([]) == []
    assert structure([[], []]) == []
    assert structure([["a", "b", "c"]]) == [Paragraph(["a", "b", "c"])]


def test_structure_caps_one_giant_paragraph():
    steps = [f"s{i}" for i in range(25)]
    out = structure([steps], max_steps=9)
    assert [len(p.steps) for p in out] == [9, 8, 8] and [s for p in out for s in p.steps] == steps


def test_structure_headers_become_plans():
    out = structure([["1. Initial amounts:", "x = 3", "y = 4"], ["2. Totals:", "z = 7", "#### 7"]])
    assert out == [Paragraph(["x = 3", "y = 4"], "1. Initial amounts:"), Paragraph(["z = 7", "#### 7"], "2. Totals:")]
    # a header-only paragraph heads the next paragraph when that one has no header of its own
    assert structure([["Costs:"], ["a", "b"]]) == [Paragraph(["a", "b"], "Costs:")]
    # ... otherwise (next has a header, or it is last) it is an ordinary one-step paragraph
    # two header-only paragraphs in a row keep their order
    assert structure([["Costs:"], ["Totals:"], ["x", "y"]]) == [Paragraph(["Costs:"]), Paragraph(["x", "y"], "Totals:")]
    assert structure([["Plan:"], ["2. Totals:", "z"], ["End:"]], min_steps=1) == [
        Paragraph(["Plan:"]), Paragraph(["z"], "2. Totals:"), Paragraph(["End:"])]


def test_structure_merges_tiny_paragraphs():
    assert structure([["a", "b"], ["c"], ["d", "e"]], min_steps=2) == [Paragraph(["a", "b", "c"]), Paragraph(["d", "e"])]
    assert structure([["a"], ["b", "c"]], min_steps=2) == [Paragraph(["a"]), Paragraph(["b", "c"])]  # nothing before


def test_grouping(encoder):
    assert group_fixed(list("abcdefg"), 3) == [list("abc"), list("def"), ["g"]]
    steps = ["The cake needs 3 eggs.", "The cake also needs 200 g of flour.", "Bake the cake for 30 minutes.",
             "The train leaves at 9 am.", "The train arrives at noon.", "The train trip lasts 3 hours."]
    groups = group_by_similarity(steps, encoder.encode(steps), threshold=0.25)
    assert groups[0][0] == steps[0] and any(g[0] == steps[3] for g in groups)  # the topic change starts a paragraph
    assert [s for g in groups for s in g] == steps


def test_planners(encoder):
    steps = ["Tom buys 3 apples.", "Tom buys 4 pears.", "Tom buys 2 apples and 1 pear.", "The sky is blue today."]
    emb = encoder.encode(steps)
    text, vec = ExtractivePlanner().plan(steps, emb)
    assert text in steps[:3] and np.array_equal(vec, emb[steps.index(text)])
    text2, vec2 = MeanPlanner().plan(steps, emb)
    assert text2 == text and np.isclose(np.linalg.norm(vec2), np.linalg.norm(emb, axis=1).mean(), atol=1e-5)


def test_layout(tmp_path, encoder):
    rows = [{"question": f"Q{i}: how many?", "steps": f"1. First part:\nx = {i}\ny = {i}\n\nz = {i}\nw = {i}\n#### {i}",
             "answer": None} for i in range(20)]
    path = tmp_path / "d.jsonl"
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = ConceptDataModule(DatasetSource(str(path), answer_field=None), encoder=encoder, cache_dir=str(tmp_path / "c"),
                           show_progress=False, planning=Planning(min_paragraph_steps=1))
    dm.setup("fit")
    ids, types = dm.corpus.seqs["train"][0]
    P, S, B, E, Q = C.PLAN, C.STEP, C.BREAK, C.EOT, C.PROMPT
    assert list(types) == [Q, P, S, S, B, P, S, S, S, E]
    texts = [dm.corpus.texts[i] for i in ids]
    assert texts[1] == "1. First part:" and texts[4] == "Next paragraph."
    assert texts[5] in texts[6:9]  # extractive plan: a step of its paragraph
    assert dm.plan_bank() is not None and "1. First part:" in dm.plan_bank().texts
    off = ConceptDataModule(DatasetSource(str(path), answer_field=None), encoder=encoder, cache_dir=str(tmp_path / "c"),
                            show_progress=False)
    off.setup("fit")
    assert list(off.corpus.seqs["train"][0][1]) == [Q] + [S] * 6 + [E] and off.plan_bank() is None


def test_loss_weights():
    from lcm.model import LCMConfig
    from lcm.module import ConceptLM, target_mask

    m = ConceptLM(arch=LCMConfig(embed_dim=4, d_model=8, n_layer=1, n_head=2), loss_weights={"plan": 0.0})
    types = torch.tensor([[C.PROMPT, C.PLAN, C.STEP, C.EOT, -1]])
    pred, target = torch.zeros(1, 4, 4), torch.ones(1, 4, 4)
    target[0, 0] = 5.0  # the plan position: weight 0, must not count
    assert torch.isclose(m._loss(pred, target, types, target_mask(types)), torch.tensor(1.0))
    with pytest.raises(LCMError, match="unknown position types"):
        ConceptLM(loss_weights={"prompt": 1.0})


@pytest.fixture(scope="module")
def planning_run(tmp_path_factory):
    """quickstart_planning.yaml (MeanPlanner plans) at the tests' tiny scale, like every other test run."""
    return fit_in(tmp_path_factory.mktemp("plan"), "quickstart_planning.yaml", TINY_FIT) / "checkpoints"


PROBLEM = "Emma has 12 apples. She gives 5 to Ann. How many apples does Emma have left?"
MULTI_SENTENCE_PLAN = "Emma starts with 12 apples.\nShe gives 5 apples to Ann.\nSo 12 - 5 = 7 apples are left."


def test_planning_generation_reads_plans_through_the_plan_bank(planning_run):
    from lcm.generate import ConceptGenerator

    gen = ConceptGenerator.from_checkpoint(planning_run / "last.ckpt")
    assert gen.planning and (planning_run / "plan_bank" / "manifest.json").is_file()
    brk = gen.model.break_embedding.numpy()
    for out in gen.generate([PROBLEM, "Sam reads 4 pages a day for 7 days. How many pages?"], max_steps=12,
                            max_paragraph_steps=2, stop_on_repeat=False):
        assert out.steps[0].is_plan and out.steps[0].text in gen.plan_bank.texts
        assert all(p[0].is_plan and p[0].source == "retrieved" for p in out.paragraphs if p)
        assert all(len([s for s in p if not s.is_plan]) <= 2 for p in out.paragraphs)
        # every break is fed back as the break concept; a paragraph exists for each break, plus the last one
        # unless the generation stopped right after a break (before that paragraph's plan)
        fed_breaks = sum(np.array_equal(v, brk) for v in out.inputs[out.prompt_concepts:])
        assert fed_breaks == out.breaks_predicted + out.breaks_forced
        ended_on_break = np.array_equal(out.inputs[-1], brk)
        assert len(out.paragraphs) == fed_breaks + (not ended_on_break)
    with pytest.raises(LCMError, match="plans must be"):
        gen.generate(PROBLEM, plans=[""])


def spy_on_inputs(model, monkeypatch) -> list:
    """Records the (x, lengths) of every `next_concept` call of `model`."""
    seen, original = [], model.next_concept

    def spy(x, lengths, *args, **kwargs):
        seen.append((x.clone(), lengths.clone()))
        return original(x, lengths, *args, **kwargs)

    monkeypatch.setattr(model, "next_concept", spy)
    return seen


def test_supplied_plan_is_the_planners_plan_concept(planning_run, encoder, monkeypatch):
    from lcm.generate import ConceptGenerator

    gen = ConceptGenerator.from_checkpoint(planning_run / "last.ckpt")
    assert gen.model.meta["planner"] == "lcm.planners.planner.MeanPlanner"  # what the config trained with
    sentences = gen.plan_sentences(MULTI_SENTENCE_PLAN)
    assert len(sentences) == 3
    emb = encoder.encode(sentences)
    seen = spy_on_inputs(gen.model, monkeypatch)
    out = gen.generate(PROBLEM, plans=[MULTI_SENTENCE_PLAN], max_steps=4)
    plan = out.steps[0]
    assert plan.is_plan and plan.source == "supplied" and plan.text == MULTI_SENTENCE_PLAN and plan.paragraph == 0
    fed = out.inputs[out.prompt_concepts]  # the first concept of paragraph 1
    assert np.allclose(fed, MeanPlanner().plan(sentences, emb)[1], atol=1e-6)
    raw = encoder.encode([MULTI_SENTENCE_PLAN])[0]  # what was fed before: the whole plan as one sentence
    assert float(fed @ raw / np.linalg.norm(fed) / np.linalg.norm(raw)) < 0.999
    assert np.isclose(plan.score, float(fed @ plan.embedding / np.linalg.norm(fed) / np.linalg.norm(plan.embedding)),
                      atol=1e-5)
    # the model's next prediction is conditioned on exactly that vector, right after the problem's sentences
    x, lengths = seen[1]
    assert int(lengths[0]) == out.prompt_concepts + 1
    assert torch.allclose(x[0, out.prompt_concepts], torch.from_numpy(fed))


def test_supplied_plan_follows_the_recorded_planner(planning_run, encoder):
    from lcm.generate import ConceptGenerator

    gen = ConceptGenerator.from_checkpoint(planning_run / "last.ckpt")
    sentences = gen.plan_sentences(MULTI_SENTENCE_PLAN)
    gen.model.meta["planner"] = None  # a checkpoint written before planners were recorded: ExtractivePlanner
    out = gen.generate(PROBLEM, plans=[MULTI_SENTENCE_PLAN], max_steps=1)
    assert np.allclose(out.inputs[out.prompt_concepts], ExtractivePlanner().plan(sentences, encoder.encode(sentences))[1],
                       atol=1e-6)
    gen.model.meta["planner"] = {"class_path": "my.own.TopicPlanner", "init_args": {}}
    with pytest.raises(LCMError, match="planner 'TopicPlanner' has no plan-vector rule") as e:
        gen.generate(PROBLEM, plans=[MULTI_SENTENCE_PLAN], max_steps=1)
    assert "\n" not in str(e.value)
    assert gen.generate(PROBLEM, max_steps=1).calls == 1  # no supplied plan: no rule needed


def test_core_plan_vector_rules_are_the_planners(encoder):
    from lcm.plan_vectors import plan_vector_rule

    steps = ["Tom buys 3 apples.", "Tom buys 4 pears.", "Tom buys 2 apples and 1 pear.", "The sky is blue today."]
    emb = encoder.encode(steps)
    for planner in (ExtractivePlanner(), MeanPlanner()):
        cls = type(planner)
        for record in (f"{cls.__module__}.{cls.__qualname__}", f"lcm.planners.{cls.__name__}",
                       {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": {}}):
            assert np.array_equal(plan_vector_rule(record)(emb), planner.plan(steps, emb)[1])


def paragraph_closeness(g, plan_vec: np.ndarray) -> float | None:
    """Mean cosine of the concepts fed back for paragraph 1's steps to a plan vector (None: no step)."""
    k = sum(1 for s in g.steps if s.paragraph == 0 and not s.is_plan)
    if k == 0:
        return None
    steps = np.stack(g.inputs[g.prompt_concepts + 1: g.prompt_concepts + 1 + k])
    return float((steps @ plan_vec / np.linalg.norm(steps, axis=1) / np.linalg.norm(plan_vec)).mean())


STEERING_PROBLEMS = 24


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "steering is not measurable at the tests' tiny scale (80 problems, 2 epochs, d_model 64): 18 of 24 "
    "generations with a supplied plan end right after it (no step in paragraph 1); on the 6 with steps "
    "d = 0.099 (5 of 6 > 0). Measured with the fixture bumped to 150 problems x 8 epochs: 21 of 24 have "
    "steps, d = 0.263 (14 of 21 > 0)"))
def test_supplied_plans_steer_the_paragraph(planning_run):
    """Each held-out-style problem is generated twice: with its own first paragraph as the plan (A) and with the
    next problem's (B), at the default thresholds and with the full bank. Steering moves the paragraph toward
    the supplied plan: d = [cos(A, own) - cos(A, other)] - [cos(B, own) - cos(B, other)] > 0."""
    from lcm.generate import ConceptGenerator
    from lcm.train import GsmSymbolic

    gen = ConceptGenerator.from_checkpoint(planning_run / "last.ckpt")
    docs = [d for d in GsmSymbolic(n=STEERING_PROBLEMS + 4, seed=7).documents(256) if len(d.steps) >= 3]
    docs = docs[:STEERING_PROBLEMS]
    problems, plans = [d.prompt_text for d in docs], ["\n".join(d.steps[:3]) for d in docs]  # each its first paragraph
    n = len(docs)
    own = gen.generate(problems, plans=[[p] for p in plans])
    other = gen.generate(problems, plans=[[plans[(i + 1) % n]] for i in range(n)])
    d = []
    for a, b in zip(own, other):
        v_own, v_other = a.inputs[a.prompt_concepts], b.inputs[b.prompt_concepts]
        scores = [paragraph_closeness(g, v) for g in (a, b) for v in (v_own, v_other)]
        if None not in scores:
            d.append((scores[0] - scores[1]) - (scores[2] - scores[3]))
    measured = f"{len(d)} of {n} problems with steps in paragraph 1 under both plans; d = {d}"
    assert len(d) >= n // 2, measured
    assert np.mean(d) > 0.05 and sum(x > 0 for x in d) >= 2 * len(d) / 3, measured


def test_plans_need_a_planning_model(trained_run):
    from lcm.generate import ConceptGenerator

    gen = ConceptGenerator.from_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    with pytest.raises(LCMError, match="needs a model trained with planning"):
        gen.generate("Tom has 3 apples. How many?", plans=["Count the apples."])


def test_resume_with_other_planning_setting_is_refused(trained_run, capsys, monkeypatch):
    monkeypatch.chdir(trained_run.parent.parent.parent)
    code, err = run_lcm(["fit", "-c", str(CONFIGS / "quickstart_planning.yaml"), *TINY_FIT,
                         "--ckpt_path", str(trained_run / "checkpoints" / "last.ckpt")], capsys)
    assert code == 2 and "disagree (planning: checkpoint False vs config True" in err and err.count("\n") == 1
