"""End to end on a tiny real run: `lcm fit` -> checkpoint + bank -> generation API and `lcm generate`."""
import shutil

import numpy as np
import pytest
import torch
from conftest import CONFIGS, TINY_FIT, run_lcm

from lcm.errors import LCMError
from lcm.generate import ConceptGenerator, Generation
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
    assert out.stop_reason in ("end_of_text", "repetition", "max_steps")
    assert 0 <= len(out.steps) <= 5
    for step in out.steps:
        assert step.text in gen.bank.texts and step.embedding.shape == (384,)
        assert np.isfinite(step.embedding).all() and -1 <= step.score <= 1
    batch = gen.generate([problem, "A shop sells 3 pens for $6. What does one pen cost?"], max_steps=5)
    assert len(batch) == 2 and [s.text for s in batch[0].steps] == [s.text for s in out.steps]  # batching is exact
    fed = gen.generate(problem, max_steps=3, feedback="predicted", stop_on_repeat=False)
    assert len(fed.steps) <= 3


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


def test_resume_and_validate(trained_run, tmp_path, monkeypatch):
    monkeypatch.chdir(trained_run.parent.parent.parent)  # same cache and runs/ folder
    ckpt = str(trained_run / "checkpoints" / "last.ckpt")
    code, _ = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT, "--trainer.max_epochs", "3",
                       "--ckpt_path", ckpt])
    assert code == 0
    resumed = torch.load(trained_run.parent / "version_1" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == 2  # continued from epoch 2 for one more epoch
    code, _ = run_lcm(["validate", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT, "--ckpt_path", ckpt])
    assert code == 0


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
    assert ConceptGenerator.from_checkpoint(ckpts / "last.ckpt").generate("Tom has 3 apples. How many?", max_steps=2)


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
