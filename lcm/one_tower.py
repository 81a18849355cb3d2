"""One-tower diffusion LCM (LCM paper, section 2.3.3): one causal transformer reads the clean concepts and the
noisy next concepts together and predicts each noisy one's clean x0.

The paper interleaves the sequence [x_0, x̃_1, x_1, x̃_2, ...]: a clean concept attends to the clean concepts
before it, a noisy x̃_t+1 to the clean x_0..x_t and to itself, never to another noisy one. Clean positions never
see noisy ones, so their states do not depend on them, and attention only sees positions through the mask and
the rotary angles: the same network on [x_0 .. x_T-1, x̃_q1 .. x̃_qQ] with that mask and those positions gives the
same outputs as the interleaved layout. That layout is used here: the clean prefix once, then any number of noisy
queries (a query after every position in training and teacher-forced validation, one per sequence in
generation). A query for concept t+1 sits at rotary position t+1 (the position of the concept it becomes) and
adds the noise level's embedding (sinusoidal -> MLP) to its input projection; a query that drops the context
(classifier-free guidance) attends to itself only.

The tower is a Base-LCM (`lcm.model.BaseLCM`: input projection, Llama-style blocks, RMSNorm, output
projection), so its weights have Base-LCM's layout, and its states at the clean positions are exactly a Base-LCM's
hidden states. Sampling runs the clean prefix once per concept and keeps its keys and values (they never depend on
the queries): each DDIM step then runs only the one query per sequence.
"""
from __future__ import annotations

import torch
from torch import nn

from lcm.diffusion import Context, DiffusionConfig, DiffusionNet, query_visibility, timestep_embedding
from lcm.model import BaseLCM, KVCache, LCMConfig, rotary_tables


class OneTowerLCM(DiffusionNet):
    """One Base-LCM tower over clean concepts and noisy queries -> x0 of each query."""

    def __init__(self, cfg: LCMConfig, diffusion: DiffusionConfig):
        super().__init__(cfg, diffusion)
        d = cfg.d_model
        self.tower = BaseLCM(cfg)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        if cfg.positions == "rope":  # one more position than the tower's: a query after a full-length context
            cos, sin = rotary_tables(d // cfg.n_head, cfg.max_seq_len + 1, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def encode_context(self, xn: torch.Tensor, doc: torch.Tensor | None = None,
                       pos: torch.Tensor | None = None) -> Context:
        """The clean normalized concepts themselves (B, T, D): the tower reads them again with every query."""
        return Context(xn, doc, pos)

    def context_states(self, ctx: Context) -> torch.Tensor:
        """(B, T, d) final-layer states at the clean positions: a Base-LCM's hidden states of the same tower."""
        return self.tower.hidden_states(ctx.states, ctx.doc, ctx.pos)

    def context_prediction(self, ctx: Context) -> torch.Tensor:
        """The tower read as the Base-LCM it is (its output projection at the clean positions). Training gets it from
        `denoise`'s own pass (`denoise_and_context`): the clean positions' states there are these."""
        return self.tower.out_proj(self.context_states(ctx))

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.tower.blocks)

    def for_sampling(self, ctx: Context) -> Context:
        """The clean prefix through the tower once, its keys and values kept per layer: clean positions never see
        the queries, so every denoising step reuses them and runs only its queries (`denoise`)."""
        if ctx.kv is not None:
            return ctx
        clean, tower = ctx.states, self.tower
        B, T = clean.shape[:2]
        pos = self.positions(ctx, torch.zeros(B, 0, dtype=torch.long, device=clean.device))  # (B, T)
        h, rope = self._inputs(tower.in_proj(clean), pos)
        mask = query_mask(T, pos[:, :0], ctx.doc, None)  # (B, 1, T, T): causal (within a document)
        caches = [KVCache() for _ in tower.blocks]
        for block, cache in zip(tower.blocks, caches):
            h = block(h, rope, cache, mask)
        return Context(ctx.states, ctx.doc, ctx.pos, [(c.k, c.v) for c in caches])

    def _inputs(self, h: torch.Tensor, positions: torch.Tensor):
        """Input vectors (B, S, d) at `positions` (B, S) -> (vectors with learned positions added, rotary tables
        (B, 1, S, hd/2) each or None)."""
        if self.tower.pos_emb is not None:
            return h + self.tower.pos_emb(positions), None
        return h, (self.rope_cos[positions][:, None], self.rope_sin[positions][:, None])

    def denoise(self, ctx: Context, x_tau: torch.Tensor, tau: torch.Tensor, qpos: torch.Tensor,
                keep: torch.Tensor | None) -> torch.Tensor:
        """As `DiffusionNet.denoise`: the tower over [clean (T), queries (Q)] with `query_mask`; x0 (B, Q, D). With
        the prefix cached (`for_sampling`), only the queries run, attending to the cached clean keys and values."""
        if ctx.kv is None:
            return self.denoise_and_context(ctx, x_tau, tau, qpos, keep)[0]
        T = ctx.states.shape[1]
        queries, positions, mask = self._queries(ctx, x_tau, tau, qpos, keep)
        h, rope = self._inputs(queries, positions[:, T:])  # the query rows of the mask, over cached + query keys
        for block, (k, v) in zip(self.tower.blocks, ctx.kv):
            h = block(h, rope, KVCache.holding(k, v), mask[:, :, T:])
        return self.tower.out_proj(self.tower.norm(h))

    def denoise_and_context(self, ctx: Context, x_tau: torch.Tensor, tau: torch.Tensor, qpos: torch.Tensor,
                            keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`denoise` and `context_prediction` from one pass over [clean, queries]: clean positions never see the
        queries, so their outputs there are the context head's (no second pass over the prefix). (B, Q, D), (B, T, D)"""
        tower, T = self.tower, ctx.states.shape[1]
        queries, positions, mask = self._queries(ctx, x_tau, tau, qpos, keep)
        h, rope = self._inputs(torch.cat([tower.in_proj(ctx.states), queries], dim=1), positions)  # (B, T + Q, d)
        for block in tower.blocks:
            h = block(h, rope, mask=mask)
        out = tower.out_proj(tower.norm(h))
        return out[:, T:], out[:, :T]

    def _queries(self, ctx: Context, x_tau: torch.Tensor, tau: torch.Tensor, qpos: torch.Tensor,
                 keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The queries' input vectors (B, Q, d: noisy concept + noise-level embedding), the positions of [clean,
        queries] (B, T + Q) and `query_mask` (B, 1, T + Q, T + Q)."""
        T = ctx.states.shape[1]
        positions = self.positions(ctx, qpos)
        limit = self.cfg.max_seq_len + (self.tower.pos_emb is None)  # rotary tables have one more position
        if T > self.cfg.max_seq_len or int(positions.max()) >= limit:
            raise ValueError(f"a context of {T} concepts and its queries exceed max_seq_len={self.cfg.max_seq_len}")
        temb = self.time_mlp(timestep_embedding(tau, self.cfg.d_model).to(ctx.states.dtype))  # (B, Q, d)
        return self.tower.in_proj(x_tau.to(ctx.states.dtype)) + temb, positions, query_mask(T, qpos, ctx.doc, keep)

    @staticmethod
    def positions(ctx: Context, qpos: torch.Tensor) -> torch.Tensor:
        """(B, T + Q) rotary / learned positions: each clean concept's (its position in its document when packed),
        then each query's: one after the context position it follows."""
        B, T = ctx.states.shape[:2]
        clean = ctx.pos if ctx.pos is not None else torch.arange(T, device=qpos.device).expand(B, T)
        return torch.cat([clean, clean.gather(1, qpos) + 1], dim=1)


def query_mask(T: int, qpos: torch.Tensor, doc: torch.Tensor | None, keep: torch.Tensor | None) -> torch.Tensor:
    """(B, 1, T + Q, T + Q) bool, True = may attend: clean positions causal among themselves (within their document
    when packed) and blind to queries; query q sees the clean positions 0..qpos[q] of its document (none when
    keep[q] is False) and itself. qpos (B, Q); doc (B, T) or None; keep (B, Q) or None (all keep)."""
    B, Q = qpos.shape
    device = qpos.device
    idx = torch.arange(T, device=device)
    clean = (idx[None, :, None] >= idx[None, None, :]).expand(B, T, T)  # (B, T, T) causal
    if doc is not None:
        clean = clean & (doc[:, :, None] == doc[:, None, :])
    sees = query_visibility(T, qpos, doc, keep)  # (B, Q, T): as the two-tower denoiser's queries see the context
    top = torch.cat([clean, torch.zeros(B, T, Q, dtype=torch.bool, device=device)], dim=2)  # (B, T, T + Q)
    bottom = torch.cat([sees, torch.eye(Q, dtype=torch.bool, device=device).expand(B, Q, Q)], dim=2)  # (B, Q, T + Q)
    return torch.cat([top, bottom], dim=1)[:, None]
