"""Our DDIM (lcm.diffusion.ddim, ddim_timesteps) against diffusers' DDIMScheduler on the same schedule: the same
timesteps for each spacing, and the same samples step by step, deterministic (eta 0) and stochastic (eta > 0,
the same noise handed to both)."""
from __future__ import annotations

import pytest
import torch

from lcm.diffusion import alphas_cumprod, ddim, ddim_timesteps

diffusers = pytest.importorskip("diffusers")  # a test extra: `pip install -e '.[test]'` installs it


def scheduler(abar: torch.Tensor, spacing: str):
    """diffusers' DDIM on our ᾱ (betas recovered from it), predicting x0, no clipping, ᾱ = 1 after the last step."""
    abar64 = abar.double()
    betas = 1 - abar64 / torch.cat([torch.ones(1, dtype=torch.float64), abar64[:-1]])
    sched = diffusers.DDIMScheduler(num_train_timesteps=len(abar), trained_betas=betas.numpy(), prediction_type="sample",
                                    clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing, steps_offset=0)
    # diffusers rebuilds ᾱ from the betas in float32: the same schedule up to float32 rounding ...
    assert torch.allclose(sched.alphas_cumprod.double(), abar64, atol=1e-6, rtol=0)
    sched.alphas_cumprod = abar64  # ... and exactly ours, in float64, to compare the update rule itself
    return sched


def denoiser(x: torch.Tensor, tau: int) -> torch.Tensor:
    """A fixed, level-dependent x0 prediction (no network needed to compare the update rules)."""
    return torch.tanh(x * 0.7 + 0.01 * tau) - 0.1


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("T,n", [(100, 10), (100, 40), (1000, 50)])
def test_timesteps_match_diffusers(spacing, T, n):
    sched = scheduler(alphas_cumprod("cosine", T), spacing)
    sched.set_timesteps(n)
    assert ddim_timesteps(T, n, spacing) == sched.timesteps.tolist()


def test_zero_terminal_snr_matches_diffusers():
    """Our cosine ᾱ rescaled to zero terminal SNR against diffusers' squaredcos_cap_v2 with rescale_betas_zero_snr."""
    for T in (100, 1000):
        sched = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2",
                                        rescale_betas_zero_snr=True)
        assert torch.allclose(alphas_cumprod("cosine", T, zero_terminal_snr=True).double(),
                              sched.alphas_cumprod.double(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("schedule", ["cosine", "sigmoid", "cosine, zero terminal SNR"])
@pytest.mark.parametrize("spacing", ["trailing", "leading"])  # diffusers steps back T // n: exact for these
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_samples_match_diffusers(schedule, spacing, eta):
    T, n = 100, 10
    abar = alphas_cumprod(schedule.split(",")[0], T, zero_terminal_snr="zero" in schedule)
    taus = ddim_timesteps(T, n, spacing)
    x_start = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    ours = ddim(denoiser, x_start.clone(), abar.double(), taus, eta=eta, generator=torch.Generator().manual_seed(1))

    sched = scheduler(abar, spacing)
    sched.set_timesteps(n)
    g, x = torch.Generator().manual_seed(1), x_start.clone()
    for i, t in enumerate(sched.timesteps.tolist()):
        # our ddim draws noise after every step but the last (where sigma is 0): the same draws, in order
        noise = torch.randn(x.shape, generator=g, dtype=x.dtype) if eta > 0 and i + 1 < n else None
        x = sched.step(denoiser(x, t), t, x, eta=eta, variance_noise=noise).prev_sample
    assert torch.allclose(ours, x, atol=1e-10, rtol=0)


def test_spacing_and_guidance_space_arrive_from_the_config_and_bad_values_are_refused():
    from conftest import CONFIGS

    from lcm.diffusion import DiffusionConfig
    from lcm.errors import LCMError
    from lcm.train.cli import make_cli

    cli = make_cli(["-c", str(CONFIGS / "logic_diffusion.yaml"), "--model.diffusion.timestep_spacing", "trailing",
                    "--model.diffusion.guidance_space", "x0", "--model.diffusion.zero_terminal_snr", "true",
                    "--model.diffusion.schedule", "sigmoid", "--model.diffusion.sigmoid_beta", "0.5"], run=False)
    net = cli.model.net  # the network that samples reads them
    assert (net.diffusion.timestep_spacing, net.diffusion.guidance_space) == ("trailing", "x0")
    assert torch.equal(net.abar, alphas_cumprod("sigmoid", 100, True, 1.5, 0.5)) and net.abar[-1] == 0
    assert net.denoiser_evals(40, 3.0) == 80  # x0 space guides the pure-noise step too
    assert make_cli(["-c", str(CONFIGS / "logic_diffusion.yaml")], run=False).model.net.denoiser_evals(40, 3.0) == 79
    with pytest.raises(ValueError, match="timestep_spacing"):
        DiffusionConfig(timestep_spacing="uniform")
    with pytest.raises(ValueError, match="guidance_space"):
        DiffusionConfig(guidance_space="v")
    with pytest.raises(LCMError, match="timestep spacing"):
        ddim_timesteps(100, 10, "uniform")
