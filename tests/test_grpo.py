"""GRPO's objective on hand-computed batches: advantages, the clipped ratio, the entropy quantile, Clip-Cov and
KL-Cov against their written definitions (verl's `policy_loss.loss_mode`), and the Gaussian closed forms."""
from __future__ import annotations

import math

import pytest
import torch

from lcm.errors import LCMError
from lcm.grpo import (
    RLConfig,
    clip_cov_units,
    entropy_stats,
    gaussian_entropy,
    gaussian_log_prob,
    group_advantages,
    high_entropy_mask,
    kl_cov_units,
    policy_loss,
    unit_covariance,
)


def test_group_advantages_are_normalized_within_each_group_with_bessels_std():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), group_size=4)
    # group 1: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5; group 2: all equal -> 0
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-4)
    torch.testing.assert_close(adv[:4], expected)
    assert adv[4:].abs().max() == 0


def batch():
    """Two samples of three units; the second has two real units. Ratios exp(logp - old): 1.5, 1.0, 0.5 / 0.5, 1.0."""
    old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5], [0.5, 1.0, 1.0]]))
    mask = torch.tensor([[True, True, True], [True, True, False]])
    return logp, old, mask


def test_the_clipped_objective_per_unit_and_its_two_aggregations():
    logp, old, mask = batch()
    adv = torch.tensor([1.0, -1.0])
    cfg = RLConfig(group_size=2, epsilon_low=0.2, epsilon_high=0.2)
    loss, m = policy_loss(logp, old, adv, mask, torch.zeros(2, 3), cfg)
    # -min(rA, clip(r)A): A=+1: r 1.5 -> -1.2, r 1.0 -> -1.0, r 0.5 -> -0.5 ; A=-1: r 0.5 -> +0.8, r 1.0 -> +1.0
    per_unit = torch.tensor([-1.2, -1.0, -0.5, 0.8, 1.0])
    assert loss.item() == pytest.approx(per_unit.mean().item())
    seq = policy_loss(logp, old, adv, mask, torch.zeros(2, 3), RLConfig(group_size=2, aggregation="seq-mean-token-mean"))[0]
    assert seq.item() == pytest.approx(((-1.2 - 1.0 - 0.5) / 3 + (0.8 + 1.0) / 2) / 2, abs=1e-6)
    # clipped: r 1.5 with A > 0 (high), r 0.5 with A < 0 (low): 1 of 5 units each
    assert m["clip_ratio/high_mean"] == pytest.approx(0.2) and m["clip_ratio/low_mean"] == pytest.approx(0.2)
    assert m["clip_ratio/region_mean"] == pytest.approx(0.4)


def test_clip_higher_widens_only_the_upper_bound():
    logp, old, mask = batch()
    loss = policy_loss(logp, old, torch.tensor([1.0, -1.0]), mask, torch.zeros(2, 3),
                       RLConfig(group_size=2, epsilon_low=0.2, epsilon_high=0.28))[0]
    assert loss.item() == pytest.approx(torch.tensor([-1.28, -1.0, -0.5, 0.8, 1.0]).mean().item())


def test_the_top_entropy_quantile_keeps_units_at_or_above_the_batch_quantile():
    entropy = torch.arange(12, dtype=torch.float).view(2, 6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False  # padding: 10 and 11 never count
    kept = high_entropy_mask(entropy, mask, keep=0.2)
    # valid entropies 0..9: torch.quantile(0.8) = 7.2 -> 8 and 9 kept: 20% of the 10 units
    assert kept.sum() == 2 and kept[1, 2] and kept[1, 3]
    assert high_entropy_mask(entropy, mask, keep=1.0).equal(mask)
    # the loss of the dropped units is gone: with rho 0.2 only units 8 and 9 (A = -1, r = 1) contribute +1 each
    loss = policy_loss(torch.zeros(2, 6), torch.zeros(2, 6), torch.tensor([1.0, -1.0]), mask, entropy,
                       RLConfig(group_size=2, top_entropy_quantile=0.2))[0]
    assert loss.item() == pytest.approx(2 / 10)


def cov_batch():
    """One sample per advantage; log-probs chosen so the per-unit covariances are known."""
    adv = torch.tensor([2.0, -2.0])
    logp = torch.tensor([[-1.0, -3.0, -0.5, 0.0], [-1.0, -3.0, -2.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    return adv, logp, mask


def test_the_unit_covariance_is_centred_over_the_valid_units():
    adv, logp, mask = cov_batch()
    cov = unit_covariance(adv[:, None], logp, mask)
    a_mean = (4 * 2.0 + 3 * -2.0) / 7
    lp_mean = (-1 - 3 - 0.5 + 0 - 1 - 3 - 2) / 7
    assert cov[0, 2].item() == pytest.approx((2.0 - a_mean) * (-0.5 - lp_mean))
    assert cov[1, 1].item() == pytest.approx((-2.0 - a_mean) * (-3.0 - lp_mean))


def test_clip_cov_picks_at_random_among_units_with_cov_in_its_band_and_zeroes_their_gradient():
    adv, logp, mask = cov_batch()
    cov = unit_covariance(adv[:, None], logp, mask)
    band = (cov > 1) & (cov < 5) & mask
    assert 2 <= band.sum() < mask.sum()  # the batch has units in and out of the band
    cfg = RLConfig(group_size=2, loss_mode="clip_cov", clip_cov_ratio=0.3)  # int(0.3 * 7) = 2 units
    picks = [clip_cov_units(cov, mask, torch.zeros_like(mask), cfg, torch.Generator().manual_seed(s)) for s in range(20)]
    for picked in picks:
        assert picked.sum() == min(2, int(band.sum())) and not (picked & ~band).any()
    if band.sum() > 2:
        assert len({tuple(p.flatten().tolist()) for p in picks}) > 1  # random, not the top ones
    # a unit the ratio clip already cut is never picked; at least one unit is picked when any is eligible
    first = band.flatten().nonzero()[0, 0]
    cut = torch.zeros(mask.numel(), dtype=torch.bool)
    cut[first] = True
    tiny = RLConfig(group_size=2, loss_mode="clip_cov", clip_cov_ratio=1e-4)
    for s in range(10):
        p = clip_cov_units(cov, mask, cut.view_as(mask), tiny, torch.Generator().manual_seed(s))
        assert p.sum() == 1 and not p.flatten()[first]
    lp = logp.clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    picked = clip_cov_units(cov, mask, torch.zeros_like(mask), cfg, torch.Generator().manual_seed(0))
    loss, m = policy_loss(lp, logp, adv, mask, torch.zeros(2, 4), cfg, generator=gen)
    loss.backward()
    assert (lp.grad[picked] == 0).all() and (lp.grad[mask & ~picked] != 0).all()
    assert m["cov_selected_share"] == pytest.approx(2 / 7)


def test_kl_cov_penalizes_the_top_units_by_cov_with_the_unclipped_ratio():
    adv, logp, mask = cov_batch()
    old = logp - 0.5  # ratio e^0.5 everywhere: above 1 + eps, so clipping would matter if it applied
    cfg = RLConfig(group_size=2, loss_mode="kl_cov", kl_cov_ratio=0.3, ppo_kl_coef=0.1, updates_per_rollout=2)
    cov = unit_covariance(adv[:, None], logp, mask)
    picked = kl_cov_units(cov, mask, cfg)
    top2 = cov.masked_fill(~mask, -math.inf).flatten().topk(2).indices
    assert set(picked.flatten().nonzero()[:, 0].tolist()) == set(top2.tolist())
    loss = policy_loss(logp, old, adv, mask, torch.zeros(2, 4), cfg)[0]
    r = math.exp(0.5)
    per_unit = -r * adv[:, None].expand(2, 4) + 0.1 * 0.5 * picked.float()
    assert loss.item() == pytest.approx(per_unit[mask].mean().item())


def test_kl_cov_needs_two_updates_per_rollout_batch_because_on_policy_it_is_vanilla():
    with pytest.raises(LCMError, match="updates_per_rollout >= 2") as e:
        RLConfig(group_size=2, loss_mode="kl_cov", kl_cov_ratio=0.3)
    assert "\n" not in str(e.value)
    adv, logp, mask = cov_batch()  # why: at log π = log π_old (the first update) loss and gradient are vanilla's
    grads = []
    for cfg in (RLConfig(group_size=2, loss_mode="kl_cov", kl_cov_ratio=0.3, updates_per_rollout=2),
                RLConfig(group_size=2)):
        lp = logp.clone().requires_grad_()
        policy_loss(lp, logp.detach(), adv, mask, torch.zeros(2, 4), cfg)[0].backward()
        grads.append(lp.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_entropy_bonus_and_reference_kl_follow_trl():
    logp, old, mask = torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool)
    entropy = torch.tensor([[1.0, 3.0]])
    base = policy_loss(logp, old, torch.tensor([1.0]), mask, entropy, RLConfig(group_size=2))[0]
    bonus = policy_loss(logp, old, torch.tensor([1.0]), mask, entropy, RLConfig(group_size=2, entropy_coef=0.1))[0]
    assert (base - bonus).item() == pytest.approx(0.1 * 2.0)
    ref = torch.tensor([[-0.5, 0.5]])
    kl = policy_loss(logp, old, torch.tensor([1.0]), mask, entropy, RLConfig(group_size=2, beta=0.04), ref)[0]
    k3 = [math.exp(d) - d - 1 for d in (-0.5, 0.5)]  # exp(ref - logp) - (ref - logp) - 1
    assert (kl - base).item() == pytest.approx(0.04 * sum(k3) / 2, abs=1e-6)


def test_entropy_stats_count_forking_units_against_a_fixed_threshold():
    entropy = torch.tensor([[0.1, 0.5, 0.7, 2.0], [3.0, 0.0, 0.0, 9.0]])
    mask = torch.tensor([[True] * 4, [True, False, False, False]])
    s = entropy_stats(entropy, mask, fork_threshold=0.672)
    assert s["entropy"] == pytest.approx((0.1 + 0.5 + 0.7 + 2.0 + 3.0) / 5)
    assert s["forking_share"] == pytest.approx(3 / 5)
    assert s["entropy/q50"] == pytest.approx(0.7)


def test_gaussian_log_prob_and_entropy_are_the_closed_forms():
    torch.manual_seed(0)
    mu, log_sigma, x = torch.randn(3, 5), torch.randn(3, 5) * 0.3, torch.randn(3, 5)
    normal = torch.distributions.Normal(mu, log_sigma.exp())
    torch.testing.assert_close(gaussian_log_prob(x, mu, log_sigma), normal.log_prob(x).sum(-1))
    torch.testing.assert_close(gaussian_entropy(log_sigma), normal.entropy().sum(-1))


@pytest.mark.parametrize("bad", [{"group_size": 1}, {"top_entropy_quantile": 0.0}, {"loss_mode": "clipcov"},
                                 {"clip_cov_lb": 5.0, "clip_cov_ub": 1.0}])
def test_bad_settings_are_one_line(bad):
    with pytest.raises(LCMError, match="bad RL settings") as e:
        RLConfig(**bad)
    assert "\n" not in str(e.value)
