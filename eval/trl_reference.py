"""`lcm eval trl`: the token RL run by TRL's `GRPOTrainer`, as the reference our GRPO is checked against.

The same SFT token model (exported as a Hugging Face folder: `TokenLM.save_pretrained`), the same training problems
in the same rendering (`render_prompt` + newline after the tokenizer's <bos>, as `TokenLM.prompt_ids` builds them),
the same reward (`lcm.answers`: 1 when the final `#### X` matches), and the settings of `train/configs/rl_token.yaml`
mapped onto `GRPOConfig`: num_generations G, B problems per step (per_device_train_batch_size = B x G), temperature,
top_p, max_completion_length, beta 0, loss_type "dapo" (token-mean over the batch: ours), scale_rewards "group",
epsilon, learning rate (constant), AdamW betas and weight decay, max_grad_norm, num_iterations 1, top_entropy_quantile.
TRL's per-step log is written as `metrics.csv` in TRL's own metric names under `train/` (reward, reward_std,
entropy, clip_ratio/*, completions/mean_length), so `lcm eval rl` reads it beside our runs.

    HF_HUB_OFFLINE=1 lcm eval trl -c train/configs/rl_token.yaml --out runs/rl_trl/seed0 [--seed 0] [--max-steps N]
"""
from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import yaml

from lcm.answers import answers_match, parse_answer
from lcm.errors import LCMError
from lcm.io import atomic_path


def rl_settings(config: Path, max_steps: int | None) -> dict:
    """The values of an rl_token.yaml that TRL needs (defaults: `lcm.grpo.RLConfig`'s and `GRPO`'s)."""
    from lcm.grpo import RLConfig

    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    model = (cfg.get("model") or {}).get("init_args") or {}
    policy = (model.get("policy") or {})
    if not str(policy.get("class_path", "")).endswith("TokenPolicy"):
        raise LCMError(f"{config} is not a token-policy RL config (model.init_args.policy: TokenPolicy)")
    data = (cfg.get("data") or {}).get("init_args") or {}
    rl = RLConfig(**(model.get("rl") or {}))
    optim = model.get("optim") or {}
    return {"ckpt": policy["init_args"]["ckpt"], "max_new_tokens": policy["init_args"].get("max_new_tokens", 320),
            "top_p": policy["init_args"].get("top_p", 1.0), "rl": rl, "lr": optim.get("lr", 1e-4),
            "betas": optim.get("betas", [0.9, 0.95]), "weight_decay": optim.get("weight_decay", 0.01),
            "max_grad_norm": model.get("max_grad_norm", 1.0), "prompts_per_step": data.get("prompts_per_step", 4),
            "source": data.get("source"), "max_steps": max_steps or (cfg.get("trainer") or {}).get("max_steps", 100)}


def train_prompts(source_cfg: dict, bos: str) -> list[dict]:
    """The RL config's training problems as TRL rows: {"prompt": <bos> + prompt + newline, "answer"}."""
    from jsonargparse import ArgumentParser

    from lcm.train.corpus import CorpusSource
    from lcm.train.datamodule import load_documents
    from lcm.train.token_data import render_prompt

    parser = ArgumentParser()
    parser.add_subclass_arguments(CorpusSource, "source")
    source = parser.instantiate_classes(parser.parse_object({"source": source_cfg})).source
    docs = load_documents(source, 256, 0.1, 0.1, 0)[0]["train"]
    return [{"prompt": bos + render_prompt(d) + "\n", "answer": d.answer} for d in docs if d.answer]


def reward(completions: list[str], answer: list[str], **_) -> list[float]:
    return [float(answers_match(parse_answer(c), a)) for c, a in zip(completions, answer)]


def grpo_config(s: dict, out: Path, seed: int):
    from trl import GRPOConfig

    rl = s["rl"]
    return GRPOConfig(
        output_dir=str(out / "trl"), use_cpu=True, seed=seed, max_steps=s["max_steps"], logging_steps=1,
        report_to=[], save_strategy="no", per_device_train_batch_size=s["prompts_per_step"] * rl.group_size,
        num_generations=rl.group_size, max_completion_length=s["max_new_tokens"], temperature=rl.temperature,
        top_p=s["top_p"], beta=rl.beta, loss_type="dapo" if rl.aggregation == "token-mean" else "grpo",
        scale_rewards="group", epsilon=rl.epsilon_low, epsilon_high=rl.epsilon_high, learning_rate=s["lr"],
        lr_scheduler_type="constant", warmup_steps=0, adam_beta1=s["betas"][0], adam_beta2=s["betas"][1],
        weight_decay=s["weight_decay"], max_grad_norm=s["max_grad_norm"], num_iterations=rl.updates_per_rollout,
        top_entropy_quantile=rl.top_entropy_quantile, gradient_accumulation_steps=1, bf16=False,
        dataloader_num_workers=0, disable_tqdm=True)


def write_log(history: list[dict], path: Path) -> int:
    """TRL's per-step log -> metrics.csv (`step` from 0, metrics under `train/`), atomically. Returns rows."""
    rows = [h for h in history if "reward" in h]
    keys = sorted({k for h in rows for k in h if k not in ("step", "epoch")})
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", *[f"train/{k}" for k in keys]])
        for i, h in enumerate(rows):
            w.writerow([h.get("epoch", 0), i, *[h.get(k, "") for k in keys]])
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="lcm eval trl", description="The token RL config run by TRL's GRPOTrainer.")
    p.add_argument("-c", "--config", type=Path, default=Path("train/configs/rl_token.yaml"))
    p.add_argument("--ckpt", default=None, help="SFT token checkpoint (default: the config's)")
    p.add_argument("--out", type=Path, required=True, help="run folder: metrics.csv and TRL's output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None)
    ns = p.parse_args(argv)
    try:
        from datasets import Dataset
        from trl import GRPOTrainer
    except ImportError as e:
        raise LCMError(f"lcm eval trl needs TRL: pip install 'lcm-trainer[rl]' ({e})") from e
    from lcm.token_model import TokenLM

    s = rl_settings(ns.config, ns.max_steps)
    lm = TokenLM.from_checkpoint(ns.ckpt or s["ckpt"])
    ns.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        lm.save_pretrained(folder)
        tok = lm.tokenizer
        data = Dataset.from_list(train_prompts(s["source"], tok.bos_token or ""))
        trainer = GRPOTrainer(model=folder, reward_funcs=reward, args=grpo_config(s, ns.out, ns.seed),
                              train_dataset=data, processing_class=tok)
        trainer.train()
    n = write_log(trainer.state.log_history, ns.out / "metrics.csv")
    print(f"wrote {ns.out / 'metrics.csv'} ({n} TRL steps)")
