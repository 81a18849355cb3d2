"""The data side hands models what they need (lcm.handoff); banks are written by a callback and tied to their
corpus; --ckpt_path is read once; wrong model/data pairs and truncated decoder sentences are reported."""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, REPO, TINY_FIT, run_lcm

from lcm.decoder import SentenceDecoderLM
from lcm.handoff import ConceptData, EncoderRecord, SentenceData
from lcm.model import LCMConfig
from lcm.module import ConceptLM


def _probes_data(node: ast.AST) -> bool:
    """hasattr/getattr on a DataModule: a name `dm` / `datamodule`, or `<anything>.datamodule`."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
            and node.args):
        return False
    target = ast.unparse(node.args[0])
    return target in ("dm", "datamodule") or target.endswith(".datamodule")


def test_no_model_reads_a_datamodule():
    """No module below the train floor touches `.datamodule`, and no module anywhere probes a DataModule with
    hasattr/getattr: data reaches models through `lcm.handoff`, explicit types elsewhere."""
    offenders = []
    for folder in ("lcm", "encoders", "planners", "train", "eval"):
        for path in (REPO / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                below_train = folder in ("lcm", "encoders", "planners")
                if below_train and isinstance(node, ast.Attribute) and node.attr == "datamodule":
                    offenders.append(f"{folder}/{path.name}:{node.lineno} .datamodule")
                if _probes_data(node):
                    offenders.append(f"{folder}/{path.name}:{node.lineno} {ast.unparse(node)}")
    assert not offenders, offenders


def _concept_data(dim: int = 8) -> ConceptData:
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(50, dim)).astype(np.float32)
    return ConceptData(encoder=EncoderRecord({"class_path": "x"}, "enc:test", dim), eot_text="End of text.",
                       max_chars=256, planning=False, break_text=None, planner=None, corpus="abc", prompt_format="lines",
                       eot_vector=targets[0], break_vector=None, fit_targets=lambda: targets,
                       retrieval_candidates=lambda split: (np.arange(5), targets[:5]))


def test_a_concept_model_fits_from_the_handed_over_object_alone():
    data = _concept_data()
    model = ConceptLM(LCMConfig(embed_dim=8, d_model=16, n_layer=1, n_head=2, max_seq_len=8))
    model.attach_data(data)
    assert bool(model.normalizer.fitted) and torch.equal(model.eot_embedding, torch.from_numpy(data.eot_vector))
    assert model.meta == data.meta() and model.meta["corpus"] == "abc" and model.meta["prompt_format"] == "lines"
    candidates = model._retrieval_index("val")
    assert candidates.index.ntotal == 5 and list(candidates.rows) == list(range(5))
    import copy

    assert copy.deepcopy(model).data is data  # a weight-averaging copy of the model does not copy the data


def test_wrong_data_or_dimension_is_one_clear_error():
    from lcm.errors import LCMError

    model = ConceptLM(LCMConfig(embed_dim=8, d_model=16, n_layer=1, n_head=2, max_seq_len=8))
    with pytest.raises(LCMError, match="trains on ConceptData but the data is SentenceData"):
        model.attach_data(SentenceData(EncoderRecord({}, "enc:test", 8), lambda: ["a"]))
    with pytest.raises(LCMError, match="dimension 4 but model.arch.embed_dim is 8"):
        model.attach_data(_concept_data(dim=4))


def test_concept_model_on_sentence_data_is_refused_from_the_cli(tmp_path, capsys):
    os.chdir(tmp_path)
    code, err = run_lcm(["fit", "-c", str(CONFIGS / "decoder_quickstart.yaml"), "--model", "lcm.module.ConceptLM",
                         "--data.init_args.source.init_args.n", "40", "--data.init_args.show_progress", "false"],
                        capsys)
    assert code == 2 and "ConceptLM trains on ConceptData but the data is SentenceData" in err
    assert "Traceback" not in err


def test_ckpt_path_is_not_unpickled_to_validate_it(trained_run, monkeypatch):
    """`lcm validate --ckpt_path`: Lightning reads the hyper-parameters (weights only), then restores the run.
    The CLI used to `torch.load(weights_only=False)` the whole file first, only to check it."""
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real(*a, **k))
    cwd = os.getcwd()
    os.chdir(trained_run.parents[2])
    try:
        code, _ = run_lcm(["validate", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT, "--ckpt_path",
                           str(trained_run / "checkpoints" / "last.ckpt")])
    finally:
        os.chdir(cwd)
    assert code == 0 and False not in calls and len(calls) == 2, calls


def _validate(trained_run, ckpt: Path, args: list[str]) -> int:
    cwd = os.getcwd()
    os.chdir(trained_run.parents[2])  # the fixture's work folder: its embedding cache is reused
    try:
        return run_lcm(["validate", "-c", str(CONFIGS / "quickstart.yaml"), *args, "--ckpt_path", str(ckpt)])[0]
    finally:
        os.chdir(cwd)


def test_banks_are_tied_to_the_corpus_the_checkpoint_was_trained_on(trained_run, tmp_path):
    """A bank built from another corpus is rebuilt under `lcm validate` (it used to be kept whenever the encoder
    matched) and refused by generation; validating on other data leaves the checkpoint's bank alone."""
    import shutil

    from lcm.errors import LCMError
    from lcm.generate import ConceptGenerator

    ckpt_dir = tmp_path / "run" / "checkpoints"
    shutil.copytree(trained_run / "checkpoints", ckpt_dir)
    manifest = ckpt_dir / "bank" / "manifest.json"
    trained_on = torch.load(ckpt_dir / "last.ckpt", weights_only=False)["lcm"]["corpus"]
    assert json.loads(manifest.read_text())["corpus"] == trained_on

    other = [a if a != "80" else "60" for a in TINY_FIT]  # other problems -> another corpus
    before = manifest.read_text()
    assert _validate(trained_run, ckpt_dir / "last.ckpt", other) == 0 and manifest.read_text() == before

    stale = json.loads(before) | {"corpus": "another-corpus"}
    manifest.write_text(json.dumps(stale))
    with pytest.raises(LCMError, match="built from corpus 'another-corpus'"):
        ConceptGenerator.from_checkpoint(ckpt_dir / "last.ckpt")
    assert _validate(trained_run, ckpt_dir / "last.ckpt", TINY_FIT) == 0
    assert json.loads(manifest.read_text())["corpus"] == trained_on  # rebuilt from the training corpus
    assert ConceptGenerator.from_checkpoint(ckpt_dir / "last.ckpt").bank.texts


def test_decoder_counts_sentences_cut_without_eos(encoder):
    """A sentence longer than the decoder loses its <eos>; the loss now reports how many were cut."""
    texts = ["Short one.", "word " * 200]
    decoder = SentenceDecoderLM(LCMConfig(embed_dim=384, d_model=32, n_layer=1, n_head=2, max_seq_len=24),
                                vocab_size=300)
    with pytest.warns(UserWarning, match="1 of 2 training sentences exceed"):
        decoder.attach_data(SentenceData(EncoderRecord({}, "st:test", 384), lambda: texts))
    batch = {"emb": torch.from_numpy(encoder.encode(texts)), "text": texts}
    *_, truncated = decoder._loss(batch)
    assert truncated == 1


def test_lcm_predict_writes_the_predictions(trained_run, tmp_path):
    """`lcm predict` used to compute predictions that nothing wrote; now they land in one .npz file."""
    out = tmp_path / "pred.npz"
    cwd = os.getcwd()
    os.chdir(trained_run.parents[2])
    try:
        code, _ = run_lcm(["predict", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT, "--ckpt_path",
                           str(trained_run / "checkpoints" / "last.ckpt"), "--prediction_writer.path", str(out)])
    finally:
        os.chdir(cwd)
    assert code == 0
    got = np.load(out)
    n = len(got["cosine"])
    assert n > 0 and got["pred"].shape == (n, 384) and got["gold_row"].shape == got["type"].shape == (n,)
    assert set(np.unique(got["type"])) <= {1, 2}  # steps and end-of-text: the targets, never the prompt
    assert 0.3 < float(got["cosine"].mean()) <= 1.0


def test_a_fresh_concept_trunk_starts_from_a_llama_folder_and_a_resumed_one_does_not(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lcm.errors import LCMError
    from lcm.llama_weights import trunk_arch

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=16)
    llama = LlamaForCausalLM(cfg)
    with torch.no_grad():
        llama.model.norm.weight.fill_(0.5)  # a value a random init never has
    llama.save_pretrained(tmp_path / "llama")
    arch = trunk_arch(cfg, embed_dim=8, max_seq_len=8)
    model = ConceptLM(arch, init_from=str(tmp_path / "llama"))
    assert model.hparams["init_from"] == str(tmp_path / "llama")
    model.attach_data(_concept_data())
    assert torch.equal(model.net.norm.weight, torch.full((16,), 0.5))
    down = llama.model.layers[0].mlp.down_proj.weight
    assert torch.equal(model.net.blocks[0].mlp.down.weight, down)
    resumed = ConceptLM(arch, init_from=str(tmp_path / "nowhere"))  # a checkpoint's fitted normalizer: no copy
    resumed.normalizer.fitted.fill_(True)
    resumed.attach_data(_concept_data())
    with pytest.raises(LCMError):
        ConceptLM(arch, init_from=str(tmp_path / "nowhere")).attach_data(_concept_data())
