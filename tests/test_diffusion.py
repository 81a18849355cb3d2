"""Two-tower diffusion LCM: schedule maths, DDIM, guidance, causal context, sampling API, checkpoints."""
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_FIT, fit_in

from lcm.diffusion import (
    DiffusionConfig,
    DiffusionLCM,
    TwoTowerLCM,
    alphas_cumprod,
    ddim,
    ddim_timesteps,
    guide,
    guide_epsilon,
    timestep_embedding,
)
from lcm.errors import LCMError
from lcm.generate import ConceptGenerator
from lcm.model import LCMConfig
from lcm.sampling import BaseLCMSampling, DiffusionSampling, sampling_settings

TINY_DIFFUSION = [a.replace("--model.", "--model.init_args.") for a in TINY_FIT] + [
    "--model.init_args.diffusion.denoiser_layers", "1", "--model.init_args.diffusion.ddim_steps", "5"]
PROBLEM = "Tom has 12 apples. He gives 5 to Ann. How many apples does Tom have left?"


@pytest.mark.parametrize("schedule", ["cosine", "sigmoid", "sigmoid_ramp"])
def test_schedules_decrease_from_one_to_near_zero(schedule):
    abar = alphas_cumprod(schedule, 100)
    assert abar.shape == (100,) and bool((abar[1:] < abar[:-1]).all())
    assert 0.99 < abar[0] <= 1 and 0 < abar[-1] < 0.01
    zero = alphas_cumprod(schedule, 100, zero_terminal_snr=True)  # Lin et al. 2024: the last level is pure noise
    assert zero[-1] == 0 and zero[0] == pytest.approx(float(abar[0]), abs=1e-7) and bool((zero[1:] < zero[:-1]).all())
    with pytest.raises(LCMError, match="unknown noise schedule"):
        alphas_cumprod("linear-ish", 100)


def test_sigmoid_schedule_is_the_lcm_papers():
    """ᾱ(t) = σ(β - α·logit t) (LCM paper eq. 14; Meta's alpha 1.5, beta 0); ᾱ_τ is the curve at t = (τ + 1) / T."""
    abar = alphas_cumprod("sigmoid", 100).double()
    assert abar[49] == pytest.approx(0.5, abs=1e-6)  # t = 0.5: σ(β) = σ(0)
    assert abar[24] == pytest.approx(3**1.5 / (1 + 3**1.5), abs=1e-6)  # t = 0.25: logit = -ln 3
    shifted = alphas_cumprod("sigmoid", 100, sigmoid_alpha=1.0, sigmoid_beta=1.0).double()
    assert shifted[49] == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-6)  # σ(1)
    assert shifted[24] == pytest.approx(3 * math.e / (3 * math.e + 1), abs=1e-6)  # σ(1 + ln 3)
    old = DiffusionConfig.from_dict({"schedule": "sigmoid", "timesteps": 100})  # a checkpoint from before eq. 14
    assert old.schedule == "sigmoid_ramp" and DiffusionConfig.from_dict(
        {"schedule": "sigmoid", "sigmoid_alpha": 1.5}).schedule == "sigmoid"
    from lcm.checkpoint import upgrade_hparams  # the CLI's --ckpt_path reads old checkpoints the same way

    legacy = upgrade_hparams({"diffusion": {"schedule": "sigmoid", "steps": 20}})["diffusion"]
    assert legacy == {"schedule": "sigmoid_ramp", "ddim_steps": 20, "guidance_space": "x0"}  # as trained and sampled
    assert old.guidance_space == "x0" and DiffusionConfig.from_dict({"guidance_space": "epsilon"}).guidance_space == "epsilon"
    for bad in ({"schedule": "linear"}, {"sigmoid_alpha": 0.0}):
        with pytest.raises(ValueError):
            DiffusionConfig(**bad)


def test_ddim_timesteps():
    assert ddim_timesteps(100, 1) == [99] and ddim_timesteps(100, 100) == list(range(99, -1, -1))
    steps = ddim_timesteps(100, 40)
    assert len(steps) == 40 and steps[0] == 99 and steps[-1] == 0 and steps == sorted(set(steps), reverse=True)


@pytest.mark.parametrize("steps", [1, 100])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_returns_the_denoisers_clean_sample(steps, eta):
    abar = alphas_cumprod("cosine", 100)
    x0 = torch.randn(3, 8)
    taus = ddim_timesteps(100, steps)
    # a perfect denoiser: whatever the noise level, the clean sample is x0
    out = ddim(lambda x, tau: x0, torch.randn(3, 8), abar, taus, eta, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-5)


def ddim_inputs(x0_hat: torch.Tensor, x_start: torch.Tensor, taus: list[int], eta: float) -> list[torch.Tensor]:
    """The noisy inputs the project's `ddim` hands its denoiser, for a denoiser that always predicts x0_hat."""
    seen = []

    def denoise(x, tau):
        seen.append(x.clone())
        return x0_hat

    ddim(denoise, x_start, alphas_cumprod("cosine", 100), taus, eta, torch.Generator().manual_seed(0))
    return seen


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_one_ddim_step_is_the_papers_update(eta):
    """x at the second noise level, from DDIM (Song et al. 2021, eq. 12 with σ of eq. 16), in float64 here."""
    abar = alphas_cumprod("cosine", 100).double()
    taus = ddim_timesteps(100, 4)[1:]  # 66, 33, 0 (from 99, η = 1 loses ~1e-4 to float32 cancellation in 1 - ᾱ' - σ²)
    x0_hat, x_start = torch.randn(3, 8), torch.randn(3, 8)
    a, a_prev = abar[taus[0]], abar[taus[1]]
    eps = (x_start.double() - a.sqrt() * x0_hat.double()) / (1 - a).sqrt()
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(0)).double()  # the step's fresh noise (eta > 0)
    expected = a_prev.sqrt() * x0_hat.double() + (1 - a_prev - sigma**2).sqrt() * eps + sigma * z
    assert torch.allclose(ddim_inputs(x0_hat, x_start, taus, eta)[1].double(), expected, atol=1e-5)


def test_deterministic_ddim_keeps_the_noise_direction_of_a_perfect_denoiser():
    """x_τ = √ᾱ_τ x0 + √(1-ᾱ_τ) ε and a denoiser that returns x0: each η = 0 step lands on √ᾱ x0 + √(1-ᾱ) ε of
    the next level, with the same ε (DDIM's implied noise is the noise that was added)."""
    abar = alphas_cumprod("cosine", 100)
    taus = ddim_timesteps(100, 5)
    x0, eps = torch.randn(3, 8), torch.randn(3, 8)
    start = abar[taus[0]].sqrt() * x0 + (1 - abar[taus[0]]).sqrt() * eps
    for tau, x in zip(taus, ddim_inputs(x0, start, taus, 0.0)):
        assert torch.allclose(x, abar[tau].sqrt() * x0 + (1 - abar[tau]).sqrt() * eps, atol=1e-5)


def test_guidance_scale_one_is_the_conditional_and_rescale_matches_std():
    c, u = torch.randn(4, 16), torch.randn(4, 16)
    assert torch.equal(guide(c, u, 1.0, 0.7), c)
    assert torch.allclose(guide(c, u, 3.0, 0.0), u + 3 * (c - u))
    assert torch.allclose(guide(c, u, 3.0, 1.0).std(-1), c.std(-1), atol=1e-5)
    # guidance rescale (Lin et al. 2024, eq. 15-16), in numpy float64
    cn, un = c.double().numpy(), u.double().numpy()
    g = un + 3.0 * (cn - un)
    rescaled = g * cn.std(-1, keepdims=True) / g.std(-1, keepdims=True)
    assert np.allclose(guide(c, u, 3.0, 0.7).numpy(), 0.7 * rescaled + 0.3 * g, atol=1e-5)


def test_guidance_in_epsilon_space_as_meta_applies_it():
    """Meta's two-tower generator: x0 predictions -> ε at ᾱ_τ, guidance and rescale on ε (diffusers'
    `rescale_noise_cfg` for one vector per row), the DDIM step on the guided ε."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    torch.manual_seed(0)
    x, c, u = torch.randn(5, 16), torch.randn(5, 16), torch.randn(5, 16)
    a = torch.tensor(0.3)
    x0 = guide_epsilon(x, a, c, u, 3.0, 0.7)
    eps_c, eps_u, eps = ((x - a.sqrt() * v) / (1 - a).sqrt() for v in (c, u, x0))
    expected = rescale_noise_cfg(eps_u + 3.0 * (eps_c - eps_u), eps_c, guidance_rescale=0.7)
    assert torch.allclose(eps, expected, atol=1e-5)  # the ε the DDIM step recovers is the guided, rescaled ε
    assert torch.allclose(guide_epsilon(x, a, c, u, 1.0, 0.7), c, atol=1e-5)  # guidance 1: the conditional model
    assert torch.allclose(guide_epsilon(x, a, c, u, 3.0, 0.0), guide(c, u, 3.0, 0.0), atol=1e-5)  # linear part: same
    assert not torch.allclose(x0, guide(c, u, 3.0, 0.7), atol=1e-2)  # the rescale is not: x0-space shrinks x0


TINY_ARCH = LCMConfig(embed_dim=12, d_model=16, n_layer=2, n_head=2, max_seq_len=16, dropout=0.0)


@pytest.fixture(scope="module", params=["two", "one"], ids=lambda t: f"{t}-tower")
def net(request):
    from lcm.one_tower import OneTowerLCM

    torch.manual_seed(0)
    kind = TwoTowerLCM if request.param == "two" else OneTowerLCM
    model = kind(TINY_ARCH, DiffusionConfig(denoiser_layers=2, ddim_steps=4, tower=request.param)).eval()
    for p in model.parameters():  # AdaLN-Zero starts as identity: perturb so the tests see real attention
        p.data.add_(0.05 * torch.randn_like(p))
    return model


def test_denoiser_shapes_and_causal_context(net):
    x = torch.randn(2, 6, 12)
    ctx = net.encode_context(x)
    assert net.context_states(ctx).shape == (2, 6, 16)
    qpos = torch.tensor([[1, 3], [0, 5]])
    x_tau, tau = torch.randn(2, 2, 12), torch.tensor([[10, 50], [99, 0]])
    out = net.denoise(ctx, x_tau, tau, qpos, None)
    assert out.shape == (2, 2, 12)
    later = x.clone()
    later[:, 4:] = torch.randn(2, 2, 12)  # concepts after position 3: invisible to queries at 1 and 3 (row 0)
    out2 = net.denoise(net.encode_context(later), x_tau, tau, qpos, None)
    assert torch.allclose(out[0], out2[0], atol=1e-6) and not torch.allclose(out[1, 1], out2[1, 1])
    dropped = torch.zeros(2, 2, dtype=torch.bool)  # classifier-free: no context at all
    other = net.encode_context(torch.randn(2, 6, 12))
    assert torch.allclose(net.denoise(ctx, x_tau, tau, qpos, dropped), net.denoise(other, x_tau, tau, qpos, dropped),
                          atol=1e-6)
    doc = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]])  # packed: a query sees only its own document
    pos = torch.tensor([[0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 4, 5]])
    first = x.clone()
    first[0, :3] = torch.randn(3, 12)  # document 0 of row 0 changed: the query after position 5 (document 1) is not
    a = net.denoise(net.encode_context(x, doc, pos), x_tau, tau, qpos, None)
    b = net.denoise(net.encode_context(first, doc, pos), x_tau, tau, qpos, None)
    assert torch.allclose(a[0, 1], b[0, 1], atol=1e-6) and not torch.allclose(a[0, 0], b[0, 0])


def test_one_tower_equals_the_papers_interleaved_layout():
    """The paper's one-tower sequence [x_0, x̃_1, x_1, x̃_2, ...] (clean: causal over clean; noisy x̃_t+1: x_0..x_t and
    itself; x̃_t+1 at position t+1), built here by hand on the same tower, gives our [clean.., queries..] outputs."""
    from lcm.one_tower import OneTowerLCM

    torch.manual_seed(0)
    net = OneTowerLCM(TINY_ARCH, DiffusionConfig(tower="one")).eval()
    B, T, D = 2, 5, 12
    clean, noisy, tau = torch.randn(B, T, D), torch.randn(B, T, D), torch.randint(0, 100, (B, T))
    ours = net.denoise(net.encode_context(clean), noisy, tau, torch.arange(T).expand(B, T), None)

    tower = net.tower
    inputs = torch.stack([tower.in_proj(clean), tower.in_proj(noisy) + net.time_mlp(timestep_embedding(tau, 16))],
                         dim=2).reshape(B, 2 * T, 16)  # x_0, x̃_1, x_1, x̃_2, ...
    step = torch.arange(2 * T) // 2  # the concept index each slot belongs to
    noisy_slot = torch.arange(2 * T) % 2 == 1
    positions = step + noisy_slot.long()  # x_t at t, x̃_t+1 at t+1
    sees_clean = ~noisy_slot[None, :] & (step[None, :] <= step[:, None])
    mask = (sees_clean | torch.eye(2 * T, dtype=torch.bool))[None, None]
    h = inputs
    for block in tower.blocks:
        h = block(h, (net.rope_cos[positions], net.rope_sin[positions]), mask=mask.expand(B, 1, 2 * T, 2 * T))
    paper = tower.out_proj(tower.norm(h))[:, noisy_slot]  # (B, T, D)
    assert torch.allclose(ours, paper, atol=1e-5)
    assert torch.allclose(net.context_states(net.encode_context(clean)), tower.norm(h)[:, ~noisy_slot], atol=1e-5)


@pytest.mark.parametrize("packed", [False, True])
def test_one_tower_prefix_cache_and_one_training_pass_give_the_full_passes_outputs(packed):
    """Sampling caches the clean prefix's keys and values once (`for_sampling`) and runs only the queries at each DDIM
    step: the same x0 as the tower over [prefix, queries], for queries after different positions, context-free
    (guidance) queries, right-padded rows and packed documents; rows and the guidance doubling keep the cache."""
    from lcm.one_tower import OneTowerLCM

    torch.manual_seed(0)
    net = OneTowerLCM(TINY_ARCH, DiffusionConfig(tower="one")).eval()
    for p in net.parameters():  # at init attention is near uniform: perturb so positions and masks matter
        p.data.add_(0.3 * torch.randn_like(p))
    B, T, D = 3, 6, 12
    doc = torch.tensor([[0, 0, 0, 1, 1, 1]] * B) if packed else None
    pos = torch.tensor([[0, 1, 2, 0, 1, 2]] * B) if packed else None
    ctx = net.encode_context(torch.randn(B, T, D), doc, pos)
    cached = net.for_sampling(ctx)
    assert cached.kv is not None and len(cached.kv) == len(net.tower.blocks) and ctx.kv is None
    qpos, x_tau = torch.tensor([[5, 1], [2, 4], [0, 3]]), torch.randn(B, 2, D)
    tau, keep = torch.randint(0, 100, (B, 2)), torch.tensor([[True, False], [True, True], [False, True]])
    for k in (None, keep):
        torch.testing.assert_close(net.denoise(cached, x_tau, tau, qpos, k), net.denoise(ctx, x_tau, tau, qpos, k),
                                   atol=1e-5, rtol=1e-5)
    x0, context = net.denoise_and_context(ctx, x_tau, tau, qpos, keep)  # training: both heads from one pass
    torch.testing.assert_close(x0, net.denoise(ctx, x_tau, tau, qpos, keep))
    torch.testing.assert_close(context, net.context_prediction(ctx), atol=1e-5, rtol=1e-5)
    rows = torch.tensor([True, False, True])
    torch.testing.assert_close(net.denoise(cached.rows(rows).twice(), x_tau[rows].repeat(2, 1, 1), tau[rows].repeat(2, 1),
                                           qpos[rows].repeat(2, 1), None),
                               net.denoise(ctx.rows(rows).twice(), x_tau[rows].repeat(2, 1, 1), tau[rows].repeat(2, 1),
                                           qpos[rows].repeat(2, 1), None), atol=1e-5, rtol=1e-5)


def test_cfg_off_equals_guidance_one_and_sampling_is_seeded(net):
    ctx = net.encode_context(torch.randn(3, 5, 12))
    qpos = torch.tensor([[4], [2], [0]])
    x_tau, tau = torch.randn(3, 1, 12), torch.full((3, 1), 30)
    assert torch.equal(net.guided(ctx, x_tau, tau, qpos, 1.0, 0.7), net.denoise(ctx, x_tau, tau, qpos, None))
    # guided: the conditional and the context-free pass in one batch, combined in ε space (default) or x0 space
    cond = net.denoise(ctx, x_tau, tau, qpos, None)
    uncond = net.denoise(ctx, x_tau, tau, qpos, torch.zeros_like(qpos, dtype=torch.bool))
    assert torch.allclose(net.guided(ctx, x_tau, tau, qpos, 3.0, 0.7),
                          guide_epsilon(x_tau, net.abar[30], cond, uncond, 3.0, 0.7), atol=1e-5)
    assert torch.allclose(net.guided(ctx, x_tau, tau, qpos, 3.0, 0.7, space="x0"), guide(cond, uncond, 3.0, 0.7),
                          atol=1e-5)
    top = torch.tensor([[99], [99], [30]])  # the pure-noise level T-1 is not guided in ε space (Meta skips it)
    mixed = net.guided(ctx, x_tau, top, qpos, 3.0, 0.7)
    assert torch.allclose(mixed[:2], net.denoise(ctx, x_tau, top, qpos, None)[:2], atol=1e-6)
    assert torch.allclose(mixed[2], guide_epsilon(x_tau, net.abar[30], cond, uncond, 3.0, 0.7)[2], atol=1e-5)
    # denoiser passes per concept: 4 linspace steps (99, 66, 33, 0), the first unguided in ε space
    assert net.denoiser_evals(4, 3.0) == 7 and net.denoiser_evals(4, 1.0) == 4
    a = net.sample(ctx, qpos, torch.Generator().manual_seed(1), guidance=1.0)
    b = ddim(lambda x, t: net.denoise(ctx, x, torch.full_like(qpos, t), qpos, None),
             0.6 * torch.randn(3, 1, 12, generator=torch.Generator().manual_seed(1)), net.abar, ddim_timesteps(100, 4))
    assert a.shape == (3, 1, 12) and torch.allclose(a, b, atol=1e-6)
    again = net.sample(ctx, qpos, torch.Generator().manual_seed(1), guidance=1.0)
    other = net.sample(ctx, qpos, torch.Generator().manual_seed(2), guidance=1.0)
    assert torch.equal(a, again) and not torch.allclose(a, other)


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory):
    return fit_in(tmp_path_factory.mktemp("diffusion"), "quickstart_diffusion.yaml", TINY_DIFFUSION)


def test_diffusion_checkpoint_round_trip_and_k_samples(diffusion_run):
    ckpt = torch.load(diffusion_run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["lcm"]["model_class"] == "lcm.diffusion.DiffusionLCM"
    assert ckpt["hyper_parameters"]["diffusion"]["ddim_steps"] == 5
    assert "val/step_cosine" in (diffusion_run / "metrics.csv").read_text()
    gen = ConceptGenerator.from_checkpoint(diffusion_run / "checkpoints" / "last.ckpt")
    assert type(gen.model) is DiffusionLCM and gen.model.diffusion.denoiser_layers == 1
    for k, v in gen.model.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][k]), k
    samples = gen.generate(PROBLEM, num_samples=4, seed=0, max_steps=3, stop_on_repeat=False, eot_threshold=1.01)
    again = gen.generate(PROBLEM, num_samples=4, seed=0, max_steps=3, stop_on_repeat=False, eot_threshold=1.01)
    assert len(samples) == 4 and all(1 <= len(s.steps) + (s.stop_reason == "end_of_text") for s in samples)
    for a, b in zip(samples, again):  # seeded: the same call gives the same paths
        assert a.stop_reason == b.stop_reason and [t.text for t in a.steps] == [t.text for t in b.steps]
        assert all(np.array_equal(x.embedding, y.embedding) for x, y in zip(a.steps, b.steps))
    x = torch.from_numpy(gen.encoder.encode([PROBLEM])).expand(4, 1, -1)  # 4 copies of a one-concept prompt
    nxt = gen.model.next_concept(x, torch.ones(4, dtype=torch.long), torch.Generator().manual_seed(0))
    assert nxt.shape == (4, 384) and (nxt - nxt[0]).abs().max() > 1e-4  # different noise per sample
    batch = gen.generate([PROBLEM, "Sam reads 4 pages a day. How many pages in 7 days?"], num_samples=2, seed=0,
                         max_steps=2, guidance=1.0, ddim_steps=2)
    assert len(batch) == 2 and all(len(group) == 2 for group in batch)
    assert gen.model.denoiser_evals(guidance=1.0, ddim_steps=2) == 2
    assert gen.model.denoiser_evals() == 2 * 5 - 1  # 5 steps with guidance, none at the pure-noise level
    base = gen.generate(PROBLEM, seed=0, max_steps=1, ddim_steps=3, eta=0.0, stop_on_repeat=False, eot_threshold=1.01)
    stochastic = gen.generate(PROBLEM, seed=0, max_steps=1, ddim_steps=3, eta=1.0, stop_on_repeat=False,
                              eot_threshold=1.01)  # eta reaches the sampler: fresh noise at every DDIM step
    assert not np.allclose(base.steps[0].embedding, stochastic.steps[0].embedding)
    for bad in ({"ddim_steps": 0}, {"ddim_steps": 101}, {"guidance": -1.0}, {"eta": -0.5}):
        with pytest.raises(LCMError, match="diffusion sampling settings"):
            gen.generate(PROBLEM, **bad)


def test_one_tower_trains_saves_and_samples_through_the_same_config_and_api(tmp_path_factory):
    """`diffusion.tower: one` in any diffusion config: `lcm fit`, the checkpoint, `generate` (seeded, k samples) and
    the validation scores work as for the two-tower model; `diffusion.context_loss` from the command line arrives."""
    from lcm.one_tower import OneTowerLCM

    run = fit_in(tmp_path_factory.mktemp("one_tower"), "quickstart_diffusion.yaml",
                 TINY_DIFFUSION + ["--model.init_args.diffusion.tower", "one", "--model.init_args.diffusion.context_loss", "0.5"])
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert all(k in header for k in ("val/x0_mse", "val/ctx_shift", "val/step_retrieval_acc", "val/context_mse",
                                     "train/context_loss", "train/x0_loss"))
    gen = ConceptGenerator.from_checkpoint(run / "checkpoints" / "best.ckpt")
    assert type(gen.model) is DiffusionLCM and type(gen.model.net) is OneTowerLCM
    assert gen.model.hparams["diffusion"]["tower"] == "one" and gen.model.diffusion.context_loss == 0.5
    samples = gen.generate(PROBLEM, num_samples=3, seed=0, max_steps=3, stop_on_repeat=False, ddim_steps=4)
    again = gen.generate(PROBLEM, num_samples=3, seed=0, max_steps=3, stop_on_repeat=False, ddim_steps=4)
    assert len(samples) == 3 and [[t.text for t in s.steps] for s in samples] == [[t.text for t in s.steps] for s in again]
    x = torch.from_numpy(gen.encoder.encode([PROBLEM, "Ann has 3 pens."])).reshape(1, 2, -1).expand(3, -1, -1)
    lengths = torch.tensor([2, 1, 2])  # a shorter context in row 1: its query follows position 0
    nxt = gen.model.next_concept(x, lengths, torch.Generator().manual_seed(0), ddim_steps=4)
    assert nxt.shape == (3, 384) and (nxt[0] - nxt[2]).abs().max() > 1e-4  # fresh noise per row
    assert gen.model.hidden_states(x).shape == (3, 2, 64) and gen.model.denoiser_evals() == 2 * 5 - 1


def test_ema_weights_are_what_checkpoints_and_sampling_hold_and_best_is_chosen_on_x0_error(diffusion_run):
    """The diffusion configs' EMAWeightAveraging (Lightning's): a checkpoint's `state_dict` is the EMA (the training
    weights in `current_model_state`), generation loads the EMA, and best.ckpt has the lowest val/x0_mse."""
    import csv

    ckpt = torch.load(diffusion_run / "checkpoints" / "best.ckpt", weights_only=False)
    ema, current = ckpt["state_dict"], ckpt["current_model_state"]
    assert set(ema) == set(current) and any(not torch.equal(ema[k], current[k]) for k in ema)
    assert int(ckpt["averaging_state"]["n_averaged"]) == ckpt["global_step"]  # updated after every step
    gen = ConceptGenerator.from_checkpoint(diffusion_run / "checkpoints" / "best.ckpt")
    assert all(torch.equal(v, ema[k]) for k, v in gen.model.state_dict().items())
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert state["monitor"] == "val/x0_mse"
    with open(diffusion_run / "metrics.csv") as f:
        scores = [float(r["val/x0_mse"]) for r in csv.DictReader(f) if r["val/x0_mse"]]
    assert len(scores) == 2 and float(state["best_model_score"]) == pytest.approx(min(scores))


def test_x0_error_is_seeded_and_the_context_swap_changes_only_the_context(diffusion_run):
    """val/x0_mse: the training objective at fixed noise levels and seeded noise: the same number every time for
    the same weights and batch, another for another eval_seed. ctx_shift: swapping identical contexts changes
    nothing (both passes sample with the same noise, row for row), swapping distinct ones does."""
    from lcm.concepts import ConceptType

    model = ConceptGenerator.from_checkpoint(diffusion_run / "checkpoints" / "best.ckpt").model
    types = torch.full((2, 6), int(ConceptType.STEP))
    types[:, 0] = int(ConceptType.PROMPT)
    batch = {"x": torch.from_numpy(model.normalizer.denormalize(torch.randn(2, 6, 384)).numpy()), "types": types}
    logged = {}
    model.log = lambda name, value, **kw: logged.setdefault(name, []).append(float(value))
    for _ in range(2):
        model._log_x0_error(batch, 0, "val")
    model.eval_seed += 1
    model._log_x0_error(batch, 0, "val")
    same, again, other = logged["val/x0_mse"]
    assert same == again and other != same
    torch.manual_seed(0)  # 2 tiny epochs leave the AdaLN-Zero gates near 0 (the context barely reaches the denoiser)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    twins = {"x": batch["x"][:1].expand(2, -1, -1).clone(), "types": types}
    with torch.no_grad():
        for b, changed in ((twins, False), (batch, True)):
            pred, _, mask = model._predict(b)
            assert (float(model._context_metrics(b, pred, mask)["ctx_shift"][0]) > 1e-4) == changed


def test_sampling_options_a_model_does_not_use_are_refused(diffusion_run, trained_run):
    """Before, `noise` was silently ignored by diffusion models and `guidance` / DDIM steps by Base-LCM."""
    diffusion = ConceptGenerator.from_checkpoint(diffusion_run / "checkpoints" / "last.ckpt")
    base = ConceptGenerator.from_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    for gen, option, kind in ((diffusion, {"noise": 0.5}, "diffusion"), (base, {"guidance": 2.0}, "Base-LCM"),
                              (base, {"ddim_steps": 10}, "Base-LCM")):
        (name,) = option
        with pytest.raises(LCMError, match=f"sampling option '{name}' does nothing for a {kind} model") as e:
            gen.generate(PROBLEM, num_samples=2, seed=0, max_steps=2, **option)
        assert "\n" not in str(e.value)
    assert type(sampling_settings(diffusion.model, guidance=2.0, ddim_steps=3)) is DiffusionSampling
    assert sampling_settings(base.model, noise=0.5) == BaseLCMSampling(noise=0.5)
    assert sampling_settings(base.model).model_kwargs() == {"noise": 0.0}
    assert sampling_settings(diffusion.model, guidance=None).model_kwargs() == {}  # None = the checkpoint's
    with pytest.raises(LCMError, match="Base-LCM sampling settings: noise must be"):
        sampling_settings(base.model, noise=-1.0)


def test_checkpoint_from_before_the_ddim_steps_rename_still_loads(diffusion_run, tmp_path):
    ckpts = tmp_path / "ckpts"
    shutil.copytree(diffusion_run / "checkpoints", ckpts)
    ckpt = torch.load(ckpts / "last.ckpt", weights_only=False)
    settings = ckpt["hyper_parameters"]["diffusion"]
    settings["steps"] = settings.pop("ddim_steps")  # how checkpoints stored it before the rename
    torch.save(ckpt, ckpts / "old.ckpt")
    gen = ConceptGenerator.from_checkpoint(ckpts / "old.ckpt")
    assert gen.model.diffusion.ddim_steps == 5 and gen.model.hparams["diffusion"]["ddim_steps"] == 5
    assert "steps" not in gen.model.hparams["diffusion"]  # saved again under the new name
    assert gen.model.denoiser_evals() == 2 * 5 - 1
    with pytest.raises(ValueError, match="both"):
        DiffusionConfig.from_dict({**settings, "ddim_steps": 5})


def test_base_lcm_samples_with_its_noise_option(trained_run):
    gen = ConceptGenerator.from_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    same = gen.generate(PROBLEM, num_samples=3, max_steps=2, stop_on_repeat=False, eot_threshold=1.01)
    assert len({tuple(s.steps[0].embedding.round(5)) for s in same}) == 1  # deterministic without noise
    noisy = gen.generate(PROBLEM, num_samples=3, seed=3, noise=0.5, max_steps=2, stop_on_repeat=False, eot_threshold=1.01)
    assert len({tuple(s.steps[0].embedding.round(5)) for s in noisy}) == 3
    again = gen.generate(PROBLEM, num_samples=3, seed=3, noise=0.5, max_steps=2, stop_on_repeat=False, eot_threshold=1.01)
    assert all(np.array_equal(a.steps[0].embedding, b.steps[0].embedding) for a, b in zip(noisy, again))
    with pytest.raises(LCMError, match="num_samples"):
        gen.generate(PROBLEM, num_samples=0)


def test_diffusion_with_planning_and_supplied_plans(tmp_path, diffusion_run):
    """Planning diffusion: supplied plans; `plan_source` from the config arrives and "regressed" plans are the
    context head's deterministic prediction (k samples share it), "sampled" ones differ per sample."""
    run = fit_in(tmp_path, "quickstart_diffusion.yaml",
                 [*TINY_DIFFUSION, "--trainer.max_epochs", "1", "--data.init_args.planning.flat_grouping", "fixed",
                  "--model.init_args.diffusion.context_loss", "0.5", "--model.init_args.diffusion.plan_source", "regressed"])
    assert "val/plan_cosine" in (run / "metrics.csv").read_text()
    gen = ConceptGenerator.from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert gen.planning and type(gen.model) is DiffusionLCM and gen.model.diffusion.plan_source == "regressed"
    outs = gen.generate(PROBLEM, plans=["First find what is left."], num_samples=2, seed=0, max_steps=4)
    assert len(outs) == 2 and all(o.steps[0].is_plan and o.steps[0].source == "supplied" for o in outs)
    kw = {"num_samples": 3, "seed": 0, "max_steps": 1, "stop_on_repeat": False, "eot_threshold": 1.01,
          "break_threshold": 1.01}
    regressed = [o.steps[0].embedding for o in gen.generate(PROBLEM, **kw)]
    sampled = [o.steps[0].embedding for o in gen.generate(PROBLEM, plan_source="sampled", **kw)]
    assert np.allclose(regressed[0], regressed[1]) and np.allclose(regressed[0], regressed[2])
    assert not np.allclose(sampled[0], sampled[1])
    with pytest.raises(LCMError, match="plan_source"):
        gen.generate(PROBLEM, plan_source="planned")
    gen.model.diffusion.context_loss = 0.0  # as a model trained without the head: refused before any step
    with pytest.raises(LCMError, match="context_loss > 0"):
        gen.generate(PROBLEM, plan_source="regressed")
    flat = ConceptGenerator.from_checkpoint(diffusion_run / "checkpoints" / "last.ckpt")  # no planning, no head
    with pytest.raises(LCMError, match="no plans"):
        flat.generate(PROBLEM, plan_source="regressed")


@pytest.mark.parametrize("tower", ["two", "one"])
def test_context_loss_adds_a_weighted_base_lcm_regression_of_the_context(tower):
    """`diffusion.context_loss` w: the training loss is the denoising loss + w × the type-weighted MSE of a causal
    next-concept regression from the context states (two-tower: the contextualizer's output head; one-tower: the
    tower read as the Base-LCM it is). w = 0 builds no head: older two-tower checkpoints keep their layout."""
    from lcm.concepts import ConceptType

    assert not any("context.out_proj" in k for k in TwoTowerLCM(TINY_ARCH, DiffusionConfig()).state_dict())
    with pytest.raises(ValueError, match="context_loss"):
        DiffusionConfig(context_loss=-1.0)
    torch.manual_seed(0)
    model = DiffusionLCM(TINY_ARCH, DiffusionConfig(denoiser_layers=1, tower=tower, context_loss=0.5))
    types = torch.tensor([[0, 3, 1, 1, 4, 3, 1, 2]] * 2)
    batch = {"x": torch.randn(2, 8, 12), "types": types}
    ctx, x0 = model._context_and_targets(batch)
    pred = model.net.context_prediction(ctx)  # (B, T-1, D): causal, as Base-LCM's
    assert pred.shape == (2, 7, 12)
    later = {"x": batch["x"].clone(), "types": types}
    later["x"][:, 5:] = torch.randn(2, 3, 12)
    assert torch.allclose(model.net.context_prediction(model._context_and_targets(later)[0])[:, :5], pred[:, :5], atol=1e-6)
    doc, pos = torch.tensor([[0, 0, 0, 1, 1, 1, 1]] * 2), torch.tensor([[0, 1, 2, 0, 1, 2, 3]] * 2)  # packed: 2 docs
    xn = model.normalizer.normalize(batch["x"][:, :-1])
    both = model.net.context_prediction(model.net.encode_context(xn, doc, pos))
    alone = model.net.context_prediction(model.net.encode_context(xn[:, 3:]))  # the second document by itself
    assert torch.allclose(both[:, 3:], alone, atol=1e-5)
    if tower == "one":  # the tower's own Base-LCM forward
        assert torch.allclose(pred, model.net.tower(model.normalizer.normalize(batch["x"][:, :-1])), atol=1e-6)
    mask = types[:, 1:] != int(ConceptType.PROMPT)
    expected = (pred - x0).pow(2).mean(-1)[mask].mean()  # unit loss weights
    assert torch.allclose(model._context_error(batch, ctx, x0), expected, atol=1e-6)
    sampled = model._predict(batch)[0]  # plan_source "regressed": the head's prediction where a plan comes next
    model.diffusion.plan_source = "regressed"
    mixed = model._predict(batch)[0]
    plans = types[:, 1:] == int(ConceptType.PLAN)
    assert torch.allclose(mixed[plans], pred[plans], atol=1e-6) and torch.equal(mixed[~plans], sampled[~plans])
    assert not torch.allclose(sampled[plans], pred[plans], atol=1e-3)
    model.diffusion.plan_source = "sampled"
    with pytest.raises(ValueError, match="context_loss > 0"):
        DiffusionConfig(plan_source="regressed")
    model.log = model.log_dict = lambda *a, **k: None  # no trainer attached
    torch.manual_seed(1)
    with_aux = model.training_step(batch, 0)
    model.diffusion.context_loss = 0.0
    torch.manual_seed(1)
    without = model.training_step(batch, 0)
    assert torch.allclose(with_aux - without, 0.5 * expected, atol=1e-5) and expected > 0
