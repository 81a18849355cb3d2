"""RL with verifiable rewards through `lcm fit`: GRPO for token and concept policies alike.

    lcm fit -c train/configs/rl_token.yaml        # the token baseline's causal LM
    lcm fit -c train/configs/rl_concept.yaml      # Base-LCM as a categorical policy over its sentence bank

Every training step: B problems from the training split, G rollouts each (`lcm.train.rl_policies`), reward 1 when
the rollout's final answer (`#### X`) matches the problem's, group advantages, then `updates_per_rollout` optimizer
steps on the GRPO loss (`lcm.grpo`: clipped ratio, Clip-Cov / KL-Cov, top-entropy quantile, entropy bonus,
optional reference KL), all rollouts of the batch through one forward. Logged every step (CSV and TensorBoard):
reward, reward_std, accuracy, answered share, mean entropy per unit and its quantiles, the forking share at a fixed
threshold, Cov(log π, A), clip ratios, units per completion. Every validation (`trainer.val_check_interval`):
greedy accuracy on held-out problems and, with `eval_samples` k > 0, pass@1..k of k samples each.
"""
from __future__ import annotations

import copy
import time

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from lcm.answers import answers_match, parse_answer, pass_at_k
from lcm.errors import LCMError
from lcm.grpo import RLConfig, entropy_stats, group_advantages, policy_loss
from lcm.metrics import effective_rank, effective_rank_dynamics, vendi_score
from lcm.optim import OptimConfig, adamw_warmup_cosine
from lcm.retrieval import unit_rows
from lcm.train.corpus import CorpusSource
from lcm.train.datamodule import check_split_args, load_documents
from lcm.train.documents import Document
from lcm.train.rl_policies import Policy


def rewards_of(texts: list[str], docs: list[Document], group_size: int) -> torch.Tensor:
    """1.0 where a rollout's final answer matches its problem's (the G rollouts of a problem adjacent), else 0.0."""
    golds = [d.answer for d in docs for _ in range(group_size)]
    return torch.tensor([float(g is not None and answers_match(parse_answer(t), g)) for t, g in zip(texts, golds)])


def rank_and_diversity(states: list[np.ndarray], step_emb: list[np.ndarray], group_size: int) -> dict[str, float]:
    """Effective rank of each rollout's hidden states on matched units (one per step), its ERV / ERA (VERL's
    definitions, `lcm.metrics`), averaged over rollouts with >= 2 steps; and the Vendi score of each problem's G
    rollouts (each the mean of its unit step embeddings, as the comparison scores samples), averaged over problems."""
    ranks = [(effective_rank(h), *effective_rank_dynamics(h)) for h in states if len(h) >= 2]
    vendi = []
    for g in range(0, len(step_emb), group_size):
        means = [unit_rows(e).mean(0) for e in step_emb[g:g + group_size] if len(e)]
        if len(means) >= 2:
            vendi.append(vendi_score(np.stack(means)))
    nan = float("nan")
    return {"effective_rank": float(np.mean([r[0] for r in ranks])) if ranks else nan,
            "erv": float(np.nanmean([r[1] for r in ranks])) if ranks else nan,
            "era": float(np.nanmean([r[2] for r in ranks])) if ranks else nan,
            "vendi": float(np.mean(vendi)) if vendi else nan}


class PromptDataModule(L.LightningDataModule):
    """Problems for RL: batches of `prompts_per_step` training `Document`s (shuffled, every epoch), and the first
    `eval_problems` held-out validation problems. The split is `lcm fit`'s (`load_documents`: same source, same
    hash split), so an RL run never trains on a problem its SFT model was validated on.

    Args: `source`, `val_fraction`, `test_fraction`, `split_seed`, `max_chars` as `ConceptDataModule`'s."""

    def __init__(self, source: CorpusSource, prompts_per_step: int = 4, eval_problems: int = 50,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0, max_chars: int = 256):
        super().__init__()
        check_split_args(val_fraction, test_fraction, max_chars)
        if prompts_per_step < 1 or eval_problems < 1:
            raise LCMError(f"prompts_per_step and eval_problems must be >= 1 (got {prompts_per_step}, {eval_problems})")
        self.source, self.prompts_per_step, self.eval_problems = source, prompts_per_step, eval_problems
        self.split = (val_fraction, test_fraction, split_seed)
        self.max_chars = max_chars
        self._docs: dict[str, list[Document]] | None = None

    def documents(self, split: str) -> list[Document]:
        if self._docs is None:
            self._docs, _ = load_documents(self.source, self.max_chars, *self.split)
            if not any(d.answer for d in self._docs["train"]):
                raise LCMError(f"{self.source.describe()} has no answers: RL needs a verifiable reward")
        return self._docs[split]

    def train_dataloader(self):
        return DataLoader(self.documents("train"), batch_size=self.prompts_per_step, shuffle=True, collate_fn=list)

    def val_dataloader(self):
        held_out = self.documents("val")[: self.eval_problems]
        if not held_out:
            raise LCMError("no held-out validation problems to evaluate the policy on (val_fraction is 0?)")
        return DataLoader(held_out, batch_size=max(1, min(16, len(held_out))), collate_fn=list)


class GRPO(L.LightningModule):
    """GRPO on a policy (see the module docstring).

    Args:
        policy: `lcm.train.rl_policies.TokenPolicy`, `ConceptCategoricalPolicy` or `ConceptGaussianPolicy`.
        rl: the GRPO settings (`lcm.grpo.RLConfig`).
        optim: AdamW + warmup/cosine over the optimizer steps (`lcm.optim.OptimConfig`).
        max_grad_norm: gradient-norm clip of every optimizer step (TRL's default 1.0).
        eval_samples: k samples per held-out problem at each validation for pass@1..k (0: greedy only).
        seed: seed of the rollouts' sampling and of Clip-Cov's random choice."""

    def __init__(self, policy: Policy, rl: RLConfig = RLConfig(), optim: OptimConfig = OptimConfig(lr=1e-4, warmup_steps=0),
                 max_grad_norm: float = 1.0, eval_samples: int = 0, seed: int = 0):
        super().__init__()
        if not isinstance(policy, Policy):
            raise LCMError(f"policy must be a lcm.train.rl_policies policy, not {type(policy).__name__}")
        if isinstance(rl, dict):
            rl = RLConfig(**rl)
        self.policy, self.rl, self.optim = policy.train(), rl, OptimConfig.of(optim)  # loaded policies come in eval mode
        self.max_grad_norm, self.eval_samples = max_grad_norm, eval_samples
        self.ref = copy.deepcopy(policy).requires_grad_(False).eval() if rl.beta > 0 else None
        self.automatic_optimization = False  # several optimizer steps per rollout batch
        self._gen = torch.Generator().manual_seed(seed)
        self._val: list[dict] = []
        self.save_hyperparameters({"rl": rl.hparams(), "optim": self.optim.hparams(), "max_grad_norm": max_grad_norm,
                                   "eval_samples": eval_samples, "seed": seed})

    # ---- one RL step ---------------------------------------------------------------------------------
    def training_step(self, docs: list[Document], batch_idx: int) -> None:
        cfg, t0 = self.rl, time.perf_counter()
        self.policy.eval()  # rollouts without dropout; the update runs in train mode
        rollouts = self.policy.rollout(docs, cfg.group_size, cfg.temperature, self._gen)
        self.policy.train()
        rollout_s = time.perf_counter() - t0
        rewards = rewards_of(rollouts.texts, docs, cfg.group_size)
        adv = group_advantages(rewards, cfg.group_size).to(self.device)
        old_logp = ref_logp = None
        with torch.no_grad():
            if cfg.updates_per_rollout > 1:
                old_logp = self.policy.score(rollouts.batch, cfg.temperature)[0]
            if self.ref is not None:
                ref_logp = self.ref.score(rollouts.batch, cfg.temperature)[0]
        opt, sched = self.optimizers(), self.lr_schedulers()
        for it in range(cfg.updates_per_rollout):
            logp, entropy, mask, states = self.policy.score(rollouts.batch, cfg.temperature)
            loss, metrics = policy_loss(logp, logp.detach() if old_logp is None else old_logp, adv, mask, entropy,
                                        cfg, ref_logp, self._gen)
            opt.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()
            sched.step()
            if it == 0:
                steps_h = self.policy.step_entropies(entropy, mask, rollouts.batch)
                first = {**metrics, **entropy_stats(entropy, mask, cfg.fork_threshold), "loss": float(loss.detach()),
                         "step_entropy": float(steps_h.mean()) if len(steps_h) else float("nan"),
                         **rank_and_diversity(self.policy.step_states(states, mask, rollouts.batch),
                                              self.policy.step_embeddings(rollouts), cfg.group_size)}
        self._log_step(rewards, rollouts, first, rollout_s, time.perf_counter() - t0)

    def _log_step(self, rewards: torch.Tensor, rollouts, metrics: dict, rollout_s: float, step_s: float) -> None:
        g = rewards.view(-1, self.rl.group_size)
        extra = self.policy.extra_metrics(rollouts.batch, self._gen)
        out = {"rollouts": float(len(rewards)), "reward": float(rewards.mean()),
               "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
               "frac_reward_zero_std": float((g.std(1) == 0).float().mean()),
               "answered": float(np.mean([parse_answer(t) is not None for t in rollouts.texts])),
               "stopped": float(np.mean(rollouts.stopped)), "completions/mean_units": float(np.mean(rollouts.units)),
               "rollout_s": rollout_s, "step_s": step_s, "lr": self.lr_schedulers().get_last_lr()[0],
               **metrics, **extra}
        self.log_dict({f"train/{k}": v for k, v in out.items()}, on_step=True, on_epoch=False,
                      batch_size=len(rewards), prog_bar=False)
        self.log("train/accuracy", out["reward"], on_step=True, prog_bar=True, batch_size=len(rewards))

    # ---- held-out evaluation -------------------------------------------------------------------------
    def _eval_rows(self, docs: list[Document]) -> list[dict]:
        """Per held-out problem: greedy correct and answered, and pass@1..k of k samples (`eval_samples`)."""
        self.policy.eval()
        greedy = self.policy.greedy(docs)
        rows = [{"accuracy": float(r), "answered": float(parse_answer(t) is not None)}
                for r, t in zip(rewards_of(greedy, docs, 1), greedy)]
        if self.eval_samples > 0:
            k = self.eval_samples
            texts = self.policy.rollout(docs, k, self.rl.temperature, self._gen).texts
            correct = rewards_of(texts, docs, k).view(len(docs), k).sum(1)
            for row, c in zip(rows, correct.tolist()):
                row.update({f"pass@{j}": pass_at_k(k, int(c), j) for j in range(1, k + 1)})
        self.policy.train()
        return rows

    @staticmethod
    def _means(rows: list[dict]) -> dict[str, float]:
        return {f"val/{k}": float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}

    def on_train_start(self) -> None:
        """The SFT policy's held-out scores, logged at step 0: where RL starts from (the sanity check logs nothing)."""
        if self.trainer.datamodule is None or self.trainer.global_step > 0:  # a resumed run has its step-0 scores
            return
        rows = [r for docs in self.trainer.datamodule.val_dataloader() for r in self._eval_rows(docs)]
        for logger in self.loggers:
            logger.log_metrics(self._means(rows), step=0)

    def validation_step(self, docs: list[Document], batch_idx: int) -> None:
        self._val.extend(self._eval_rows(docs))

    def on_validation_epoch_end(self) -> None:
        means, self._val = self._means(self._val), []
        if means:
            self.log("val/accuracy", means.pop("val/accuracy"), prog_bar=True)
            self.log_dict(means)

    # ---- plumbing ------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lcm"] = {"kind": "rl", **self.policy.record()}
        checkpoint["rl_generator"] = self._gen.get_state()  # a resumed run draws the rollouts it would have drawn

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rl_generator" in checkpoint:
            self._gen.set_state(checkpoint["rl_generator"])

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.optim)
