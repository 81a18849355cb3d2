"""Paragraph-level planning: segmentation edge cases, planners, sequence layout, generation with plans."""

import numpy as np
import pytest
import torch
from conftest import CONFIGS, TINY_FIT, fit_in, run_lcm

from lcm.concepts import ConceptType as C
from lcm.errors import LCMError
from lcm.planners import ExtractivePlanner, MeanPlanner, Paragraph, group_by_similarity, group_fixed, structure
from lcm.retrieval import SentenceBank
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
                           show_progress=False, planning=True, min_paragraph_steps=1)
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
    return fit_in(tmp_path_factory.mktemp("plan"), "quickstart_planning.yaml",
                  [*TINY_FIT, "--data.source.init_args.n", "150", "--trainer.max_epochs", "8"]) / "checkpoints"


def test_planning_generation_and_supplied_plans(planning_run):
    from lcm.generate import ConceptGenerator

    gen = ConceptGenerator.from_checkpoint(planning_run / "last.ckpt")
    assert gen.planning and (planning_run / "plan_bank" / "manifest.json").is_file()
    problem = "Emma has 12 apples. She gives 5 to Ann. How many apples does Emma have left?"
    out = gen.generate(problem, max_steps=12, max_paragraph_steps=3)
    assert out.steps[0].is_plan and out.steps[0].paragraph == 0 and out.steps[0].text in gen.plan_bank.texts
    assert [s.paragraph for s in out.steps] == sorted(s.paragraph for s in out.steps)
    assert len(out.paragraphs) == 1 + out.breaks_predicted + out.breaks_forced or out.stop_reason != "end_of_text"
    # steer with two plans on unrelated topics: the steps that follow each are retrieved near its topic
    plan_vecs = gen.plan_bank.vectors / np.linalg.norm(gen.plan_bank.vectors, axis=1, keepdims=True)
    a = 0
    b = int(np.argmin(plan_vecs @ plan_vecs[a]))
    plan_a, plan_b = gen.plan_bank.texts[a], gen.plan_bank.texts[b]
    keep = [i for i, t in enumerate(gen.bank.texts) if t != gen.eot_text]  # no end-of-text: always some steps
    no_eot = SentenceBank([gen.bank.texts[i] for i in keep], gen.bank.vectors[keep], gen.bank.encoder_id)
    steer = ConceptGenerator(gen.model, gen.encoder, no_eot, plan_bank=gen.plan_bank)
    kw = dict(max_steps=4, stop_on_repeat=False, eot_threshold=1.01, break_threshold=1.01)
    out_a, out_b = steer.generate([problem, problem], plans=[[plan_a], [plan_b]], **kw)
    assert out_a.steps[0].text == plan_a and out_a.steps[0].source == "supplied" and out_a.steps[0].is_plan
    assert [s.text for s in out_a.steps[1:]] != [s.text for s in out_b.steps[1:]]
    va, vb = gen.encoder.encode([plan_a, plan_b])

    def closeness(g, v):  # mean cosine of the generated steps to a plan vector
        vecs = no_eot.embeddings([no_eot.texts.index(s.text) for s in g.steps if not s.is_plan])
        return float((vecs @ v).mean())

    assert closeness(out_a, va) > closeness(out_b, va) and closeness(out_b, vb) > closeness(out_a, vb)
    with pytest.raises(LCMError, match="plans must be"):
        gen.generate(problem, plans=[""])


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
