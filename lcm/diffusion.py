"""Two-tower diffusion LCM: a causal contextualizer over the concept sequence, and a denoiser that turns a
noisy next concept into a clean one while cross-attending to the context (LCM paper, section 2.3).

- Contextualizer: the Base-LCM trunk (`BaseLCM(output=False)`) over normalized concepts ≤ t.
- Denoiser: per position, input projection of the noisy concept x_τ, timestep τ (sinusoidal -> MLP)
  applied by AdaLN-Zero modulation in every block (DiT), cross-attention to the contextualizer outputs
  with a causal mask (denoiser position t, which denoises concept t+1, sees contexts 0..t) plus a
  learned null context that every position can always see, then SwiGLU. Predicts the clean x0.
- Training: x_τ = sqrt(ᾱ_τ) x0 + sqrt(1 - ᾱ_τ) ε with τ uniform; MSE on x0 at target positions. A share
  `cfg_dropout` of positions sees only the null context (classifier-free guidance).
- Sampling: DDIM over `ddim_steps` timesteps from an initial noise of scale `init_noise`, with classifier-free
  guidance where Meta's two-tower code applies it (`guidance_space: epsilon`): both x0 predictions converted to
  ε = (x_τ - √ᾱ x0) / √(1 - ᾱ), ε = ε_u + g (ε_c - ε_u), rescaled by φ (Lin et al. 2024, algorithm 2: a mix of
  the guided ε rescaled to the conditional's std and the guided ε), and no guidance at the pure-noise level T-1.
  `guidance_space: x0` guides the x0 predictions at every step (this project's earlier sampler): the linear part
  is the same, the rescale is not (in x0 space it shrinks the guided x0 at every noise level).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lcm.concepts import ConceptType
from lcm.errors import ConfigError, LCMError
from lcm.model import BaseLCM, LCMConfig, SwiGLU, init_gpt_weights
from lcm.module import ConceptLM, packed, target_mask
from lcm.optim import OptimConfig
from lcm.sampling import PLAN_SOURCES, DiffusionSampling, randn_like


@dataclass
class DiffusionConfig:
    """Diffusion process and sampling defaults (the LCM paper's: 40 DDIM steps, noise 0.6, guidance 3, rescale 0.7)."""

    denoiser_layers: int = 2
    timesteps: int = 100  # training noise levels
    # ᾱ(t) over t in [0, 1]: "cosine" (Nichol & Dhariwal; diffusers' squaredcos_cap_v2), "sigmoid" (the LCM paper's
    # eq. 14, σ(sigmoid_beta - sigmoid_alpha·logit t), as Meta's DDIM scheduler computes it), "sigmoid_ramp" (this
    # project's earlier "sigmoid": a sigmoid of t rescaled to run from 1 to 0 over [-3, 3])
    schedule: Literal["cosine", "sigmoid", "sigmoid_ramp"] = "cosine"
    sigmoid_alpha: float = 1.5  # Meta's defaults
    sigmoid_beta: float = 0.0
    zero_terminal_snr: bool = False  # rescale the schedule to ᾱ = 0 at the last level (Lin et al. 2024, alg. 1)
    cfg_dropout: float = 0.15  # share of training positions that see no context
    ddim_steps: int = 40  # DDIM steps at inference
    init_noise: float = 0.6  # scale of the starting noise
    guidance: float = 3.0  # classifier-free guidance scale; 1 = off
    guidance_rescale: float = 0.7
    eta: float = 0.0  # 0 = deterministic DDIM given the starting noise
    # which DDIM steps of the T training levels (`ddim_timesteps`): "linspace" (evenly from T-1 to 0, the default),
    # "trailing" (from T-1 down in strides of T/n: Lin et al. 2024, table 2) or "leading" (0, T/n, ..: diffusers'
    # default, which never starts at the pure-noise level)
    timestep_spacing: Literal["linspace", "trailing", "leading"] = "linspace"
    guidance_space: Literal["epsilon", "x0"] = "epsilon"  # where guidance and its rescale apply (module docstring)
    # "two": contextualizer + denoiser (TwoTowerLCM); "one": one causal transformer over clean concepts and noisy
    # queries (lcm.one_tower.OneTowerLCM; `denoiser_layers` is then unused: `arch.n_layer` is its depth)
    tower: Literal["two", "one"] = "two"
    # weight of an auxiliary Base-LCM objective on the context (not in Meta's recipe): each context position's state
    # predicts the next concept through a linear head (two-tower: the contextualizer's output projection; one-tower:
    # the tower's own) by the same type-weighted MSE. Without it the contextualizer learns only through the denoiser,
    # which at most noise levels can lean on x_τ; on logic chains it never learned the plans (docs/diffusion.md).
    context_loss: float = 0.0
    # planning models: where a plan comes from at generation and in the validation scores -- "sampled" by the
    # diffusion sampler like every concept, or "regressed" by the context head (needs context_loss > 0): the plan is
    # the deterministic prediction Base-LCM would make, the steps are still sampled
    plan_source: Literal["sampled", "regressed"] = "sampled"

    def __post_init__(self) -> None:
        if self.timesteps < 2 or not 1 <= self.ddim_steps <= self.timesteps:
            raise ConfigError(f"need timesteps >= 2 and 1 <= ddim_steps <= timesteps "
                              f"(got {self.timesteps}, {self.ddim_steps})")
        if not 0 <= self.cfg_dropout < 1 or self.guidance < 0 or not 0 <= self.guidance_rescale <= 1:
            raise ConfigError("cfg_dropout must be in [0, 1), guidance >= 0, guidance_rescale in [0, 1]")
        if self.timestep_spacing not in SPACINGS:
            raise ConfigError(f"timestep_spacing must be one of {SPACINGS} (got {self.timestep_spacing!r})")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES} (got {self.schedule!r})")
        if not self.sigmoid_alpha > 0:
            raise ConfigError(f"sigmoid_alpha must be > 0 (got {self.sigmoid_alpha})")
        if self.tower not in ("two", "one"):
            raise ConfigError(f"tower must be 'two' or 'one' (got {self.tower!r})")
        if self.guidance_space not in ("epsilon", "x0"):
            raise ConfigError(f"guidance_space must be 'epsilon' or 'x0' (got {self.guidance_space!r})")
        if not self.context_loss >= 0:
            raise ConfigError(f"context_loss must be >= 0 (got {self.context_loss})")
        if self.plan_source not in PLAN_SOURCES:
            raise ConfigError(f"plan_source must be one of {PLAN_SOURCES} (got {self.plan_source!r})")
        if self.plan_source == "regressed" and self.context_loss == 0:
            raise ConfigError("plan_source 'regressed' reads plans from the context head: train with context_loss > 0")

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionConfig":
        """From a checkpoint's hyperparameters, read as `legacy_diffusion_settings` reads older ones."""
        if "steps" in d and "ddim_steps" in d:
            raise ValueError("diffusion settings give both `steps` (its old name) and `ddim_steps`")
        return cls(**legacy_diffusion_settings(d))


def legacy_diffusion_settings(d: dict) -> dict:
    """A checkpoint's diffusion settings in today's names and meanings, so an older checkpoint loads -- by generation
    or by the CLI's --ckpt_path -- as it was trained and sampled: `steps` is `ddim_steps`; "sigmoid" without
    `sigmoid_alpha` is the earlier curve, `sigmoid_ramp`; no `guidance_space` means the earlier sampler, "x0"."""
    d = dict(d)
    if "steps" in d and "ddim_steps" not in d:
        d["ddim_steps"] = d.pop("steps")
    if d.get("schedule") == "sigmoid" and "sigmoid_alpha" not in d:
        d["schedule"] = "sigmoid_ramp"
    d.setdefault("guidance_space", "x0")
    return d


# ---- noise schedules ----------------------------------------------------------------------------
def _cosine(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def _sigmoid_ramp(t: torch.Tensor, start: float = -3.0, end: float = 3.0) -> torch.Tensor:
    lo, hi = torch.sigmoid(torch.tensor(start, dtype=t.dtype)), torch.sigmoid(torch.tensor(end, dtype=t.dtype))
    return (hi - torch.sigmoid(t * (end - start) + start)) / (hi - lo)


def _sigmoid_logit(t: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """The LCM paper's ᾱ(t) = σ(β - α·logit t) (eq. 14), t clamped to [1e-32, 1 - 1e-32] as Meta's code does."""
    t = t.clamp(1e-32, 1 - 1e-32)
    return torch.sigmoid(beta - alpha * torch.log(t / (1 - t)))


def rescale_zero_terminal_snr(abar: torch.Tensor) -> torch.Tensor:
    """ᾱ (T,) shifted and scaled in √ᾱ so that ᾱ_T-1 = 0 and ᾱ_0 is unchanged (Lin et al. 2024, algorithm 1)."""
    root = abar.sqrt()
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    return root**2


def alphas_cumprod(schedule: str, timesteps: int, zero_terminal_snr: bool = False, sigmoid_alpha: float = 1.5,
                   sigmoid_beta: float = 0.0) -> torch.Tensor:
    """ᾱ_τ for τ = 0..T-1 (T,), strictly decreasing from ~1: betas = 1 - ᾱ(τ+1)/ᾱ(τ) clipped at 0.999 (the
    discretization of diffusers' and Meta's `betas_for_alpha_bar`); with `zero_terminal_snr`, rescaled to end at 0."""
    curves = {"cosine": _cosine, "sigmoid": lambda t: _sigmoid_logit(t, sigmoid_alpha, sigmoid_beta),
              "sigmoid_ramp": _sigmoid_ramp}
    if schedule not in curves:
        raise LCMError(f"unknown noise schedule {schedule!r}; use one of {sorted(curves)}")
    t = torch.linspace(0, 1, timesteps + 1, dtype=torch.float64)
    abar = curves[schedule](t)
    betas = (1 - abar[1:] / abar[:-1]).clamp(1e-8, 0.999)
    abar = torch.cumprod(1 - betas, dim=0)
    return (rescale_zero_terminal_snr(abar) if zero_terminal_snr else abar).float()


SPACINGS = ("linspace", "trailing", "leading")
SCHEDULES = ("cosine", "sigmoid", "sigmoid_ramp")


def ddim_timesteps(timesteps: int, ddim_steps: int, spacing: str = "linspace") -> list[int]:
    """`ddim_steps` of the T noise levels 0..T-1, distinct and descending, as diffusers' `timestep_spacing` picks
    them: "linspace" evenly from T-1 to 0; "trailing" T-1, T-1-T/n, ... (rounded; starts at the pure-noise end);
    "leading" (n-1)*(T//n), ..., T//n, 0 (never reaches T-1)."""
    n = ddim_steps
    if spacing == "linspace":  # float32 and Python's round, as every earlier sample used (not diffusers' float64)
        return sorted({round(x) for x in torch.linspace(timesteps - 1, 0, n).tolist()}, reverse=True)
    if spacing == "trailing":  # numpy, as diffusers computes it
        levels = np.round(np.arange(timesteps, 0, -timesteps / n)) - 1
    elif spacing == "leading":
        levels = np.arange(n) * (timesteps // n)
    else:
        raise LCMError(f"unknown timestep spacing {spacing!r}; use one of {SPACINGS}")
    return sorted({int(x) for x in levels if 0 <= x < timesteps}, reverse=True)


def ddim(denoise: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, abar: torch.Tensor, taus: list[int],
         eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """DDIM with an x0-predicting `denoise(x_τ, τ)`; x: starting noise (..., D). Returns the clean sample."""
    for i, tau in enumerate(taus):
        x0 = denoise(x, tau)
        a = abar[tau]
        a_prev = abar[taus[i + 1]] if i + 1 < len(taus) else torch.ones_like(a)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a)).sqrt() * (1 - a / a_prev).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
        if eta > 0 and i + 1 < len(taus):
            x = x + sigma * randn_like(x, generator)
    return x


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float, rescale: float) -> torch.Tensor:
    """Classifier-free guidance with std rescaling over the last dimension (Lin et al. 2024, algorithm 2), of
    whatever the two predictions are (ε or x0). scale 1 returns the conditional prediction exactly."""
    if scale == 1.0:
        return cond
    g = uncond + scale * (cond - uncond)
    if rescale > 0:
        ratio = cond.std(-1, keepdim=True) / g.std(-1, keepdim=True).clamp_min(1e-8)
        g = rescale * g * ratio + (1 - rescale) * g
    return g


def guide_epsilon(x_tau: torch.Tensor, abar: torch.Tensor, x0_cond: torch.Tensor, x0_uncond: torch.Tensor,
                  scale: float, rescale: float) -> torch.Tensor:
    """Guidance in ε space for an x0-predicting denoiser, as Meta's two-tower LCM applies it: x_τ, x0s (..., D),
    abar: ᾱ_τ broadcastable to them (..., 1). Each x0 to ε at ᾱ_τ, `guide` on the ε, the guided ε back to the x0
    the DDIM step reads (which turns it back into the same ε). Computed in float32."""
    x, c, u, a = (t.float() for t in (x_tau, x0_cond, x0_uncond, abar))
    root_a, root_1ma = a.sqrt(), (1 - a).sqrt()
    eps = guide((x - root_a * c) / root_1ma, (x - root_a * u) / root_1ma, scale, rescale)
    return ((x - root_1ma * eps) / root_a).to(x0_cond.dtype)


def query_visibility(T: int, qpos: torch.Tensor, doc: torch.Tensor | None, keep: torch.Tensor | None) -> torch.Tensor:
    """(B, Q, T) bool: which of T context positions each denoiser query may see -- positions 0..qpos[q] of its own
    document (packed windows: `doc` (B, T)), none when keep[q] is False (keep (B, Q) or None: all keep)."""
    visible = torch.arange(T, device=qpos.device)[None, None, :] <= qpos[..., None]  # (B, Q, T)
    if doc is not None:
        visible = visible & (doc[:, None, :] == doc.gather(1, qpos)[..., None])
    if keep is not None:
        visible = visible & keep[..., None]
    return visible


# ---- denoiser -----------------------------------------------------------------------------------
def timestep_embedding(tau: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer noise levels (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=tau.device).float() / half)
    angles = tau.float()[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class DenoiserBlock(nn.Module):
    """AdaLN(τ) -> cross-attention to the context -> gate; AdaLN(τ) -> SwiGLU -> gate (AdaLN-Zero)."""

    def __init__(self, cfg: LCMConfig):
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.q = nn.Linear(d, d, bias=False)
        self.kv = nn.Linear(d, 2 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
        self.mlp = SwiGLU(cfg)
        self.modulation = nn.Linear(d, 6 * d)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x, temb (B, Q, d); ctx (B, S, d); mask (B, 1, Q, S) bool, True = may attend."""
        B, Q, d = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(temb)).chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        q = self.q(h).view(B, Q, self.n_head, d // self.n_head).transpose(1, 2)  # (B, H, Q, hd)
        k, v = self.kv(ctx).view(B, ctx.shape[1], 2, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)  # (B, H, S, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Q, hd)
        x = x + gate1 * self.proj(y.transpose(1, 2).reshape(B, Q, d))
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


@dataclass
class Context:
    """What a diffusion network's denoiser conditions on, for a batch of concept sequences: `states` -- the two-tower
    contextualizer's outputs (B, T, d), or the one-tower model's clean normalized concepts (B, T, D) -- and, for
    packed windows, `doc` / `pos` (B, T): each position's document and its position inside it. `kv`: the one-tower
    model's keys and values of the clean prefix per layer, ((B, H, T, hd), (B, H, T, hd)) each, set for sampling
    (`DiffusionNet.for_sampling`): they do not change across denoising steps."""

    states: torch.Tensor
    doc: torch.Tensor | None = None
    pos: torch.Tensor | None = None
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def rows(self, keep: torch.Tensor) -> "Context":
        """The sequences where keep (B,) bool is True."""
        return self._map(lambda t: t[keep])

    def twice(self) -> "Context":
        """The batch stacked on itself (the conditional and unconditional halves of classifier-free guidance)."""
        return self._map(lambda t: torch.cat([t, t]))

    def _map(self, f) -> "Context":
        kv = None if self.kv is None else [(f(k), f(v)) for k, v in self.kv]
        return Context(*(None if t is None else f(t) for t in (self.states, self.doc, self.pos)), kv)


class DiffusionNet(nn.Module):
    """What every diffusion LCM network shares: the ᾱ schedule, classifier-free guidance, DDIM sampling and its
    cost. A subclass defines `encode_context` (normalized concepts -> `Context`), `denoise` (x0 of noisy concepts
    given a Context) and `context_states` (per-position hidden states of the context, for the comparison)."""

    def __init__(self, cfg: LCMConfig, diffusion: DiffusionConfig):
        super().__init__()
        self.cfg, self.diffusion = cfg, diffusion
        abar = alphas_cumprod(diffusion.schedule, diffusion.timesteps, diffusion.zero_terminal_snr,
                              diffusion.sigmoid_alpha, diffusion.sigmoid_beta)
        self.register_buffer("abar", abar, persistent=False)

    def encode_context(self, xn: torch.Tensor, doc: torch.Tensor | None = None,
                       pos: torch.Tensor | None = None) -> Context:
        raise NotImplementedError

    def denoise(self, ctx: Context, x_tau: torch.Tensor, tau: torch.Tensor, qpos: torch.Tensor,
                keep: torch.Tensor | None) -> torch.Tensor:
        """x_tau (B, Q, D) noisy concepts; tau (B, Q) noise levels; qpos (B, Q): the context position each query
        follows (it sees positions 0..qpos of its own document); keep (B, Q) bool: False = this query sees no
        context (None = all keep). Returns the predicted clean concepts x0 (B, Q, D)."""
        raise NotImplementedError

    def context_states(self, ctx: Context) -> torch.Tensor:
        raise NotImplementedError

    def context_prediction(self, ctx: Context) -> torch.Tensor:
        """(B, T, D) the next normalized concept after every context position, regressed from the context states (the
        `context_loss` head; a Base-LCM's prediction)."""
        raise NotImplementedError

    def transformer_blocks(self) -> list[nn.Module]:
        """The blocks `model.compile` compiles (the training step calls these, not the network's forward)."""
        raise NotImplementedError

    def guided(self, ctx: Context, x_tau: torch.Tensor, tau: torch.Tensor, qpos: torch.Tensor,
               scale: float, rescale: float, space: str = "epsilon") -> torch.Tensor:
        """x0 with classifier-free guidance in `space` ("epsilon": Meta's, unguided at the pure-noise level
        T-1; "x0"): conditional and unconditional passes in one batched forward. Shapes as `denoise`."""
        unguided = tau == self.diffusion.timesteps - 1 if space == "epsilon" else torch.zeros_like(tau, dtype=torch.bool)
        if scale == 1.0 or bool(unguided.all()):  # no unconditional pass where it would not be used
            return self.denoise(ctx, x_tau, tau, qpos, None)
        keep = torch.cat([torch.ones_like(qpos, dtype=torch.bool), torch.zeros_like(qpos, dtype=torch.bool)])
        both = self.denoise(ctx.twice(), torch.cat([x_tau, x_tau]), torch.cat([tau, tau]), torch.cat([qpos, qpos]), keep)
        cond, uncond = both.chunk(2)  # (B, Q, D) each
        if space == "x0":
            return guide(cond, uncond, scale, rescale)
        x0 = guide_epsilon(x_tau, self.abar[tau][..., None], cond, uncond, scale, rescale)
        return torch.where(unguided[..., None], cond, x0)

    def denoiser_evals(self, ddim_steps: int, guidance: float) -> int:
        """Denoiser passes per sampled concept: one per DDIM step, two where guidance runs the unconditional pass
        too (never at guidance 1; in ε space not at the pure-noise level)."""
        if guidance == 1.0:
            return ddim_steps
        d = self.diffusion
        taus = ddim_timesteps(d.timesteps, ddim_steps, d.timestep_spacing)
        skipped = sum(t == d.timesteps - 1 for t in taus) if d.guidance_space == "epsilon" else 0
        return 2 * len(taus) - skipped

    def denoise_and_context(self, ctx: Context, x_tau: torch.Tensor, tau: torch.Tensor, qpos: torch.Tensor,
                            keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`denoise` and `context_prediction` together (the training step's two losses); the one-tower model gets
        both from one pass."""
        return self.denoise(ctx, x_tau, tau, qpos, keep), self.context_prediction(ctx)

    def for_sampling(self, ctx: Context) -> Context:
        """The context as the sampler's many denoiser passes use it (the one-tower model caches its prefix here)."""
        return ctx

    def sample(self, ctx: Context, qpos: torch.Tensor, generator: torch.Generator | None = None,
               **overrides) -> torch.Tensor:
        """Clean next concepts after context positions qpos (B, Q) -> (B, Q, D), by DDIM. `overrides`:
        ddim_steps, init_noise, guidance, guidance_rescale, eta (default: the config's)."""
        try:
            cfg = DiffusionConfig(**{**asdict(self.diffusion), **{k: v for k, v in overrides.items() if v is not None}})
        except (TypeError, ValueError) as e:
            raise LCMError(f"diffusion sampling settings: {e}") from e
        B, Q = qpos.shape
        dtype = ctx.states.dtype
        ctx = self.for_sampling(ctx)
        x = cfg.init_noise * randn_like(ctx.states.new_empty(B, Q, self.cfg.embed_dim).float(), generator)
        taus = ddim_timesteps(cfg.timesteps, cfg.ddim_steps, cfg.timestep_spacing)

        def denoise(x_tau: torch.Tensor, tau: int) -> torch.Tensor:
            levels = torch.full_like(qpos, tau)
            return self.guided(ctx, x_tau.to(dtype), levels, qpos, cfg.guidance, cfg.guidance_rescale,
                               cfg.guidance_space).float()

        return ddim(denoise, x, self.abar, taus, cfg.eta, generator)


class TwoTowerLCM(DiffusionNet):
    """contextualizer(concepts ≤ t) + denoiser(x_τ of concept t+1, τ) -> x0 of concept t+1."""

    def __init__(self, cfg: LCMConfig, diffusion: DiffusionConfig):
        super().__init__(cfg, diffusion)
        d = cfg.d_model
        self.context = BaseLCM(cfg, output=diffusion.context_loss > 0)  # the output projection: context_loss's head
        self.null_context = nn.Parameter(torch.zeros(1, 1, d))
        self.in_proj = nn.Linear(cfg.embed_dim, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(DenoiserBlock(cfg) for _ in range(diffusion.denoiser_layers))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False)
        self.final_modulation = nn.Linear(d, 2 * d)
        self.out_proj = nn.Linear(d, cfg.embed_dim)
        init_gpt_weights(self.blocks, diffusion.denoiser_layers)
        for m in (*[b.modulation for b in self.blocks], self.final_modulation):  # AdaLN-Zero: blocks start as identity
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        nn.init.normal_(self.null_context, std=0.02)

    def encode_context(self, xn: torch.Tensor, doc: torch.Tensor | None = None,
                       pos: torch.Tensor | None = None) -> Context:
        """The contextualizer over normalized concepts xn (B, T, D): Context with states (B, T, d)."""
        return Context(self.context.hidden_states(xn, doc, pos), doc, pos)

    def context_states(self, ctx: Context) -> torch.Tensor:
        return ctx.states

    def context_prediction(self, ctx: Context) -> torch.Tensor:
        if self.context.out_proj is None:
            raise ValueError("this contextualizer has no output head: train with diffusion.context_loss > 0")
        return self.context.out_proj(ctx.states)

    def transformer_blocks(self) -> list[nn.Module]:
        return [*self.context.blocks, *self.blocks]

    def denoise(self, ctx: Context, x_tau: torch.Tensor, tau: torch.Tensor, qpos: torch.Tensor,
                keep: torch.Tensor | None) -> torch.Tensor:
        """As `DiffusionNet.denoise`: the denoiser cross-attends to the contextualizer outputs a query may see and a
        learned null context (the only thing a query with keep False sees)."""
        states, doc = ctx.states, ctx.doc
        B, T, d = states.shape
        kv = torch.cat([self.null_context.expand(B, 1, d).to(states.dtype), states], dim=1)  # (B, 1+T, d)
        visible = query_visibility(T, qpos, doc, keep)  # (B, Q, T)
        mask = torch.cat([torch.ones_like(visible[..., :1]), visible], dim=-1)[:, None]  # (B, 1, Q, 1+T)
        temb = self.time_mlp(timestep_embedding(tau, d).to(states.dtype))  # (B, Q, d)
        h = self.in_proj(x_tau)
        for block in self.blocks:
            h = block(h, temb, kv, mask)
        shift, scale = self.final_modulation(F.silu(temb)).chunk(2, dim=-1)
        return self.out_proj(self.final_norm(h) * (1 + scale) + shift)


X0_ERROR_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)  # shares of the top noise level T-1 at which `x0_mse` is measured


class DiffusionLCM(ConceptLM):
    """Diffusion LCM, two-tower (default) or one-tower (`diffusion.tower: one`, `lcm.one_tower`), trained and used
    like Base-LCM (`model: {class_path: lcm.diffusion.DiffusionLCM}`).

    Args:
        arch: contextualizer shape (its d_model / n_head / dropout also shape the denoiser); one-tower: the tower's.
        diffusion: denoiser depth, noise schedule, CFG dropout and the sampling defaults.
        eval_seed: seed of the noise used for validation / test samples (scores are reproducible).
        compile: as `ConceptLM`; here each contextualizer block and each denoiser block is compiled (the
            training step calls `hidden_states` and `denoise`, not the network's `forward`).
        Other arguments as `ConceptLM`.
    """

    sampling_settings = DiffusionSampling  # per-call options of generation: guidance, ddim_steps
    has_step_policy = False  # a sampler, not one prediction per step: no categorical policy over the bank

    def __init__(self, arch: LCMConfig = LCMConfig(), diffusion: DiffusionConfig = DiffusionConfig(),
                 optim: OptimConfig = OptimConfig(), loss_weights: dict[str, float] | None = None,
                 boundary_threshold: float | None = None, eval_seed: int = 0, compile: bool = False):
        if isinstance(diffusion, dict):  # from a checkpoint's hyperparameters
            diffusion = DiffusionConfig.from_dict(diffusion)
        self.diffusion, self.eval_seed = diffusion, eval_seed  # read by build_net / extra_hparams below
        super().__init__(arch, optim=optim, loss_weights=loss_weights, boundary_threshold=boundary_threshold,
                         compile=compile)

    def extra_hparams(self) -> dict:
        return {"diffusion": asdict(self.diffusion), "eval_seed": self.eval_seed}

    def attach_data(self, data) -> None:
        if self.diffusion.plan_source == "regressed" and not data.planning:
            raise LCMError("diffusion.plan_source 'regressed' decides where plans come from; this data has no planning "
                           "(set data.planning, or leave plan_source at 'sampled')")
        super().attach_data(data)

    def build_net(self, arch: LCMConfig) -> nn.Module:
        if self.diffusion.tower == "one":
            from lcm.one_tower import OneTowerLCM  # it builds on this module's DiffusionNet

            return OneTowerLCM(arch, self.diffusion)
        return TwoTowerLCM(arch, self.diffusion)

    def compile_targets(self) -> list:
        # the training step calls `encode_context` and `denoise`, not the network's forward: compile the blocks
        return self.net.transformer_blocks()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        ctx, x0 = self._context_and_targets(batch)
        B, T = x0.shape[:2]
        tau = torch.randint(0, self.diffusion.timesteps, (B, T), device=x0.device)
        keep = torch.rand(B, T, device=x0.device) >= self.diffusion.cfg_dropout
        with_context = self.diffusion.context_loss > 0
        pred, context_pred = self._denoised(ctx, x0, tau, torch.randn_like(x0), keep, with_context)
        mask = target_mask(batch["types"], batch.get("doc"))  # (B, T-1): positions with a next concept to predict
        loss = self._loss(pred, x0, batch["types"], mask)
        if with_context:
            context = self._loss(context_pred, x0, batch["types"], mask)
            self.log_dict({"train/x0_loss": loss, "train/context_loss": context}, batch_size=B)
            loss = loss + self.diffusion.context_loss * context
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        return loss

    def _context_error(self, batch: dict, ctx: Context, x0: torch.Tensor) -> torch.Tensor:
        """`context_loss`'s term: the type-weighted MSE of the context head's next-concept regression (Base-LCM's)."""
        return self._loss(self.net.context_prediction(ctx), x0, batch["types"], target_mask(batch["types"], batch.get("doc")))

    def _context_and_targets(self, batch: dict) -> tuple[Context, torch.Tensor]:
        """The network's Context of concepts 0..T-2 and the normalized targets 1..T-1 (B, T-1, D)."""
        xn = self.normalizer.normalize(batch["x"])  # (B, T, D)
        return self.net.encode_context(xn[:, :-1], **packed(batch)), xn[:, 1:]

    def _denoised(self, ctx: Context, x0: torch.Tensor, tau: torch.Tensor, noise: torch.Tensor,
                  keep: torch.Tensor | None, with_context: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x0 predicted for every target from x_τ = √ᾱ_τ x0 + √(1 - ᾱ_τ) noise (B, T, D), and with `with_context` the
        context head's next-concept prediction (B, T, D) from the same pass where the network has one (one-tower).
        tau (B, T) levels; noise like x0; keep (B, T) bool (None: all see context)."""
        a = self.net.abar[tau][..., None]  # (B, T, 1)
        x_tau = a.sqrt() * x0 + (1 - a).sqrt() * noise
        qpos = torch.arange(x0.shape[1], device=x0.device).expand(x0.shape[:2])
        if with_context:
            return self.net.denoise_and_context(ctx, x_tau, tau, qpos, keep)
        return self.net.denoise(ctx, x_tau, tau, qpos, keep), None

    def _denoising_error(self, batch: dict, ctx: Context, x0: torch.Tensor, tau: torch.Tensor,
                         noise: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """The training objective: the position-weighted x0 MSE (`_loss`) of `_denoised`'s predictions."""
        pred = self._denoised(ctx, x0, tau, noise, keep)[0]
        return self._loss(pred, x0, batch["types"], target_mask(batch["types"], batch.get("doc")))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)  # scores of sampled predictions, as Base-LCM's
        self._log_x0_error(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._log_x0_error(batch, batch_idx, "test")

    @torch.no_grad()
    def _log_x0_error(self, batch: dict, batch_idx: int, split: str) -> None:
        """`<split>/x0_mse`: the training objective, teacher-forced, with context, at the fixed noise levels
        `X0_ERROR_LEVELS` and noise seeded by `eval_seed` and the batch: a deterministic score of the denoiser
        itself, which checkpoint selection can monitor (the sampled predictions' loss adds the sampler's noise)."""
        n = int(target_mask(batch["types"], batch.get("doc")).sum())
        if n == 0:
            return
        ctx, x0 = self._context_and_targets(batch)
        generator = torch.Generator().manual_seed(self.eval_seed * 100_003 + batch_idx)
        errors = []
        for share in X0_ERROR_LEVELS:
            tau = torch.full(x0.shape[:2], round(share * (self.diffusion.timesteps - 1)), device=x0.device)
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0)
            errors.append(self._denoising_error(batch, ctx, x0, tau, noise, None))
        self.log(f"{split}/x0_mse", torch.stack(errors).mean(), batch_size=n, on_epoch=True, sync_dist=True)
        if self.diffusion.context_loss > 0:
            self.log(f"{split}/context_mse", self._context_error(batch, ctx, x0), batch_size=n, on_epoch=True,
                     sync_dist=True)

    def _sample_all(self, xn: torch.Tensor, doc: torch.Tensor | None = None,
                    pos: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized concepts (B, T, D) -> a sampled next concept after every position (B, T, D), with the
        inference settings and the fixed `eval_seed` (teacher-forced scores are reproducible). doc / pos
        (B, T): packed windows."""
        return self._sample_context(self.net.encode_context(xn, doc, pos))

    def _sample_context(self, ctx: Context) -> torch.Tensor:
        """`_sample_all` from an encoded Context (its states are (B, T, ·))."""
        B, T = ctx.states.shape[:2]
        generator = torch.Generator().manual_seed(self.eval_seed)
        return self.net.sample(ctx, torch.arange(T, device=ctx.states.device).expand(B, T), generator)

    def _predict(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced predictions as generation makes them: sampled, or at plan positions (the gold next concept
        is a plan: generation knows a paragraph starts there) the context head's when `plan_source` is "regressed"."""
        xn = self.normalizer.normalize(batch["x"])
        ctx = self.net.encode_context(xn[:, :-1], **packed(batch))
        pred = self._sample_context(ctx)  # (B, T-1, D)
        if self.diffusion.plan_source == "regressed":
            plans = (batch["types"][:, 1:] == int(ConceptType.PLAN))[..., None]  # (B, T-1, 1)
            pred = torch.where(plans, self.net.context_prediction(ctx).to(pred.dtype), pred)
        return pred, xn[:, 1:], target_mask(batch["types"], batch.get("doc"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw concepts (B, T, D) -> a sampled raw next concept after every position (B, T, D)."""
        return self.normalizer.denormalize(self._sample_all(self.normalizer.normalize(x)))

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        """Raw concepts (B, T, D) -> the final-layer hidden states of the context positions (B, T, d): the
        contextualizer's (two-tower) or the tower's at the clean concepts (one-tower)."""
        return self.net.context_states(self.net.encode_context(self.normalizer.normalize(x)))

    def denoiser_evals(self, guidance: float | None = None, ddim_steps: int | None = None, eta: float | None = None,
                       plan_source: str | None = None) -> int:
        """Denoiser forward passes per sampled concept: one per DDIM step, two at the steps that run classifier-free
        guidance (the conditional and unconditional passes share one batched call). Keywords as `DiffusionSampling`
        (eta does not change the count; plan_source neither: a regressed plan runs no denoiser pass at all)."""
        scale = self.diffusion.guidance if guidance is None else guidance
        return self.net.denoiser_evals(ddim_steps or self.diffusion.ddim_steps, scale)

    def regresses_plans(self, plan_source: str | None = None) -> bool:
        """Whether plans come from the context head (`plan_source`, default the checkpoint's, is "regressed");
        `LCMError` when this model has no head to regress them with."""
        regressed = (plan_source or self.diffusion.plan_source) == "regressed"
        if regressed and self.diffusion.context_loss == 0:
            raise LCMError("plan_source 'regressed' needs a model trained with diffusion.context_loss > 0")
        return regressed

    def next_concept(self, x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None, *,
                     plan_rows: torch.Tensor | None = None, plan_source: str | None = None,
                     **sampling) -> torch.Tensor:
        """Sampled next concept after each sequence's last position. x (A, T, D) raw -> (A, D) raw.
        `sampling`: ddim_steps, init_noise, guidance, guidance_rescale, eta overrides of the checkpoint's settings
        (generation passes the checked `DiffusionSampling` ones; Base-LCM's `noise` is not an option here).
        plan_rows (A,) bool: rows whose next concept is a plan (a paragraph starts); with `plan_source` (default the
        checkpoint's) "regressed" they get the context head's prediction and are not sampled at all."""
        regressed = self.regresses_plans(plan_source)
        xn = self.normalizer.normalize(x)
        ctx = self.net.encode_context(xn)
        last = (lengths - 1).to(xn.device)
        rows = torch.arange(len(x), device=xn.device)
        plans = plan_rows.to(xn.device) if regressed and plan_rows is not None else torch.zeros_like(rows, dtype=torch.bool)
        pred = torch.empty(len(x), xn.shape[-1], device=xn.device, dtype=xn.dtype)  # (A, D)
        if bool(plans.any()):
            pred[plans] = self.net.context_prediction(ctx)[rows, last][plans].to(pred.dtype)
        if not bool(plans.all()):  # only the rows that are sampled run the sampler (its noise: those rows' only)
            sampled = self.net.sample(ctx.rows(~plans), last[~plans][:, None], generator, **sampling)[:, 0]  # (S, D)
            pred[~plans] = sampled.to(pred.dtype)
        return self.normalizer.denormalize(pred).float()
