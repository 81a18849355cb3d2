"""Shareable models: `lcm export` writes safetensors + JSON + banks + a card; `from_pretrained` gives the same
generations as the checkpoint, reads no pickle, and refuses what is not an exported model."""
from __future__ import annotations

import json

import pytest
from conftest import run_lcm
from safetensors.torch import load_file

from lcm.errors import LCMError
from lcm.generate import ConceptGenerator

PROBLEM = "Tom has 12 apples. He gives 5 to Ann and buys 3 more. How many apples does he have?"


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "quickstart-tiny"
    code, _ = run_lcm(["export", "--ckpt", str(trained_run / "checkpoints" / "last.ckpt"), str(folder)])
    assert code == 0
    return folder


def test_the_folder_holds_weights_config_banks_and_a_card(exported, trained_run):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "bank", "config.json", "model.safetensors"]
    tensors = load_file(str(exported / "model.safetensors"))
    assert any(k.startswith("net.") for k in tensors) and "normalizer.center" in tensors  # weights + normalizer
    config = json.loads((exported / "config.json").read_text())
    assert set(config) == {"format", "hyper_parameters", "lcm"}  # no optimizer state, no loop state
    card = (exported / "README.md").read_text()
    assert "st:all-MiniLM-L6-v2" in card and "lcm fit -c" in card and "val/step_cosine" in card


def test_from_pretrained_generates_exactly_what_the_checkpoint_does(exported, trained_run):
    ckpt = ConceptGenerator.from_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    pre = ConceptGenerator.from_pretrained(exported)
    for kw in ({}, {"num_samples": 3, "noise": 0.5, "seed": 0}):
        a, b = ckpt.generate(PROBLEM, max_steps=5, **kw), pre.generate(PROBLEM, max_steps=5, **kw)
        a, b = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
        assert [(s.text, s.score) for g in a for s in g.steps] == [(s.text, s.score) for g in b for s in g.steps]
    code, _ = run_lcm(["generate", "--pretrained", str(exported), PROBLEM, "--max-steps", "3"])
    assert code == 0


def test_export_and_load_refuse_what_they_cannot_take(exported, trained_run, tmp_path, capsys):
    code, err = run_lcm(["export", "--ckpt", str(trained_run / "checkpoints" / "last.ckpt"), str(exported)], capsys)
    assert code == 2 and "exists and is not empty" in err and err.count("\n") == 1
    with pytest.raises(LCMError, match="is not an exported lcm-trainer model"):
        ConceptGenerator.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": 99}))
    (tmp_path / "model.safetensors").write_bytes((exported / "model.safetensors").read_bytes())
    with pytest.raises(LCMError, match="not an lcm-trainer model config"):
        ConceptGenerator.from_pretrained(tmp_path)


TINY_TOKEN = ["--data.init_args.source.init_args.n", "40", "--data.init_args.batch_size", "8",
              "--model.init_args.arch.d_model", "32", "--model.init_args.arch.n_layer", "1",
              "--model.init_args.arch.n_head", "2", "--model.init_args.vocab_size", "300",
              "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]


def test_the_token_baseline_exports_and_loads_with_its_tokenizer(tmp_path):
    from conftest import fit_in

    from lcm.token_model import TokenLM

    run = fit_in(tmp_path, "token_baseline.yaml", TINY_TOKEN)
    folder = tmp_path / "token-export"
    code, _ = run_lcm(["export", "--ckpt", str(run / "checkpoints" / "last.ckpt"), str(folder)])
    assert code == 0 and sorted(p.name for p in folder.iterdir()) == [  # a Hugging Face folder + our record + card
        "README.md", "config.json", "generation_config.json", "lcm.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json"]
    a = TokenLM.from_checkpoint(run / "checkpoints" / "last.ckpt")
    b = TokenLM.from_pretrained(folder)
    assert a.tokenizer.backend_tokenizer.to_str() == b.tokenizer.backend_tokenizer.to_str()
    assert b.meta == a.meta and dict(b.hparams)["arch"] == dict(a.hparams)["arch"]
    prompt = "Ann has 3 pens and buys 2 more. How many pens?"
    assert a.generate(prompt, mode="greedy", max_new_tokens=12)[0].text == b.generate(prompt, mode="greedy",
                                                                                        max_new_tokens=12)[0].text
    with pytest.raises(LCMError, match="holds a token model, not a concept model"):
        ConceptGenerator.from_pretrained(folder)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # plain transformers reads the folder

    assert AutoTokenizer.from_pretrained(folder)("Ann", add_special_tokens=False)["input_ids"] == a._encode(["Ann"])[0]
    assert AutoModelForCausalLM.from_pretrained(folder).num_parameters() == a.num_params()
    assert "AutoModelForCausalLM" in (folder / "README.md").read_text()


def test_hub_names_and_pushing_offline_are_one_line_and_keep_the_folder(trained_run, tmp_path, capsys):
    """Tests run offline (HF_HUB_OFFLINE=1): a hub id that is not in the local cache, and a push, each fail with
    one line; the exported folder is written before the push is tried."""
    with pytest.raises(LCMError, match="could not be fetched from the Hugging Face hub"):
        ConceptGenerator.from_pretrained("nobody-here/no-such-model")
    with pytest.raises(LCMError, match="does not exist"):
        ConceptGenerator.from_pretrained(tmp_path / "missing")
    folder = tmp_path / "pushed"
    code, err = run_lcm(["export", "--ckpt", str(trained_run / "checkpoints" / "last.ckpt"), str(folder), "--push",
                         "nobody-here/no-such-model"], capsys)
    assert code == 2 and "could not push" in err and err.count("\n") == 1
    assert (folder / "model.safetensors").is_file()  # nothing lost
