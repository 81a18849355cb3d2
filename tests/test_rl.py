"""RL through `lcm fit`: every RL config trains real tiny SFT models, its values arrive, its metrics are logged, a
GRPO step moves each policy toward its rewarded rollouts, and bad input is one line."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, run_lcm

from lcm.grpo import RLConfig, group_advantages, policy_loss

RL_TINY = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--data.init_args.eval_problems", "2",
           "--data.init_args.prompts_per_step", "2", "--model.init_args.rl.group_size", "3",
           "--model.init_args.eval_samples", "2", "--trainer.enable_progress_bar", "false"]
POLICIES = {  # config, policy class, its own shrink
    "token": ("rl_token.yaml", "TokenPolicy", ["--model.init_args.policy.init_args.max_new_tokens", "24"]),
    "categorical": ("rl_concept.yaml", "ConceptCategoricalPolicy", ["--model.init_args.policy.init_args.max_steps", "6"]),
    "gaussian": ("rl_concept.yaml", "ConceptGaussianPolicy", ["--model.init_args.policy.init_args.max_steps", "6"]),
}


def rl_args(kind: str, ckpt: Path) -> list[str]:
    config, cls, shrink = POLICIES[kind]
    # the tiny SFT models learned gsm_symbolic (a forks prompt overflows the tiny token model's context)
    return ["fit", "-c", str(CONFIGS / config), "--model.init_args.policy", f"lcm.train.rl_policies.{cls}",
            "--model.init_args.policy.init_args.ckpt", str(ckpt), *shrink,
            "--data.init_args.source", "lcm.train.GsmSymbolic", "--data.init_args.source.init_args.n", "40"]


def in_dir(work: Path, args: list[str], capsys=None) -> tuple[int, str]:
    cwd = os.getcwd()
    os.chdir(work)
    try:
        return run_lcm(args, capsys)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("kind", list(POLICIES))
def test_fast_dev_run_of_every_rl_config(kind, sft, tmp_path):
    code, _ = in_dir(tmp_path, [*rl_args(kind, sft[kind]), "--trainer.fast_dev_run", "true",
                                "--data.init_args.eval_problems", "2"])
    assert code == 0


@pytest.mark.parametrize("kind", list(POLICIES))
def test_rl_fit_logs_every_step_and_the_configured_values_arrive(kind, sft, tmp_path):
    code, _ = in_dir(tmp_path, [*rl_args(kind, sft[kind]), *RL_TINY])
    assert code == 0
    run = tmp_path / "runs" / POLICIES[kind][0].removesuffix(".yaml") / "version_0"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    train = [r for r in rows if r.get("train/reward")]
    assert len(train) == 2  # one row per RL step (log_every_n_steps 1)
    assert all(float(r["train/rollouts"]) == 6 for r in train)  # prompts_per_step 2 x group_size 3 arrived
    for key in ("train/entropy", "train/entropy/q80", "train/forking_share", "train/cov_logp_adv",
                "train/clip_ratio/region_mean", "train/completions/mean_units", "train/reward_std",
                "train/step_entropy"):
        assert all(r[key] != "" and float(r[key]) == float(r[key]) for r in train), key
    for key in ("train/effective_rank", "train/erv", "train/vendi"):  # nan when no rollout has 2 steps
        assert all(r[key] != "" for r in train), key
    val = [r for r in rows if r.get("val/accuracy")]
    assert val and val[-1]["val/pass@2"] != ""
    if kind == "gaussian":
        assert all(float(r["train/retrieved_entropy"]) >= 0 for r in train)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["rl"]["group_size"] == 3 and ckpt["lcm"]["kind"] == "rl"
    assert ckpt["lcm"]["sft_ckpt"] == str(sft[kind])


def problems(n: int = 2):
    from lcm.train import GsmSymbolic

    return [d for _, d in zip(range(n), GsmSymbolic(n=n, seed=3).documents(256))]


def make_policy(kind: str, ckpt: Path):
    from lcm.train.rl_policies import ConceptCategoricalPolicy, ConceptGaussianPolicy, TokenPolicy

    if kind == "token":
        return TokenPolicy(str(ckpt), max_new_tokens=24)
    return (ConceptCategoricalPolicy if kind == "categorical" else ConceptGaussianPolicy)(str(ckpt), max_steps=6)


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_concept_rollouts_with_the_kv_cache_equal_those_without(kind, sft):
    """The cached step loop (`ConceptStepper`) takes the same steps as re-running the whole context each step, for
    sampled rollouts of problems with different prompt lengths and for greedy solutions."""
    policy = make_policy(kind, sft[kind]).eval()
    docs = [problems(8)[i] for i in (0, 5, 7)]
    assert len({len(d.prompt) for d in docs}) == 3  # 5, 8 and 4 prompt sentences: left padding is exercised
    runs = {}
    for cache in (True, False):
        policy.use_cache = cache
        r = policy.rollout(docs, 3, 1.0, torch.Generator().manual_seed(0))
        runs[cache] = (r.texts, r.units, r.stopped, policy.greedy(docs))
    assert runs[True] == runs[False]


def test_the_categorical_policy_samples_its_own_softmax(sft):
    """Inverse-CDF sampling over the bank draws each sentence at its softmax probability: 10,000 draws, the 5 most
    likely sentences' frequencies within 4 binomial standard deviations, and no draw of a zero-probability row."""
    policy = make_policy("categorical", sft["categorical"]).eval()
    h = torch.randn(1, policy.lm.arch.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p = torch.softmax(policy._logits(h), -1)[0]  # (N_b,)
        g = torch.Generator().manual_seed(1)
        draws = torch.cat([policy._sample(h.expand(1000, -1), 1.0, g)[0] for _ in range(10)])
    n = len(draws)
    for prob, row in zip(*p.topk(5)):
        freq = float((draws == row).float().mean())
        assert abs(freq - float(prob)) < 4 * (float(prob) * (1 - float(prob)) / n) ** 0.5
    assert (p[draws] > 0).all()


@pytest.mark.parametrize("kind", list(POLICIES))
def test_a_grpo_step_moves_each_policy_toward_its_rewarded_rollout(kind, sft):
    torch.manual_seed(0)
    policy = make_policy(kind, sft[kind])
    g = 4
    rollouts = policy.rollout(problems(1), g, 1.0, torch.Generator().manual_seed(0))
    logp0, _, mask, states = policy.score(rollouts.batch, 1.0)
    assert mask.sum(1).tolist() == rollouts.units  # one log-prob per unit taken
    assert torch.isfinite(logp0[mask]).all() and states.shape[:2] == mask.shape
    per_step = policy.step_states(states, mask, rollouts.batch)
    emb = policy.step_embeddings(rollouts)
    assert len(per_step) == len(emb) == g and all(len(e) == len(t.splitlines()) for e, t in zip(emb, rollouts.texts)
                                                  if t.strip() and kind != "token")
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), g)
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1e-2 if kind == "gaussian" else 0.1)
    logp, entropy, mask, _ = policy.score(rollouts.batch, 1.0)
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, entropy, RLConfig(group_size=g))
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        logp1 = policy.score(rollouts.batch, 1.0)[0]
    gain = ((logp1 - logp0) * mask).sum(1)  # change of each rollout's log-likelihood
    assert gain[0] > 0 and gain[0] > gain[1:].max()


def test_policies_refuse_the_wrong_checkpoint_in_one_line(sft, tmp_path, capsys):
    from lcm.errors import LCMError

    with pytest.raises(LCMError) as e:
        make_policy("categorical", sft["token"])
    assert "\n" not in str(e.value)
    with pytest.raises(LCMError) as e:
        make_policy("token", sft["categorical"])
    assert "\n" not in str(e.value)
    code, err = in_dir(tmp_path, rl_args("token", tmp_path / "missing.ckpt"), capsys)
    assert code == 2 and "missing.ckpt" in err and len(err.strip().splitlines()) == 1


def test_the_token_policys_step_entropy_sums_its_token_entropies_over_each_line():
    from lcm.train.rl_policies import TokenPolicy

    entropy = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0, 5.0], [9.0, 1.0, 2.0, 3.0, 0.0, 0.0]])
    mask = torch.tensor([[False, True, True, True, True, True], [False, True, True, True, False, False]])
    line_end = torch.tensor([[False, False, True, False, False, True], [False, True, False, False, False, False]])
    steps = TokenPolicy.step_entropies(None, entropy, mask, {"line_end": line_end})
    assert steps.tolist() == [3.0, 12.0, 1.0, 5.0]  # lines 1+2 | 3+4+5 ; 1 | unfinished 2+3


def test_lcm_eval_trl_runs_the_token_rl_config_with_trls_grpo_trainer(sft, tmp_path):
    """TRL's GRPOTrainer on the same SFT model, problems and reward, its log in our metrics.csv layout; the config's
    values arrive (G, completion cap, steps)."""
    import yaml

    cfg = yaml.safe_load((CONFIGS / "rl_token.yaml").read_text())
    cfg["model"]["init_args"]["policy"]["init_args"].update({"ckpt": str(sft["token"]), "max_new_tokens": 12})
    cfg["model"]["init_args"]["rl"]["group_size"] = 2
    cfg["data"]["init_args"].update({"prompts_per_step": 2, "source": {"class_path": "lcm.train.GsmSymbolic",
                                                                       "init_args": {"n": 40}}})
    config = tmp_path / "rl_tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    code, _ = run_lcm(["eval", "trl", "-c", str(config), "--out", str(tmp_path / "trl"), "--max-steps", "1"])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "trl" / "metrics.csv")))
    assert len(rows) == 1
    assert float(rows[0]["train/completions/max_length"]) <= 12 and float(rows[0]["train/entropy"]) > 0
    assert float(rows[0]["train/num_tokens"]) > 0 and rows[0]["train/reward"] != ""


def test_a_resumed_rl_run_continues_its_log_without_a_second_step0_evaluation(sft, tmp_path):
    args = [*rl_args("categorical", sft["categorical"]), *RL_TINY[2:], "--trainer.val_check_interval", "1",
            "--model.init_args.eval_samples", "0"]
    assert in_dir(tmp_path, [*args, "--trainer.max_steps", "1"])[0] == 0
    run = tmp_path / "runs" / "rl_concept" / "version_0"
    assert in_dir(tmp_path, [*args, "--trainer.max_steps", "2", "--ckpt_path",
                             str(run / "checkpoints" / "last.ckpt")])[0] == 0
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert sorted(int(r["step"]) for r in rows if r.get("train/reward")) == [0, 1]
    assert len([r for r in rows if r.get("val/accuracy") and r["epoch"] == ""]) == 1  # the SFT scores, once


def no_dropout(net: torch.nn.Module) -> torch.nn.Module:
    for m in net.modules():
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.0
    return net


def test_one_update_equals_trls_grpo_loss_and_gradient(sft, tmp_path):
    """TRL as the reference, term by term: on the same rollouts (2 problems of different prompt lengths x G = 4, TRL's
    left-padded prompts against our right-padded rows), GRPOTrainer's loss ("dapo": token-mean over the batch, ε 0.2)
    and the gradient it gives every weight equal ours."""
    from datasets import Dataset
    from trl import GRPOTrainer

    from lcm.eval.trl_reference import grpo_config, reward, rl_settings
    from lcm.train.rl_policies import TokenPolicy

    torch.manual_seed(0)
    policy = TokenPolicy(str(sft["token"]), max_new_tokens=120)
    no_dropout(policy.lm.net)  # the tiny SFT model trained with attention dropout 0.1: both sides in train mode, exact
    docs = [problems(8)[i] for i in (0, 5)]
    g = 4
    rollouts = policy.rollout(docs, g, 1.0, torch.Generator().manual_seed(0))
    assert len(set(rollouts.units)) > 2  # rollouts of different lengths: token-mean and seq-mean differ
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]), g)
    policy.train()  # as GRPO scores
    logp, entropy, mask, _ = policy.score(rollouts.batch, 1.0)
    ours, _ = policy_loss(logp, logp.detach(), adv, mask, entropy, RLConfig(group_size=g))
    ours.backward()

    folder = tmp_path / "hf"
    policy.lm.save_pretrained(folder)
    s = rl_settings(CONFIGS / "rl_token.yaml", 1)
    s.update(prompts_per_step=len(docs), max_new_tokens=120, rl=RLConfig(group_size=g))
    tok = policy.lm.tokenizer
    trainer = GRPOTrainer(model=str(folder), reward_funcs=reward, args=grpo_config(s, tmp_path, 0),
                          train_dataset=Dataset.from_list([{"prompt": "x", "answer": "1"}]), processing_class=tok)
    tokens, target, pad = rollouts.batch["tokens"], rollouts.batch["target"], tok.pad_token_id
    starts = target.int().argmax(1) + 1  # (N,) first completion position
    prompts = [tokens[b, :p] for b, p in enumerate(starts.tolist())]
    comps = [tokens[b, p: p + n] for b, (p, n) in enumerate(zip(starts.tolist(), rollouts.units))]
    P, C = max(map(len, prompts)), max(map(len, comps))
    inputs = {
        "prompt_ids": torch.stack([torch.cat([torch.full((P - len(p),), pad), p]) for p in prompts]),  # left-padded
        "prompt_mask": torch.stack([torch.arange(P) >= P - len(p) for p in prompts]).long(),
        "completion_ids": torch.stack([torch.cat([c, torch.full((C - len(c),), pad)]) for c in comps]),
        "completion_mask": torch.stack([torch.arange(C) < len(c) for c in comps]).long(),
        "advantages": adv, "num_items_in_batch": torch.tensor(float(sum(rollouts.units))),
    }
    no_dropout(trainer.model.train())
    trainer.current_gradient_accumulation_steps = 1  # what its training step sets
    theirs = trainer._compute_loss(trainer.model, inputs)
    theirs.backward()
    torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=1e-5)
    grads = dict(trainer.model.named_parameters())
    for name, p in policy.lm.net.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name].grad, p.grad, atol=1e-7, rtol=1e-4, msg=name)


def test_token_rollouts_are_hugging_face_generate_samples(sft):
    """The token policy's sampler is TRL's (HF `generate`, do_sample, temperature 1, top-k 0, top-p 1): from the same
    seed both draw the same tokens, so a difference between our curves and TRL's is not in how rollouts are drawn."""
    from transformers import GenerationConfig

    from lcm.train.token_data import render_prompt

    lm = make_policy("token", sft["token"]).lm.eval()
    tok, prompt = lm.tokenizer, render_prompt(problems(1)[0])
    ours = lm.generate(prompt, 4, mode="sample", max_new_tokens=40, seed=5)
    ids = torch.tensor([lm.prompt_ids(prompt)] * 4)
    torch.manual_seed(5)
    with torch.no_grad():
        out = lm.net.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=GenerationConfig(
            max_new_tokens=40, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id,
            eos_token_id=[tok.eos_token_id]))
    for s, row in zip(ours, out[:, ids.shape[1]:].tolist()):
        n = len(s.token_ids)
        assert row[:n] == s.token_ids and (s.stop_reason != "eos" or row[n] == tok.eos_token_id)
