"""The token baseline is a Hugging Face causal LM (Llama at random init, or a pretrained folder): the BPE wrapped as
a `PreTrainedTokenizerFast`, the loss on solution tokens, KV-cache generation in every mode, checkpoints and
exported folders that plain transformers loads; and the concept trunk is the same network (weight-copy parity)."""
from __future__ import annotations

import shutil

import lightning as L
import numpy as np
import pytest
import torch
from conftest import train_tiny_token_model
from torch.utils.data import DataLoader

from lcm.errors import LCMError
from lcm.handoff import TextData
from lcm.llama_weights import check_compatible, copy_llama_into_trunk, init_trunk_from_llama, trunk_arch
from lcm.model import BaseLCM, LCMConfig
from lcm.token_model import SoftThinker, SoftThinking, TokenLM, concept_token, filter_probs, llama_config
from lcm.tokenizer import SentenceTokenizer, fast_from_record, fast_record

ARCH = LCMConfig(embed_dim=16, d_model=32, n_layer=2, n_head=2, max_seq_len=64, dropout=0.0)
PROMPT = "Ann has 3 pens and buys 4 more. How many pens?"
END = "Answer:"  # the fixture's answer line begins with it (the project's datasets: `####`)


def problems(n: int = 64) -> list[dict[str, str]]:
    return [{"prompt": f"Ann has {a} pens and buys {b} more. How many pens?", "solution": f"{a} + {b} = {a + b}\nAnswer: {a + b}"}
            for a, b in ((i % 9 + 1, i // 9 % 7 + 1) for i in range(n))]


def collate(rows: list[dict]) -> dict[str, list[str]]:
    return {"prompt": [r["prompt"] for r in rows], "solution": [r["solution"] for r in rows]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny real TokenLM trained for 120 steps by Lightning (it learns the format), and its checkpoint."""
    model, trainer = train_tiny_token_model(problems(), ARCH, steps=120, name="arithmetic")
    ckpt = tmp_path_factory.mktemp("token") / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    return model.eval(), ckpt


def generations(model: TokenLM) -> list[tuple]:
    """Every mode's output on one prompt, exactly (ids, entropies rounded, soft token counts)."""
    out = []
    for kw in ({"mode": "greedy"}, {"mode": "sample", "num_samples": 3, "seed": 7, "temperature": 1.5},
               {"mode": "soft", "seed": 1, "soft": SoftThinking(max_topk=5, think_end=END)},
               {"mode": "soft", "num_samples": 2, "seed": 1, "soft": SoftThinking(think_end=END, noise="dirichlet")}):
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


# the official sampler's filters on a hand-made distribution (sums to 1)
P = torch.tensor([[0.409, 0.25, 0.15, 0.10, 0.06, 0.03, 0.0009, 0.0001]])


def kept(probs: torch.Tensor) -> list[float]:
    return [round(float(x), 4) for x in probs[0] if x > 0]


def test_filters_keep_top_k_then_top_p_of_the_rest_then_min_p_renormalized():
    assert kept(filter_probs(P, top_k=3)) == [round(x / 0.809, 4) for x in (0.409, 0.25, 0.15)]
    assert kept(filter_probs(P, top_p=0.6)) == [round(x / 0.659, 4) for x in (0.409, 0.25)]
    # top-p reads the top-3 renormalized (0.506, 0.309, 0.185): two reach 0.8; on the raw mass three would be needed
    assert kept(filter_probs(P, top_k=3, top_p=0.8)) == [round(x / 0.659, 4) for x in (0.409, 0.25)]
    assert kept(filter_probs(P, min_p=0.01)) == [round(x / 0.999, 4) for x in P[0, :6].tolist()]  # < 0.00409 dropped
    assert kept(filter_probs(P)) == [round(x, 4) for x in P[0].tolist()]


def test_a_concept_token_is_the_renormalized_top_max_topk_at_the_temperature(trained):
    w, ids = concept_token(filter_probs(P, min_p=0.01), SoftThinking(max_topk=4))
    assert ids.tolist() == [[0, 1, 2, 3]] and torch.allclose(w, P[:, :4] / 0.909, atol=1e-6)
    model, _ = trained
    soft = SoftThinking(temperature=0.5, max_topk=2, top_k=0, top_p=1.0, min_p=0.0)
    thinker = SoftThinker(model.tokenizer, soft, 1, torch.device("cpu"), seed=0)
    assert thinker.next_tokens(P.log(), None).tolist() == [0]  # the token shown: the concept token's heaviest
    w, ids = thinker.mix
    squared = P[0, :2] ** 2  # softmax(log p / 0.5) is proportional to p^2
    assert ids.tolist() == [[0, 1]] and torch.allclose(w[0], squared / squared.sum(), atol=1e-6)
    with pytest.raises(LCMError, match=r"bad Soft Thinking settings: min_p=2.0, noise='beam'"):
        SoftThinking(min_p=2.0, noise="beam")


def test_soft_thinking_without_noise_one_hot_or_peaked_is_greedy(trained):
    model, _ = trained
    greedy = model.generate(PROMPT, mode="greedy", max_new_tokens=16)[0]
    thought = len(greedy.text[: greedy.text.index(END) + len(END)])  # characters up to the end of thinking
    for soft in (SoftThinking(max_topk=1, after_thinking_top_k=1, think_end=END),  # one-hot concept tokens
                 SoftThinking(temperature=1e-3, after_thinking_top_k=1, think_end=END)):  # peaked ones
        s = model.generate(PROMPT, mode="soft", max_new_tokens=16, seed=0, soft=soft)[0]
        assert s.token_ids == greedy.token_ids and abs(s.hidden - greedy.hidden).max() < 1e-4
        assert len("".join(s.token_texts[: s.soft_tokens])) == thought  # thinking ended with the answer marker
    mixed = SoftThinking(temperature=3.0, top_k=0, top_p=1.0, min_p=0.0, max_topk=50, think_end=END)
    s = model.generate(PROMPT, mode="soft", max_new_tokens=16, seed=0, soft=mixed)[0]
    assert abs(s.hidden[1:2] - greedy.hidden[1:2]).max() > 1e-3  # the second state already saw a mixture


@pytest.mark.parametrize("patience", [1, 4])
def test_cold_stop_writes_the_think_end_after_the_patience(trained, patience):
    model, _ = trained
    calm = SoftThinking(think_end=END, cold_stop_entropy=100.0, cold_stop_patience=patience)  # every token is calm
    s = model.generate(PROMPT, mode="soft", max_new_tokens=16, seed=0, soft=calm)[0]
    assert s.soft_tokens == patience - 1  # the patience-th calm token is replaced by the think end
    head = "".join(s.token_texts[: patience - 1])
    assert s.text.startswith(head + ("\n" if head else "") + END)  # the answer line begins at once
    never = model.generate(PROMPT, mode="soft", max_new_tokens=16, seed=0, soft=SoftThinking(
        think_end=END, cold_stop_entropy=0.0, cold_stop_patience=patience))[0]  # entropy 0 turns it off
    assert never.soft_tokens > patience


@pytest.mark.parametrize("noise", ["gumbel", "dirichlet"])
def test_noisy_soft_thinking_samples_reproducibly_by_seed(trained, noise):
    model, _ = trained
    soft = SoftThinking(think_end=END, noise=noise)
    a, b, c = (model.generate(PROMPT, mode="soft", num_samples=3, max_new_tokens=16, seed=seed, soft=soft)
               for seed in (5, 5, 6))
    assert [s.text for s in a] == [s.text for s in b]
    assert all((x.hidden == y.hidden).all() for x, y in zip(a, b))
    n = min(x.soft_tokens for x in (*a, *c))  # the thinking part: after it, even plain Soft Thinking samples
    assert n >= 2
    states = lambda samples: torch.tensor(np.stack([x.hidden[:n] for x in samples]))  # noqa: E731 (3, n, d)
    assert (states(a)[0] - states(a)[1:]).abs().amax() > 1e-3  # the rows of one call differ
    assert (states(a) - states(c)).abs().amax() > 1e-3  # and another seed differs
    plain = model.generate(PROMPT, mode="soft", num_samples=2, max_new_tokens=16, seed=5, soft=SoftThinking(think_end=END))
    # no noise: one thought -- equal up to float rounding (with 2 threads, BLAS may round two identical rows of a
    # batch differently)
    assert plain[0].soft_tokens == plain[1].soft_tokens
    np.testing.assert_allclose(plain[0].hidden[: plain[0].soft_tokens], plain[1].hidden[: plain[1].soft_tokens], atol=1e-4)
    with pytest.raises(LCMError, match="soft must be a lcm.token_model.SoftThinking"):
        model.generate(PROMPT, mode="soft", soft={"max_topk": 3})


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
