"""The token baseline is a Hugging Face causal LM (Llama at random init, or a pretrained folder): the BPE wrapped as
a `PreTrainedTokenizerFast`, the loss on solution tokens, KV-cache generation in every mode, checkpoints and
exported folders that plain transformers loads; and the concept trunk is the same network (weight-copy parity)."""
from __future__ import annotations

import shutil

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lcm.errors import LCMError
from lcm.handoff import TextData
from lcm.llama_weights import check_compatible, copy_llama_into_trunk, init_trunk_from_llama, trunk_arch
from lcm.model import BaseLCM, LCMConfig
from lcm.optim import OptimConfig
from lcm.token_model import TokenLM, llama_config
from lcm.tokenizer import SentenceTokenizer, fast_from_record, fast_record

ARCH = LCMConfig(embed_dim=16, d_model=32, n_layer=2, n_head=2, max_seq_len=64, dropout=0.0)
PROMPT = "Ann has 3 pens and buys 4 more. How many pens?"


def problems(n: int = 64) -> list[dict[str, str]]:
    return [{"prompt": f"Ann has {a} pens and buys {b} more. How many pens?", "solution": f"{a} + {b} = {a + b}\nAnswer: {a + b}"}
            for a, b in ((i % 9 + 1, i // 9 % 7 + 1) for i in range(n))]


def collate(rows: list[dict]) -> dict[str, list[str]]:
    return {"prompt": [r["prompt"] for r in rows], "solution": [r["solution"] for r in rows]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny real TokenLM trained for 120 steps by Lightning (it learns the format), and its checkpoint."""
    torch.manual_seed(0)
    data = problems()
    model = TokenLM(arch=ARCH, vocab_size=300, optim=OptimConfig(lr=5e-3, warmup_steps=10, weight_decay=0.0))
    model.attach_data(TextData("arithmetic", lambda: [t for r in data for t in r.values()]))
    trainer = L.Trainer(max_steps=120, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, DataLoader(data, batch_size=16, shuffle=True, collate_fn=collate))
    ckpt = tmp_path_factory.mktemp("token") / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    return model.eval(), ckpt


def generations(model: TokenLM) -> list[tuple]:
    """Every mode's output on one prompt, exactly (ids, entropies rounded, soft token counts)."""
    out = []
    for kw in ({"mode": "greedy"}, {"mode": "sample", "num_samples": 3, "seed": 7, "temperature": 1.5},
               {"mode": "soft", "soft_top_k": 5}):
        for s in model.generate(PROMPT, max_new_tokens=16, **kw):
            out.append((s.token_ids, s.text, s.entropies.round(4).tolist(), s.soft_tokens, s.stop_reason))
    return out


# ---- the network and its tokenizer ------------------------------------------------------------------------
def test_the_network_is_a_llama_of_the_arch_shape_with_the_bpe_wrapped_for_transformers(trained):
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    model, _ = trained
    net, cfg = model.net, model.net.config
    assert isinstance(net, LlamaForCausalLM) and isinstance(model.tokenizer, PreTrainedTokenizerFast)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.max_position_embeddings, cfg.vocab_size) == (32, 2, 2, ARCH.ffn_dim, 64, 300)
    assert net.lm_head.weight is net.model.embed_tokens.weight  # tied, counted once
    trunk = BaseLCM(ARCH)  # same blocks as the concept trunk: equal sizes mean equal networks
    assert sum(p.numel() for p in net.model.layers.parameters()) == sum(p.numel() for p in trunk.blocks.parameters())
    assert model.num_params() == sum(p.numel() for p in trunk.blocks.parameters()) + 300 * 32 + 32
    tok = model.tokenizer
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2) == (
        cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id)


def test_the_wrapped_bpe_encodes_and_round_trips_like_the_raw_one():
    texts = ["Émma paid $3.50 for 2 pens.\n\nAnswer: 7", "  spaces  and\ttabs ✓"] * 10
    raw = SentenceTokenizer.train(texts, 300)
    fast = raw.to_hf()
    assert fast(texts[:2], add_special_tokens=False)["input_ids"] == raw.encode(texts[:2])
    assert [fast.decode(ids) for ids in raw.encode(texts[:2])] == texts[:2]  # exact: no clean-up of spaces
    back = fast_from_record(**{"data" if k == "tokenizer" else "specials": v for k, v in fast_record(fast).items()})
    assert back(texts, add_special_tokens=False)["input_ids"] == fast(texts, add_special_tokens=False)["input_ids"]
    with pytest.raises(LCMError, match="stored tokenizer is corrupted"):
        fast_from_record("{not json", {"eos_token": "<eos>"})


def test_the_loss_covers_solution_tokens_and_eos_only(trained):
    model, _ = trained
    batch = collate(problems(3))
    tokens, mask = model._batch(batch)
    for b, row in enumerate(problems(3)):
        n_prompt = len(model.prompt_ids(row["prompt"]))
        n_solution = len(model._encode([row["solution"]])[0]) + 1  # + eos
        assert mask[b].nonzero().flatten().tolist() == list(range(n_prompt - 1, n_prompt - 1 + n_solution))
    logits, target, m = model._logits(batch)
    by_hand = torch.nn.functional.cross_entropy(logits[m], target[m])
    assert torch.allclose(model._masked_ce(logits, target, m), by_hand, atol=1e-6)


# ---- generation -----------------------------------------------------------------------------------------
def test_every_mode_records_entropies_states_and_forward_passes(trained):
    model, _ = trained
    for kw in ({"mode": "greedy"}, {"mode": "sample", "num_samples": 4, "seed": 0}, {"mode": "soft"}):
        samples = model.generate(PROMPT, max_new_tokens=12, **kw)
        assert len(samples) == kw.get("num_samples", 1)
        for s in samples:
            n = len(s.token_ids) + (s.stop_reason == "eos")
            assert s.entropies.shape == (n,) and (s.entropies >= 0).all() and s.entropies.max() > 0
            assert s.hidden.shape == (n, 32) and s.forward_passes == n and len(s.token_texts) == n
    greedy = model.generate(PROMPT, mode="greedy", max_new_tokens=16)[0]
    assert greedy.stop_reason == "eos" and "\nAnswer: " in greedy.text  # it learned the format
    a, b = (model.generate(PROMPT, mode="sample", num_samples=4, seed=3, temperature=2.0) for _ in range(2))
    assert [s.text for s in a] == [s.text for s in b] and len({s.text for s in a}) > 1  # seeded, diverse
    with pytest.raises(LCMError, match="bad sampling settings"):
        model.generate(PROMPT, mode="beam")


def test_kv_cache_generation_equals_recomputing_the_whole_sequence(trained):
    model, _ = trained
    s = model.generate(PROMPT, mode="greedy", max_new_tokens=10)[0]
    ids = model.prompt_ids(PROMPT)
    for t in range(len(s.entropies)):
        with torch.no_grad():
            logits = model.net(input_ids=torch.tensor([ids])).logits[0, -1]
        nxt = int(logits.argmax())
        assert (s.token_ids + [2])[t] == nxt
        assert abs(float(-(logits.softmax(-1) * logits.log_softmax(-1)).sum()) - s.entropies[t]) < 1e-4
        ids.append(nxt)


def test_soft_thinking_feeds_probability_weighted_embeddings(trained):
    model, _ = trained
    greedy = model.generate(PROMPT, mode="greedy", max_new_tokens=12)[0]
    one_hot = model.generate(PROMPT, mode="soft", soft_top_k=1, max_new_tokens=12)[0]
    assert one_hot.token_ids == greedy.token_ids and one_hot.soft_tokens == len(greedy.entropies)
    assert abs(one_hot.hidden - greedy.hidden).max() < 1e-4  # a one-hot mix is the argmax token's embedding
    mixed = model.generate(PROMPT, mode="soft", soft_top_k=50, soft_top_p=1.0, temperature=3.0, max_new_tokens=12)[0]
    assert abs(mixed.hidden[1:2] - greedy.hidden[1:2]).max() > 1e-3  # the second state already saw a mixture
    cold = model.generate(PROMPT, mode="soft", cold_stop_entropy=100.0, cold_stop_patience=2, max_new_tokens=12)[0]
    assert cold.soft_tokens == 2 < len(cold.entropies)  # cold stop after two calm tokens: the rest are discrete


# ---- checkpoints and folders -------------------------------------------------------------------------------
def test_checkpoint_round_trip_generates_identically(trained):
    model, ckpt = trained
    loaded = TokenLM.from_checkpoint(ckpt)
    assert generations(loaded) == generations(model)
    assert loaded.tokenizer.backend_tokenizer.to_str() == model.tokenizer.backend_tokenizer.to_str()


def test_the_exported_folder_loads_in_plain_transformers(trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, _ = trained
    folder = model.save_pretrained(tmp_path / "export")
    net, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([model.prompt_ids(PROMPT)])
    assert tok(PROMPT + "\n", add_special_tokens=False)["input_ids"] == ids[0, 1:].tolist()
    with torch.no_grad():
        assert torch.equal(net(input_ids=ids).logits, model.net(input_ids=ids).logits)
        hf = net.generate(ids, max_new_tokens=16, do_sample=False)  # what TRL's rollouts call
    ours = model.generate(PROMPT, mode="greedy", max_new_tokens=16)[0]
    assert hf[0, ids.shape[1]:].tolist()[: len(ours.token_ids) + 1] == ours.token_ids + [tok.eos_token_id]
    assert generations(TokenLM.from_pretrained(folder)) == generations(model)


def test_pretrained_starts_from_a_folder_and_its_checkpoints_load_without_it(trained, tmp_path):
    model, _ = trained
    folder = model.save_pretrained(tmp_path / "hf")
    (folder / "lcm.json").unlink()  # a plain Hugging Face folder, as someone else's model would be
    start = TokenLM(arch=ARCH, pretrained=str(folder)).eval()
    assert generations(start) == generations(model)  # its weights and its tokenizer
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    start.attach_data(TextData("arithmetic", lambda: []))  # the tokenizer came with the folder: none trained
    trainer.fit(start, DataLoader(problems(8), batch_size=8, collate_fn=collate))
    trainer.save_checkpoint(tmp_path / "pre.ckpt")
    shutil.rmtree(folder)
    loaded = TokenLM.from_checkpoint(tmp_path / "pre.ckpt")  # rebuilt from the config in its hyper-parameters
    assert generations(loaded) == generations(start.eval())


def test_what_cannot_load_fails_in_one_line(trained, tmp_path):
    from lcm.decoder import CausalTokenStack

    with pytest.raises(LCMError, match="could not be fetched from the Hugging Face hub"):
        TokenLM(pretrained="nobody-here/no-such-model")  # tests run offline
    with pytest.raises(LCMError, match="is not a Hugging Face causal LM folder"):
        TokenLM(pretrained=str(tmp_path))
    model, ckpt = trained
    old = torch.load(ckpt, weights_only=True)  # a checkpoint of the home-made GPT this model replaced
    old["state_dict"] = {f"net.{k}": v for k, v in CausalTokenStack(ARCH, 300).state_dict().items()}
    old["lcm"] = {"kind": "token", "tokenizer": old["lcm"]["tokenizer"]}
    torch.save(old, tmp_path / "gpt.ckpt")
    with pytest.raises(LCMError, match="does not match this version") as e:
        TokenLM.from_checkpoint(tmp_path / "gpt.ckpt")
    assert "\n" not in str(e.value)
    with pytest.raises(LCMError, match="home-made GPT"):
        TokenLM(arch=ARCH, vocab_size=300).on_load_checkpoint(old)


# ---- the concept trunk is the same network ---------------------------------------------------------------
def _parity(trunk: BaseLCM, llama) -> float:
    x = torch.randn(2, 20, trunk.cfg.embed_dim)
    with torch.no_grad():
        ours = trunk.eval().hidden_states(x)  # before the trunk's output projection
        theirs = llama.eval()(inputs_embeds=trunk.in_proj(x)).last_hidden_state
    return float((ours - theirs).abs().max())


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_a_llama_copied_into_the_concept_trunk_gives_the_same_hidden_states(kv_heads):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=kv_heads, rope_theta=500.0, rms_norm_eps=1e-5, max_position_embeddings=64)
    llama = LlamaModel(cfg)
    with torch.no_grad():  # norm weights away from 1, so a misplaced norm cannot pass
        for name, p in llama.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    trunk = BaseLCM(trunk_arch(cfg, embed_dim=16, max_seq_len=32, dropout=0.1))
    before = _parity(trunk, llama)
    assert _parity(copy_llama_into_trunk(trunk, llama), llama) < 1e-5 < before


def test_the_token_models_llama_and_a_trunk_of_the_same_arch_are_one_network(tmp_path):
    torch.manual_seed(0)
    token = TokenLM(arch=ARCH, vocab_size=300)
    assert _parity(copy_llama_into_trunk(BaseLCM(ARCH), token.net), token.net.model) < 1e-5
    token.net.save_pretrained(tmp_path / "llama")  # a concept trunk can start from a pretrained LM's folder
    assert _parity(init_trunk_from_llama(BaseLCM(ARCH), tmp_path / "llama"), token.net.model) < 1e-5


def test_a_trunk_of_another_shape_is_refused_naming_every_difference():
    cfg = llama_config(ARCH, 300)
    with pytest.raises(LCMError, match=r"n_layer / num_hidden_layers 3 vs 2; .*norm_eps / rms_norm_eps 1e-05 vs 1e-06"):
        check_compatible(LCMConfig(**{**vars(ARCH), "n_layer": 3, "norm_eps": 1e-5}), cfg)
