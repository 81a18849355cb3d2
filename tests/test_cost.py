"""training_cost.json: FLOPs of a run counted from the sequences it read, with the frozen encoder's passes; the
ablation's per-hop accuracy."""
import json

import numpy as np
from conftest import CONFIGS, TINY_FIT

from lcm.train.cost import attention_layers, forward_flops, linear_weights


def test_llama_matmul_weights_counted_by_hand():
    """An HF Llama's matmuls by hand: q, k, v, o (d x d each), gate/up/down (d x ff), and the tied head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d, ff, layers, vocab = 32, 80, 3, 50
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=ff, num_hidden_layers=layers,
                                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True))
    assert linear_weights(model) == layers * (4 * d * d + 3 * d * ff) + d * vocab
    assert attention_layers(model) == layers


def test_forward_flops_formula():
    # 2 FLOPs per weight per position; causal attention 2 * layers * width * L^2, bidirectional twice that
    assert forward_flops(10, 2, 4, positions=7, squared_lengths=25) == 2 * 10 * 7 + 2 * 2 * 4 * 25
    assert forward_flops(10, 2, 4, 7, 25, causal=False) == 2 * 10 * 7 + 4 * 2 * 4 * 25


def test_fit_writes_what_it_trained_on(trained_run, monkeypatch):
    """The quickstart tiny fit: positions = 2 epochs x the real lengths of the train split's sequences (counted
    here from the data, not by the callback); trunk FLOPs follow the formula; the encoder read every unique
    sentence of the store."""
    from lcm.module import ConceptLM
    from lcm.train.cli import make_cli

    cost = json.loads((trained_run / "training_cost.json").read_text())
    model = ConceptLM.load_from_checkpoint(trained_run / "checkpoints" / "last.ckpt", map_location="cpu",
                                           weights_only=False)
    monkeypatch.chdir(trained_run.parents[2])  # the run's relative cache folder
    cli = make_cli(["-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT], run=False)  # what trained_run ran
    data = cli.datamodule
    data.setup("fit")
    lengths = [(b["types"] >= 0).sum(1) - 1 for b in data.train_dataloader()]  # (B,) inputs with a next concept
    epochs = cli.config["trainer"]["max_epochs"]
    positions, squares = epochs * sum(int(x.sum()) for x in lengths), epochs * sum(int((x ** 2).sum()) for x in lengths)
    assert cost["positions"] == positions > 0
    weights = linear_weights(model.net)
    assert cost["linear_weights"] == weights and cost["attention_layers"] == model.arch.n_layer
    trunk = 3 * forward_flops(weights, model.arch.n_layer, model.arch.d_model, positions, squares)
    assert np.isclose(cost["trunk_train_flops"], trunk, rtol=1e-12)
    assert cost["encoder_sentences"] == data.corpus.stats["sentences"] > 0
    assert cost["encoder_tokens"] >= 3 * cost["encoder_sentences"]  # [CLS] at least one word [SEP]
    assert np.isclose(cost["total_flops"], cost["trunk_train_flops"] + cost["encoder_flops"])
    assert cost["fit_seconds"] > 0  # the compare's `train s` column


def test_token_model_counts_its_tokens():
    """A tiny HF Llama trained 2 epochs: positions = 2 x sum over problems of (bos + prompt + newline + solution +
    eos tokens - 1), tokenized here independently of the callback."""
    from conftest import train_tiny_token_model

    from lcm.model import LCMConfig
    from lcm.train.cost import TrainingCost

    rows = [{"prompt": f"What is {a} plus {a}?", "solution": f"It is {2 * a}.\n#### {2 * a}"} for a in range(16)]
    cost = TrainingCost()
    arch = LCMConfig(embed_dim=16, d_model=32, n_layer=2, n_head=2, max_seq_len=64, dropout=0.0)
    model, trainer = train_tiny_token_model(rows, arch, steps=2, name="sums", callbacks=[cost])  # batch 16: 2 epochs
    tok = model.tokenizer
    lengths = [len(model.prompt_ids(r["prompt"])) + len(tok(r["solution"], add_special_tokens=False)["input_ids"]) + 1 - 1
               for r in rows]
    report = cost.report(trainer, model)
    assert report["positions"] == 2 * sum(lengths) and report["sequences"] == 2 * len(rows)
    assert report["attention_layers"] == 2 and "encoder_flops" not in report  # text data: no encoder
    assert report["total_flops"] == report["trunk_train_flops"] > 0


def test_a_max_steps_run_is_finished_when_fit_ended(tmp_path):
    """compare/ablations reuse finished runs: a run limited by max_steps (max_epochs -1) used to be retrained on
    every call, since its last epoch never equals max_epochs - 1. training_cost.json (written when fit ends)
    now marks the end; without it (an interrupted run) the run is not finished."""
    from lcm.eval.planning_ablation import finished

    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run / "config.yaml").write_text("trainer: {max_epochs: -1, max_steps: 600}\n")
    (run / "metrics.csv").write_text("epoch,step,val/loss\n5,599,0.3\n")
    assert not finished(run)
    (run / "training_cost.json").write_text("{}")
    assert finished(run)


def test_accuracy_by_hops():
    """The per-hop accuracy every report uses (compare's scoring, the objective ablation)."""
    from lcm.eval.reasoning_metrics import accuracy_by_hops

    assert accuracy_by_hops([1, 0, 1, 1], [2, 2, 3, 5]) == {"2": 0.5, "3": 1.0, "5": 1.0}
