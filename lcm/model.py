"""Base-LCM: a pre-norm causal transformer over sentence embeddings (one readable file, nanoGPT style).

input projection (D -> d_model) -> N x [RMSNorm -> causal self-attention -> RMSNorm -> SwiGLU]
-> RMSNorm -> output projection (d_model -> D). It sees normalized concepts and predicts the next one.
The trunk between the projections is Llama's decoder stack: `lcm.llama_weights` copies a `LlamaModel` into it
(rotary pairs and grouped k/v heads converted) and gets the same hidden states.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lcm.errors import ConfigError


@dataclass
class LCMConfig:
    """Architecture of the concept transformer. `embed_dim` is set from the encoder's dimension."""

    embed_dim: int = 384  # D: sentence-encoder dimension (MiniLM: 384, SONAR: 1024)
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    ffn_hidden: int = 0  # 0 -> SwiGLU default: 8/3 * d_model rounded up to a multiple of 64
    max_seq_len: int = 128  # concepts per sequence (the LCM paper wraps documents at 128)
    positions: Literal["rope", "learned"] = "rope"
    dropout: float = 0.1
    rope_base: float = 10000.0
    norm_eps: float = 1e-6  # RMSNorm epsilon (Llama-2/3 use 1e-5: lcm.llama_weights copies need theirs)

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ConfigError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.positions == "rope" and (self.d_model // self.n_head) % 2:
            raise ConfigError("rotary positions need an even head dimension")

    @property
    def ffn_dim(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        return 64 * math.ceil(8 * self.d_model / 3 / 64)


class RMSNorm(nn.RMSNorm):
    """torch's RMSNorm (learned `weight`, fused kernels where available) with this model's eps of 1e-6
    (torch's default is the dtype's machine epsilon). It replaced a hand-written one: same state_dict key,
    bitwise-identical float32 outputs; in bfloat16 / float16 torch rounds once instead of twice."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps=eps)


def rotary_tables(head_dim: int, max_len: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)  # (hd/2,)
    angles = torch.outer(torch.arange(max_len).float(), inv_freq)  # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, hd); cos/sin: (T, hd/2), or (B, 1, T, hd/2) per position. Rotates pairs (x_even, x_odd)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


class KVCache:
    """Keys and values of one attention layer for incremental decoding. k, v: (B, H, T_seen, hd)."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @classmethod
    def holding(cls, k: torch.Tensor, v: torch.Tensor) -> "KVCache":
        """A cache over given keys and values; appending makes new tensors, so k and v stay as they are."""
        cache = cls()
        cache.k, cache.v = k, v
        return cache

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep batch rows `rows` (beam search: the surviving beams' histories)."""
        self.k, self.v = self.k[rows], self.v[rows]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: LCMConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C). With a cache, x holds the positions after the cached ones: either the whole
        prompt (empty cache) or one new position (several with a `mask` over cached + new keys). `rope` tables
        are (T_max, hd/2), or per position (B, 1, T, hd/2) for packed documents; `mask` (B, 1, T, S) bool (True =
        may attend; S keys: cached + new) replaces the plain causal mask then."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
        start = cache.length if cache is not None else 0
        if rope is not None:
            cos, sin = rope if rope[0].dim() == 4 else (rope[0][start:start + T], rope[1][start:start + T])
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            if start and T != 1 and mask is None:
                raise ValueError("a filled KV cache extends one position at a time (or several, with a mask)")
            k, v = cache.append(k, v)  # (B, H, start + T, hd)
        # Flash / memory-efficient kernels where available; right padding needs no extra mask.
        # One new position attends to every cached one: no causal mask then.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=start == 0 and mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, cfg: LCMConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: LCMConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope, cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), rope, cache, mask))
        return x + self.drop(self.mlp(self.norm2(x)))


def init_gpt_weights(module: nn.Module, n_layer: int) -> None:
    """GPT-2 init: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2 * n_layer)."""
    def init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    module.apply(init)  # post-order, as nn.Module.apply always did: keeps seeded inits reproducible
    for name, p in module.named_parameters():
        if name.endswith(("attn.proj.weight", "mlp.down.weight")):
            nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))


class BaseLCM(nn.Module):
    """Maps a sequence of normalized concepts (B, T, D) to next-concept predictions (B, T, D).

    `output=False` leaves out the output projection: the trunk alone (the diffusion model's contextualizer).
    """

    def __init__(self, cfg: LCMConfig, output: bool = True):
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.embed_dim, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.out_proj = nn.Linear(cfg.d_model, cfg.embed_dim) if output else None
        if cfg.positions == "rope":
            cos, sin = rotary_tables(cfg.d_model // cfg.n_head, cfg.max_seq_len, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        init_gpt_weights(self, cfg.n_layer)

    def hidden_states(self, x: torch.Tensor, doc: torch.Tensor | None = None,
                      pos: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, D) normalized concepts -> final-layer hidden states (B, T, d_model).

        Packed windows pass `doc` (B, T), the document of each position (PAD -1 at padding), and `pos`
        (B, T), its position inside that document: attention stays inside a document and positions
        restart at each one."""
        T = x.shape[1]
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {T} concepts exceeds max_seq_len={self.cfg.max_seq_len}")
        if (doc is None) != (pos is None):
            raise ValueError("packed windows need both doc and pos")
        h = self.in_proj(x)
        mask = None
        if doc is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            mask = ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]  # (B, 1, T, T)
        if self.pos_emb is not None:
            h = h + self.pos_emb(pos if pos is not None else torch.arange(T, device=x.device))
            rope = None
        elif pos is not None:
            rope = (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None])  # (B, 1, T, hd/2) each
        else:
            rope = (self.rope_cos, self.rope_sin)
        for block in self.blocks:
            h = block(h, rope, mask=mask)
        return self.norm(h)

    def forward(self, x: torch.Tensor, doc: torch.Tensor | None = None, pos: torch.Tensor | None = None) -> torch.Tensor:
        return self.out_proj(self.hidden_states(x, doc, pos))  # (B, T, D)


class ConceptStepper:
    """Incremental decoding of a `BaseLCM`: the prompts go through the trunk once, then each new concept costs one
    position per row (keys and values cached per layer), instead of re-running the whole context every step.

    Prompts of different lengths are left-padded, so every row's newest position is the last column; padded keys are
    masked out and each row's rotary positions start at 0 at its first real concept, so a row's hidden states equal
    `BaseLCM.hidden_states` of that row alone (up to float rounding; `tests/test_model.py` checks it)."""

    def __init__(self, net: BaseLCM, prompts: list[torch.Tensor]):
        """net: the trunk (eval mode); prompts: per row its normalized concepts (P_b, D), P_b >= 1."""
        if net.pos_emb is not None:
            raise ValueError("incremental decoding needs rotary positions (arch.positions: rope)")
        self.net = net
        lengths = torch.tensor([len(p) for p in prompts], device=prompts[0].device)
        L = int(lengths.max())
        pad = L - lengths  # (B,)
        x = torch.stack([F.pad(p, (0, 0, L - len(p), 0)) for p in prompts])  # (B, L, D) left-padded
        cols = torch.arange(L, device=x.device)
        self.valid = cols[None] >= pad[:, None]  # (B, L) real positions: the keys a query may see
        pos = (cols[None] - pad[:, None]).clamp_min(0)  # (B, L) position inside the row's own sequence
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        # a padded query sees only itself: no all-masked row (NaN), and no real query ever reads it
        mask = (causal & self.valid[:, None, :]) | torch.eye(L, dtype=torch.bool, device=x.device)
        self.caches = [KVCache() for _ in net.blocks]
        self.next_pos = lengths  # (B,) position the next concept takes
        self.last = self._run(x, pos, mask[:, None])[:, -1]  # (B, d) hidden state at each row's last concept

    def _run(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), pos (B, T), mask (B, 1, T, T_keys) -> final-layer hidden states (B, T, d), filling the caches."""
        rope = (self.net.rope_cos[pos][:, None], self.net.rope_sin[pos][:, None])  # (B, 1, T, hd/2) each
        h = self.net.in_proj(x)
        for block, cache in zip(self.net.blocks, self.caches):
            h = block(h, rope, cache, mask)
        return self.net.norm(h)

    def append(self, x: torch.Tensor) -> torch.Tensor:
        """One new normalized concept per row (B, D) -> the hidden state at it (B, d)."""
        if int(self.next_pos.max()) >= self.net.cfg.max_seq_len:
            raise ValueError(f"a row would exceed max_seq_len={self.net.cfg.max_seq_len}")
        self.valid = F.pad(self.valid, (0, 1), value=True)  # (B, S + 1)
        self.last = self._run(x[:, None], self.next_pos[:, None], self.valid[:, None, None, :])[:, -1]
        self.next_pos = self.next_pos + 1
        return self.last

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (finished samples leave the batch)."""
        for cache in self.caches:
            cache.reorder(rows)
        self.valid, self.next_pos, self.last = self.valid[rows], self.next_pos[rows], self.last[rows]

