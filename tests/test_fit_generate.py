"""End to end on a tiny real run: `lcm fit` -> checkpoint + bank -> generation API and `lcm generate`."""
import shutil

import numpy as np
import pytest
import torch
from conftest import CONFIGS, TINY_FIT, run_lcm

from lcm.decoding import Decoded
from lcm.errors import LCMError
from lcm.generate import ConceptGenerator, Generation
from lcm.generation_step import Kind, Row, StepRule
from lcm.retrieval import SentenceBank


def test_fit_writes_metrics_checkpoints_and_bank(trained_run):
    metrics = (trained_run / "metrics.csv").read_text()
    for key in ("val/loss", "val/cosine", "val/retrieval_acc", "val/cosine_copy_last", "val/cosine_mean", "train/loss"):
        assert key in metrics
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["lcm"]["encoder_id"] == "st:all-MiniLM-L6-v2" and ckpt["lcm"]["dim"] == 384
    assert bool(ckpt["state_dict"]["normalizer.fitted"])
    bank = SentenceBank.load(trained_run / "checkpoints" / "bank", encoder_id="st:all-MiniLM-L6-v2", dim=384)
    assert "End of text." in bank.texts and bank.kind == "flat"


def test_generate_api_single_and_batched(trained_run):
    gen = ConceptGenerator.from_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    problem = "Tom has 12 apples. He gives 5 to Ann. How many apples does Tom have left?"
    out = gen.generate(problem, max_steps=5)
    assert isinstance(out, Generation) and out.problem == problem
    # the stop reason agrees with the record: the cap is reached only at 5 steps (every call made a step);
    # end-of-text and repetition stop on a prediction that is not recorded, so one call more than steps
    if out.stop_reason == "max_steps":
        assert len(out.steps) == 5 and out.calls == 5
    else:
        assert len(out.steps) < 5 and out.calls == len(out.steps) + 1
    assert len(out.inputs) == out.prompt_concepts + len(out.steps) == len(gen.prompt_concepts(problem)) + len(out.steps)
    for step, fed in zip(out.steps, out.inputs[out.prompt_concepts:]):
        assert step.text in gen.bank.texts and step.embedding.shape == (384,)
        assert np.isfinite(step.embedding).all() and -1 <= step.score <= 1
        assert np.array_equal(fed, gen.bank.embeddings([gen.bank.texts.index(step.text)])[0])  # "decoded" feedback
    batch = gen.generate([problem, "A shop sells 3 pens for $6. What does one pen cost?"], max_steps=5)
    assert len(batch) == 2 and [s.text for s in batch[0].steps] == [s.text for s in out.steps]  # batching is exact
    fed = gen.generate(problem, max_steps=3, feedback="predicted", stop_on_repeat=False)
    assert all(np.array_equal(v, s.embedding) for v, s in zip(fed.inputs[fed.prompt_concepts:], fed.steps))


def test_score_is_cosine_of_retrieved_text_to_prediction(trained_run):
    gen = ConceptGenerator.from_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    out = gen.generate("Sam reads 4 pages a day for 7 days. How many pages?", max_steps=2, stop_on_repeat=False,
                       eot_threshold=1.01)
    assert out.steps
    step = out.steps[0]
    emb = gen.bank.embeddings([gen.bank.texts.index(step.text)])[0]
    cos = float(emb @ step.embedding / np.linalg.norm(emb) / np.linalg.norm(step.embedding))
    assert abs(cos - step.score) < 1e-4


def test_generate_cli_prints_steps(trained_run, capsys):
    code, _ = run_lcm(["generate", "--ckpt", str(trained_run / "checkpoints" / "last.ckpt"), "--max-steps", "3",
                       "Kim has 3 boxes of 4 eggs. How many eggs?"], capsys=None)
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("problem: Kim has 3 boxes") and "[stop: " in out
    code, _ = run_lcm(["generate", "--ckpt", str(trained_run / "checkpoints" / "last.ckpt"), "--max-steps", "2",
                       "--seed", "0", "--noise", "0.5", "Kim has 3 boxes of 4 eggs. How many eggs?"], capsys=None)
    assert code == 0 and "[stop: " in capsys.readouterr().out


def test_generate_cli_refuses_a_sampling_option_the_model_does_not_use(trained_run, capsys):
    code, err = run_lcm(["generate", "--ckpt", str(trained_run / "checkpoints" / "last.ckpt"), "--ddim-steps", "10",
                         "Kim has 3 boxes of 4 eggs. How many eggs?"], capsys)
    assert code == 2 and err.count("\n") == 1 and "sampling option 'ddim_steps' does nothing for a Base-LCM model" in err


def test_resume_continues_in_the_runs_own_folder_and_validate(trained_run, tmp_path, monkeypatch):
    """A resumed fit used to start version_1, splitting one run's metrics across two folders."""
    import csv

    run = tmp_path / "runs" / "quickstart" / "version_0"
    shutil.copytree(trained_run, run)
    (tmp_path / ".cache").symlink_to(trained_run.parents[2] / ".cache")  # the same embedding cache and store
    monkeypatch.chdir(tmp_path)
    rows_before = list(csv.DictReader((run / "metrics.csv").open()))
    code, _ = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT, "--trainer.max_epochs", "3",
                       "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert code == 0
    assert [p.name for p in run.parent.iterdir()] == ["version_0"]  # no new version folder
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == 2  # continued from epoch 2 for one more epoch
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert rows[:len(rows_before)] == rows_before  # the first part of the run is kept, not deleted
    epochs = {int(r["epoch"]) for r in rows if r.get("val/loss")}
    assert epochs == {0, 1, 2}  # the curve continues in one file
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # TensorBoard continues in the same folder too
    code, _ = run_lcm(["validate", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT,
                       "--ckpt_path", str(run / "checkpoints" / "best.ckpt")])
    assert code == 0
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0", "version_1"]  # validate: its own folder


def copy_run(trained_run, tmp_path):
    dst = tmp_path / "ckpts"
    shutil.copytree(trained_run / "checkpoints", dst)
    return dst


def test_truncated_index_and_inconsistent_bank(trained_run, tmp_path):
    ckpts = copy_run(trained_run, tmp_path)
    index = ckpts / "bank" / "index.faiss"
    index.write_bytes(index.read_bytes()[:200])
    with pytest.raises(LCMError, match="corrupted or truncated"):
        ConceptGenerator.from_checkpoint(ckpts / "last.ckpt")
    ckpts = copy_run(trained_run, tmp_path / "b")
    texts = ckpts / "bank" / "texts.json"
    texts.write_text('["only one"]')
    with pytest.raises(LCMError, match="inconsistent"):
        ConceptGenerator.from_checkpoint(ckpts / "last.ckpt")


def test_validate_rebuilds_a_deleted_bank_next_to_the_checkpoint(trained_run, tmp_path, monkeypatch):
    monkeypatch.chdir(trained_run.parent.parent.parent)
    ckpts = copy_run(trained_run, tmp_path)
    shutil.rmtree(ckpts / "bank")
    code, _ = run_lcm(["validate", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT, "--ckpt_path", str(ckpts / "last.ckpt")])
    assert code == 0 and (ckpts / "bank" / "manifest.json").is_file()
    rebuilt = ConceptGenerator.from_checkpoint(ckpts / "last.ckpt")
    original = ConceptGenerator.from_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    assert sorted(rebuilt.bank.texts) == sorted(original.bank.texts)
    problem = "Tom has 3 apples. How many?"
    a, b = (g.generate(problem, max_steps=4, eot_threshold=1.01, stop_on_repeat=False) for g in (rebuilt, original))
    assert [s.text for s in a.steps] == [s.text for s in b.steps] and (a.stop_reason, a.calls) == (b.stop_reason, b.calls)


def test_encoder_mismatch_with_checkpoint(trained_run):
    from lcm.encoders import SentenceTransformerEncoder

    raw = SentenceTransformerEncoder(normalize=False)  # another id: vectors would differ
    with pytest.raises(LCMError, match="differs from the checkpoint"):
        ConceptGenerator.from_checkpoint(trained_run / "checkpoints" / "last.ckpt", encoder=raw)


def test_checkpoint_problems_are_one_line_errors(trained_run, tmp_path, capsys):
    code, err = run_lcm(["generate", "--ckpt", str(tmp_path / "missing.ckpt"), "x"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "does not exist" in err
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes((trained_run / "checkpoints" / "last.ckpt").read_bytes()[:1000])
    code, err = run_lcm(["generate", "--ckpt", str(bad), "x"], capsys)
    assert code == 2 and err.startswith("error: checkpoint") and "corrupted" in err and err.count("\n") == 1
    code, err = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT, "--ckpt_path", str(bad)], capsys)
    assert code == 2 and "corrupted" in err and err.count("\n") == 1


# ---- the per-row step rule, on hand-made vectors (no model, encoder or bank) -------------------------------
D = 4
PRED = np.arange(1, D + 1, dtype=np.float32)
BREAK = torch.full((D,), -1.0)


def row(planning: bool = False, plans=()) -> Row:
    return Row(Generation("problem", prompt_concepts=1), [torch.zeros(D)], list(plans), at_paragraph_start=planning)


def read(text: str, hot: int = 0) -> Decoded:
    return Decoded(text, np.eye(D, dtype=np.float32)[hot], 0.5, "retrieved")


def test_step_rule_stop_reasons_and_feedback():
    rule = StepRule("End of text.", BREAK, max_steps=3)
    r = row()
    assert rule.classify(r, eot_cos=0.95, break_cos=0.0, step_cos=0.4) is Kind.END
    assert rule.classify(r, eot_cos=0.5, break_cos=0.99, step_cos=0.6) is Kind.STEP  # no break without planning
    assert rule.apply(r, Kind.STEP, PRED, read("a", 1))
    assert [s.text for s in r.gen.steps] == ["a"] and r.gen.steps[0].embedding is PRED
    assert torch.equal(r.inputs[-1], torch.eye(D)[1])  # "decoded" feedback: the read-out text's embedding
    assert not rule.apply(r, Kind.STEP, PRED, read("a")) and r.gen.stop_reason == "repetition"
    assert len(r.gen.steps) == 1 and len(r.inputs) == 2 and r.gen.calls == 2  # the stopping call is counted
    r = row()
    assert not rule.apply(r, Kind.STEP, PRED, read("End of text.")) and r.gen.stop_reason == "end_of_text"
    r = row()
    assert not rule.apply(r, Kind.END, PRED) and r.gen.stop_reason == "end_of_text" and not r.gen.steps
    predicted = StepRule("End of text.", BREAK, max_steps=2, stop_on_repeat=False, feedback="predicted")
    r = row()
    assert predicted.apply(r, Kind.STEP, PRED, read("a")) and torch.equal(r.inputs[-1], torch.from_numpy(PRED))
    assert not predicted.apply(r, Kind.STEP, PRED, read("a")) and r.gen.stop_reason == "max_steps"  # repeat allowed
    assert [s.text for s in r.gen.steps] == ["a", "a"]
    full = StepRule("End of text.", BREAK, max_len=2)  # the context holds 2 concepts: the prompt and one step
    r = row()
    assert not full.apply(r, Kind.STEP, PRED, read("a")) and r.gen.stop_reason == "max_steps"
    with pytest.raises(LCMError, match="feedback must be"):
        StepRule("End of text.", BREAK, feedback="snapped")


def test_step_rule_plans_and_breaks():
    rule = StepRule("End of text.", BREAK, planning=True, max_paragraph_steps=1)
    plan_vec = torch.tensor([0.0, 0.0, 3.0, 4.0])
    r = row(planning=True, plans=[("Count the apples.", plan_vec)])
    assert rule.classify(r, eot_cos=0.99, break_cos=0.99, step_cos=0.0) is Kind.SUPPLIED_PLAN  # the user's plan first
    assert rule.apply(r, Kind.SUPPLIED_PLAN, PRED)
    plan = r.gen.steps[0]
    assert (plan.text, plan.source, plan.is_plan, plan.paragraph) == ("Count the apples.", "supplied", True, 0)
    assert torch.equal(r.inputs[-1], plan_vec)
    assert np.isclose(plan.score, float(PRED @ plan_vec.numpy()) / np.linalg.norm(PRED) / 5.0)
    assert rule.classify(r, eot_cos=0.5, break_cos=0.95, step_cos=0.4) is Kind.BREAK
    assert rule.classify(r, eot_cos=0.8, break_cos=0.7, step_cos=0.4) is Kind.END  # the closest concept wins
    assert rule.apply(r, Kind.STEP, PRED, read("a"))
    assert rule.classify(r, eot_cos=0.5, break_cos=0.5, step_cos=0.6) is Kind.FORCED_BREAK  # max_paragraph_steps
    assert rule.apply(r, Kind.FORCED_BREAK, PRED) and torch.equal(r.inputs[-1], BREAK)
    assert (r.paragraph, r.paragraph_steps, r.at_paragraph_start, r.gen.breaks_forced) == (1, 0, True, 1)
    assert rule.classify(r, eot_cos=0.5, break_cos=0.99, step_cos=0.6) is Kind.PLAN  # no supplied plan left
    assert rule.apply(r, Kind.PLAN, PRED, read("Then add.", 2)) and r.gen.steps[-1].is_plan
    assert rule.classify(r, eot_cos=0.5, break_cos=0.95, step_cos=0.4) is Kind.BREAK
    assert rule.apply(r, Kind.BREAK, PRED) and r.gen.breaks_predicted == 1
    assert [s.paragraph for s in r.gen.steps] == [0, 0, 1] and len(r.gen.steps) == 3 and r.gen.calls == 5


# ---- issue 14: what a new user hits ------------------------------------------------------------------------
def test_generate_cli_can_turn_off_stop_on_repeat(trained_run, monkeypatch):
    calls = []

    def record(self, problems, **kwargs):
        calls.append(kwargs)
        return []

    monkeypatch.setattr(ConceptGenerator, "generate", record)
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    assert run_lcm(["generate", "--ckpt", ckpt, "Kim has 3 boxes. How many?"])[0] == 0
    assert run_lcm(["generate", "--ckpt", ckpt, "--no-stop-on-repeat", "Kim has 3 boxes. How many?"])[0] == 0
    assert [c["stop_on_repeat"] for c in calls] == [True, False]


def test_generate_names_bad_problems(trained_run):
    gen = ConceptGenerator.from_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    for bad, message in ((None, "not NoneType"), (5, "not int"), (["Tom has 3.", 7], "problem 2 of 2 is a int"),
                         (["Tom has 3.", "  ", "Ann has 2."], "problem 2 of 3 is empty"), ("", "problem text is empty")):
        with pytest.raises(LCMError, match=message):
            gen.generate(bad, max_steps=1)


MULTI_LINE = "Facts:\nx is an ancestor of y.\nQuestion: who?"


def test_prompt_format_lines_or_sentences(trained_run, tmp_path):
    from lcm.text import split_and_cap

    gen = ConceptGenerator.from_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    assert gen.prompt_format == "sentences"  # a checkpoint that does not say
    assert gen.prompt_concepts(MULTI_LINE) == split_and_cap(MULTI_LINE, gen.max_chars, "sentences")
    lines = ConceptGenerator(gen.model, gen.encoder, gen.bank, max_chars=gen.max_chars, prompt_format="lines")
    assert lines.prompt_concepts(MULTI_LINE) == ["Facts:", "x is an ancestor of y.", "Question: who?"]
    assert lines.generate(MULTI_LINE, max_steps=1).prompt_concepts == 3
    with pytest.raises(LCMError, match="prompt_format must be one of"):
        ConceptGenerator(gen.model, gen.encoder, gen.bank, prompt_format="paragraphs")
    ckpts = copy_run(trained_run, tmp_path)
    ckpt = torch.load(ckpts / "last.ckpt", weights_only=False)
    ckpt["lcm"]["prompt_format"] = "lines"
    torch.save(ckpt, ckpts / "last.ckpt")
    assert ConceptGenerator.from_checkpoint(ckpts / "last.ckpt").prompt_format == "lines"


def test_fit_ends_with_the_checkpoint_and_the_next_command(trained_run, capsys, monkeypatch):
    monkeypatch.chdir(trained_run.parent.parent.parent)  # same cache
    code, _ = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT, "--trainer.max_epochs", "1",
                       "--trainer.logger.init_args.name", "next_steps"])
    out = capsys.readouterr().out
    assert code == 0
    assert "checkpoint: " in out and "best.ckpt (best)" in out and "last.ckpt (last)" in out
    (command,) = [line for line in out.splitlines() if line.startswith("next: lcm generate --ckpt ")]
    assert "best.ckpt" in command
