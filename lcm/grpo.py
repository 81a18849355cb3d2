"""GRPO's objective, the same for token and concept policies: group advantages, the clipped ratio, and the
entropy controls of the papers this product measures. Pure tensor functions over *units* -- a token of a token
policy, a step of a concept policy -- so every one is tested on a hand-computed batch.

Definitions, matched to the code they come from (docs/rl.md):
- advantages: TRL `GRPOTrainer` with `scale_rewards="group"`: A_i = (r_i - mean_g r) / (std_g r + 1e-4), the std
  with Bessel's correction, one advantage per sample broadcast over its units;
- the clipped ratio: -min(ρ A, clip(ρ, 1 - ε_low, 1 + ε_high) A) per unit, ρ = exp(log π - log π_old); ε_high >
  ε_low is DAPO's clip-higher; aggregated over the batch's units ("token-mean": TRL's default "dapo" loss and verl's
  default, with one micro-batch) or per sample first ("seq-mean-token-mean": TRL's "grpo");
- `top_entropy_quantile` ρ_H (TRL; Wang et al., "Beyond the 80/20 rule"): keep the loss of units whose entropy is at
  or above the batch's (1 - ρ_H) quantile; ρ_H = 1 keeps all;
- Clip-Cov and KL-Cov (verl `policy_loss.loss_mode` "clip_cov" / "kl_cov"; Cui et al., "The entropy mechanism of
  RL for reasoning LMs"): per-unit cov = (A - mean A)(log π - mean log π) over the batch's units. Clip-Cov zeroes the
  loss of a random `clip_cov_ratio` share (at least one) of the units with lb < cov < ub that the ratio clip did not
  already cut; KL-Cov replaces the loss of the top `kl_cov_ratio` share (at least one) by cov with the *unclipped*
  -ρ A + `ppo_kl_coef` |log π - log π_old| (verl clips no unit in this mode);
- entropy bonus: - c x the mean entropy of the units the loss keeps (TRL's `entropy_coef`);
- reference KL (off by default: the entropy paper's setting): + β x k3 = exp(ref - log π) - (ref - log π) - 1.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from lcm.errors import ConfigError

LOSS_MODES = ("vanilla", "clip_cov", "kl_cov")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean")


@dataclass
class RLConfig:
    """GRPO settings (`model.init_args.rl` of an RL config). Defaults: TRL's and verl's where they have one.

    group_size: G samples per prompt. updates_per_rollout: optimizer steps on each batch of rollouts (TRL's
    `num_iterations` μ; with 1 the ratio is 1 and nothing is clipped, as in TRL's default). fork_threshold: the fixed
    entropy (nats per unit) above which a unit counts as forking (a share against a fixed value, comparable across
    RL steps)."""

    group_size: int = 8
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    loss_mode: Literal["vanilla", "clip_cov", "kl_cov"] = "vanilla"
    clip_cov_ratio: float = 2e-4
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 2e-4
    ppo_kl_coef: float = 0.1
    top_entropy_quantile: float = 1.0
    entropy_coef: float = 0.0
    beta: float = 0.0
    aggregation: Literal["token-mean", "seq-mean-token-mean"] = "token-mean"
    updates_per_rollout: int = 1
    temperature: float = 1.0
    fork_threshold: float = 0.672

    def __post_init__(self):
        bad = [name for name, ok in (
            ("group_size", self.group_size >= 2), ("epsilon_low", 0 <= self.epsilon_low < 1),
            ("epsilon_high", self.epsilon_high >= 0), ("loss_mode", self.loss_mode in LOSS_MODES),
            ("clip_cov_ratio", 0 < self.clip_cov_ratio <= 1), ("clip_cov_lb", self.clip_cov_lb < self.clip_cov_ub),
            ("kl_cov_ratio", 0 < self.kl_cov_ratio <= 1), ("ppo_kl_coef", self.ppo_kl_coef >= 0),
            ("top_entropy_quantile", 0 < self.top_entropy_quantile <= 1), ("entropy_coef", self.entropy_coef >= 0),
            ("beta", self.beta >= 0), ("aggregation", self.aggregation in AGGREGATIONS),
            ("updates_per_rollout", self.updates_per_rollout >= 1), ("temperature", self.temperature > 0),
            ("fork_threshold", self.fork_threshold >= 0)) if not ok]
        if bad:
            raise ConfigError("bad RL settings: " + ", ".join(f"{b}={getattr(self, b)!r}" for b in bad)
                              + " (group_size >= 2; ratios in (0, 1]; clip_cov_lb < clip_cov_ub; loss_mode one of "
                              + "/".join(LOSS_MODES) + ")")

        if self.loss_mode == "kl_cov" and self.updates_per_rollout < 2:
            # on-policy, log π = log π_old: the penalty is 0 and d|x|/dx = 0 there, so kl_cov would train exactly as
            # vanilla; verl's KL-Cov bites from the second mini-batch update of a rollout batch on
            raise ConfigError("loss_mode kl_cov needs updates_per_rollout >= 2: at one update per rollout batch its "
                              "penalty |log π - log π_old| is 0 with zero gradient (identical to vanilla)")

    def hparams(self) -> dict:
        return asdict(self)


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards (B*G,), the G samples of a prompt adjacent -> advantages (B*G,): (r - group mean) / (group std + 1e-4),
    std with Bessel's correction (TRL's `nanstd`); a group whose rewards are all equal gets advantage 0."""
    r = rewards.float().view(-1, group_size)  # (B, G)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)
    return adv.flatten()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1)


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, keep: float) -> torch.Tensor:
    """TRL's `get_high_entropy_mask`: units (N, T) whose entropy is >= the (1 - keep) quantile of the valid units'
    (torch.quantile, linear interpolation). keep = 0.2 keeps the top 20%; keep = 1 keeps every valid unit."""
    valid = entropy[mask].float()
    if keep >= 1 or not len(valid):
        return mask.clone()
    return (entropy >= torch.quantile(valid, 1 - keep)) & mask


def unit_covariance(adv: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """verl's per-unit cov (N, T) = (A - mean A)(log π - mean log π), means over the valid units; log π detached."""
    a, lp = adv.expand_as(logp).float(), logp.detach().float()
    return (a - masked_mean(a, mask)) * (lp - masked_mean(lp, mask))


def clip_cov_units(cov: torch.Tensor, mask: torch.Tensor, already_clipped: torch.Tensor, cfg: RLConfig,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Clip-Cov's detached units (N, T) bool: a random max(int(ratio x valid units), 1) of the valid units with
    lb < cov < ub, among those the ratio clip did not already cut."""
    n_pick = max(int(cfg.clip_cov_ratio * int(mask.sum())), 1)
    eligible = ((cov > cfg.clip_cov_lb) & (cov < cfg.clip_cov_ub) & mask & ~already_clipped).flatten().nonzero()[:, 0]
    picked = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    if len(eligible):
        order = torch.randperm(len(eligible), generator=generator, device="cpu").to(cov.device)
        picked[eligible[order[:n_pick]]] = True
    return picked.view_as(cov)


def kl_cov_units(cov: torch.Tensor, mask: torch.Tensor, cfg: RLConfig) -> torch.Tensor:
    """KL-Cov's penalized units (N, T) bool: the top max(int(ratio x valid units), 1) valid units by cov."""
    n_valid = int(mask.sum())
    picked = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    if n_valid:
        k = max(int(n_valid * cfg.kl_cov_ratio), 1)
        valid = mask.flatten().nonzero()[:, 0]
        picked[valid[cov.flatten()[valid].topk(k).indices]] = True
    return picked.view_as(cov)


def aggregate(per_unit: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(N, T) losses -> scalar: over all valid units ("token-mean") or per sample, then over samples."""
    if how == "token-mean":
        return masked_mean(per_unit, mask)
    per_sample = (per_unit * mask).sum(1) / mask.sum(1).clamp_min(1)
    return per_sample.mean()


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                entropy: torch.Tensor, cfg: RLConfig, ref_logp: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO loss of one batch of rollouts and its metrics (TRL's names where TRL has one).

    logp, old_logp, entropy, mask: (N, T) per unit (N = prompts x G samples, T units, mask = real units);
    adv: (N,) one advantage per sample. `entropy` may carry gradient (the bonus uses it)."""
    mask = mask.bool()
    a = adv.float()[:, None]  # (N, 1), broadcast over units
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1 - cfg.epsilon_low, 1 + cfg.epsilon_high)
    unclipped_loss, clipped_loss = -ratio * a, -clipped * a
    per_unit = torch.maximum(unclipped_loss, clipped_loss)  # = -min(ρA, clip(ρ)A)
    cut_by_clip = (clipped_loss > unclipped_loss) & mask  # the clip took the gradient away
    cov = unit_covariance(a, logp, mask)
    selected = torch.zeros_like(mask)
    if cfg.loss_mode == "clip_cov":
        selected = clip_cov_units(cov, mask, cut_by_clip, cfg, generator)
        per_unit = per_unit * (~selected)
    elif cfg.loss_mode == "kl_cov":
        selected = kl_cov_units(cov, mask, cfg)
        per_unit = torch.where(selected, unclipped_loss + cfg.ppo_kl_coef * (logp - old_logp).abs(), unclipped_loss)
    kept = high_entropy_mask(entropy.detach(), mask, cfg.top_entropy_quantile)
    per_unit = per_unit * kept
    if cfg.beta > 0 and ref_logp is not None:
        per_unit = per_unit + cfg.beta * (torch.exp(ref_logp - logp) - (ref_logp - logp) - 1)
    loss = aggregate(per_unit, mask, cfg.aggregation)
    if cfg.entropy_coef > 0:
        loss = loss - cfg.entropy_coef * masked_mean(entropy, kept)
    low = (ratio < 1 - cfg.epsilon_low) & (a < 0) & mask
    high = (ratio > 1 + cfg.epsilon_high) & (a > 0) & mask
    metrics = {"clip_ratio/low_mean": float(masked_mean(low.float(), mask)),
               "clip_ratio/high_mean": float(masked_mean(high.float(), mask)),
               "clip_ratio/region_mean": float(masked_mean((low | high).float(), mask)),
               "cov_logp_adv": float(masked_mean(cov, mask)),
               "cov_selected_share": float(masked_mean(selected.float(), mask)),
               "entropy_kept_share": float(masked_mean(kept.float(), mask))}
    return loss, metrics


def entropy_stats(entropy: torch.Tensor, mask: torch.Tensor, fork_threshold: float) -> dict[str, float]:
    """Mean entropy of the valid units (TRL's `entropy`), its 50/80/95% quantiles, and the forking share: the share of
    units above a *fixed* threshold (a share above each batch's own 80th percentile is 0.2 by construction)."""
    valid = entropy.detach()[mask.bool()].float()
    if not len(valid):
        return {}
    q = torch.quantile(valid, torch.tensor([0.5, 0.8, 0.95], device=valid.device))
    return {"entropy": float(valid.mean()), "entropy/q50": float(q[0]), "entropy/q80": float(q[1]),
            "entropy/q95": float(q[2]), "forking_share": float((valid > fork_threshold).float().mean())}


# ---- the Gaussian concept policy's closed forms ------------------------------------------------------------
LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log N(x; μ, diag σ²) summed over the last dimension: (..., D) -> (...)."""
    z = (x - mu) * torch.exp(-log_sigma)
    return -(0.5 * z.pow(2) + log_sigma + 0.5 * LOG_2PI).sum(-1)


def gaussian_entropy(log_sigma: torch.Tensor) -> torch.Tensor:
    """Differential entropy of N(μ, diag σ²): Σ_d (log σ_d + (1 + log 2π) / 2), (..., D) -> (...)."""
    return (log_sigma + 0.5 * (1 + LOG_2PI)).sum(-1)
