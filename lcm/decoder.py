"""Embedding -> sentence: a small causal transformer conditioned on the embedding as prefix vectors.

The sentence embedding is projected to `n_prefix` vectors that precede `<bos>` and the tokens
(the zero-step model of vec2text / GEIA). Trained with teacher forcing on the corpus' own sentences
and their frozen-encoder embeddings, optionally with Gaussian noise on the input embedding so that it
also reads imperfect (predicted) embeddings, which the LCM paper found decoders need.
"""
from __future__ import annotations

from dataclasses import asdict

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lcm.errors import LCMError
from lcm.handoff import DataConsumer, SentenceData, check_embed_dim, expect
from lcm.model import Block, KVCache, LCMConfig, RMSNorm, init_gpt_weights, rotary_tables
from lcm.optim import OptimConfig, adamw_warmup_cosine
from lcm.tokenizer import SentenceTokenizer, TokenizerInCheckpoint

MIN_VOCAB = 256 + 3  # byte-level BPE always holds the 256 bytes, plus <pad> <bos> <eos>
DEFAULT_DECODER_ARCH = LCMConfig(d_model=256, n_layer=4, n_head=4, max_seq_len=96, dropout=0.1)


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm: the decoder reads directions (predicted vectors' norms drift)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)


class CausalTokenStack(nn.Module):
    """Token embedding, the pre-norm causal blocks of `lcm.model` with rotary positions, a final norm and an
    output head tied to the embedding: the GPT shared by the sentence decoder and the token baseline."""

    def __init__(self, cfg: LCMConfig, vocab_size: int):
        super().__init__()
        if cfg.positions != "rope":
            raise LCMError("token models use rotary positions (arch.positions: rope)")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model)
        cos, sin = rotary_tables(cfg.d_model // cfg.n_head, cfg.max_seq_len, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        init_gpt_weights(self, cfg.n_layer)

    def _blocks(self, h: torch.Tensor, caches: list[KVCache] | None) -> torch.Tensor:
        """Input vectors (B, T, d) -> final-layer hidden states (B, T, d); with caches, T follows the cached
        positions (the whole prompt into empty caches, or one new position)."""
        for i, block in enumerate(self.blocks):
            h = block(h, (self.rope_cos, self.rope_sin), caches[i] if caches is not None else None)
        return self.norm(h)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.tok_emb.weight.T  # (..., d) -> (..., V)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L) -> next-token logits (B, L, V), no cache: the training pass (what `compile` compiles)."""
        return self.head(self._blocks(self.tok_emb(tokens), None))

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]


class PrefixDecoder(CausalTokenStack):
    """(unit embedding (B, D), tokens (B, L) starting with <bos>) -> next-token logits (B, L, V).

    Sequence = [prefix_1 .. prefix_P, <bos>, t_1, ...]; causal self-attention (the transformer blocks of
    `lcm.model`); the output head is tied to the token embedding.

    With `n_slots` > 0 the embedding is also read as n_slots slots of D / n_slots (the slots code of
    `lcm.encoders.autoencoder`: slot j holds the sentence's token j in context) and slot j is added to the input
    at position j of [<bos>, t_1, ...] -- the position that predicts token j -- so the decoder reads each token's
    slot where it writes the token instead of finding it by attention; positions past the last slot add nothing.
    """

    def __init__(self, cfg: LCMConfig, vocab_size: int, n_prefix: int, n_slots: int = 0):
        super().__init__(cfg, vocab_size)
        if n_slots < 0 or (n_slots and cfg.embed_dim % n_slots):
            raise LCMError(f"n_slots={n_slots} must be >= 0 and divide the embedding dimension {cfg.embed_dim}")
        self.n_prefix, self.n_slots = n_prefix, n_slots
        self.prefix = nn.Linear(cfg.embed_dim, n_prefix * cfg.d_model)
        init_gpt_weights(self.prefix, cfg.n_layer)
        if n_slots:
            self.slot_in = nn.Linear(cfg.embed_dim // n_slots, cfg.d_model)
            init_gpt_weights(self.slot_in, cfg.n_layer)

    @property
    def max_tokens(self) -> int:
        """Tokens after the prefix, <bos> included."""
        return self.cfg.max_seq_len - self.n_prefix

    def token_inputs(self, emb: torch.Tensor, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Input vectors (B, L, d) of tokens (B, L) at positions start.. of [<bos>, t_1, ...]: their embeddings, plus
        their slots when the decoder reads slots."""
        h = self.tok_emb(tokens)
        if self.n_slots and start < self.n_slots:
            slots = self.slot_in(emb.view(len(emb), self.n_slots, -1)[:, start: start + tokens.shape[1]])  # (B, <=L, d)
            h = h + F.pad(slots, (0, 0, 0, tokens.shape[1] - slots.shape[1]))
        return h

    def forward(self, emb: torch.Tensor, tokens: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        B, L = tokens.shape
        if L > self.max_tokens:
            raise ValueError(f"{L} tokens exceed the decoder's {self.max_tokens} (arch.max_seq_len - n_prefix)")
        prefix = self.prefix(emb).view(B, self.n_prefix, self.cfg.d_model)  # (B, P, d)
        h = self._blocks(torch.cat([prefix, self.token_inputs(emb, tokens)], dim=1), caches)  # (B, P+L, d)
        return self.head(h[:, self.n_prefix:])  # (B, L, V)

    def next_logits(self, emb: torch.Tensor, tokens: torch.Tensor, caches: list[KVCache] | None) -> torch.Tensor:
        """Logits (B, V) of the token after `tokens` (B, L). With KV caches (one per block, filled by the
        previous calls), only the newest token is run through the blocks; without, the whole sequence."""
        if caches is None:
            return self(emb, tokens)[:, -1]
        if caches[0].length == 0:
            return self(emb, tokens, caches)[:, -1]  # prefill: prefix + tokens so far
        h = self._blocks(self.token_inputs(emb, tokens[:, -1:], tokens.shape[1] - 1), caches)  # (B, 1, d)
        return self.head(h[:, -1])


@torch.no_grad()
def greedy_decode(net: PrefixDecoder, emb: torch.Tensor, bos: int, eos: int, max_new: int,
                  use_cache: bool = True) -> list[list[int]]:
    """emb (B, D) unit -> token ids per row (without bos/eos). Batched; a KV cache makes each step run
    one position (`use_cache=False` re-runs the whole sequence: the reference the cache must equal)."""
    B = emb.shape[0]
    tokens = torch.full((B, 1), bos, dtype=torch.long, device=emb.device)
    done = torch.zeros(B, dtype=torch.bool, device=emb.device)
    caches = net.new_caches() if use_cache else None
    for _ in range(min(max_new, net.max_tokens - 1)):
        nxt = net.next_logits(emb, tokens, caches).argmax(-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= nxt == eos
        if bool(done.all()):
            break
    return [_strip(row, eos) for row in tokens[:, 1:].tolist()]


@torch.no_grad()
def beam_decode(net: PrefixDecoder, emb: torch.Tensor, bos: int, eos: int, max_new: int, beam: int,
                length_penalty: float = 1.0, use_cache: bool = True) -> list[list[list[int]]]:
    """emb (B, D) unit -> per row, `beam` hypotheses (token ids) best first, ranked by
    log-probability / length**length_penalty. All rows and beams go through one forward per step."""
    B, W = emb.shape[0], beam
    V = net.tok_emb.num_embeddings
    emb_w = emb.repeat_interleave(W, dim=0)  # (B*W, D)
    tokens = torch.full((B * W, 1), bos, dtype=torch.long, device=emb.device)
    scores = torch.full((B, W), float("-inf"), device=emb.device)
    scores[:, 0] = 0.0  # one live beam at the start, so the first expansion has no duplicates
    lengths = torch.zeros(B, W, device=emb.device)
    done = torch.zeros(B, W, dtype=torch.bool, device=emb.device)
    caches = net.new_caches() if use_cache else None
    for _ in range(min(max_new, net.max_tokens - 1)):
        logp = F.log_softmax(net.next_logits(emb_w, tokens, caches).float(), dim=-1).view(B, W, V)
        # a finished beam only extends with <eos> at no cost, so it keeps its score
        frozen = torch.full((V,), float("-inf"), device=emb.device)
        frozen[eos] = 0.0
        logp = torch.where(done[..., None], frozen, logp)
        top, flat = (scores[..., None] + logp).view(B, W * V).topk(W, dim=-1)  # (B, W)
        src, tok = flat // V, flat % V
        rows = (torch.arange(B, device=emb.device)[:, None] * W + src).view(-1)
        tokens = torch.cat([tokens[rows], tok.view(-1, 1)], dim=1)
        for cache in caches or []:
            cache.reorder(rows)
        was_done = done.gather(1, src)
        lengths = lengths.gather(1, src) + (~was_done).float()
        done = was_done | (tok == eos)
        scores = top
        if bool(done.all()):
            break
    ranked = (scores / lengths.clamp_min(1) ** length_penalty).argsort(dim=-1, descending=True)  # (B, W)
    seqs = tokens[:, 1:].view(B, W, -1)
    return [[_strip(seqs[b, w].tolist(), eos) for w in ranked[b].tolist() if scores[b, w] > float("-inf")]
            for b in range(B)]


def _strip(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


class SentenceDecoderLM(TokenizerInCheckpoint, DataConsumer, L.LightningModule):
    """Trains the embedding -> sentence decoder with teacher forcing (`lcm fit -c train/configs/decoder_*.yaml`).

    Args:
        arch: transformer shape; `max_seq_len` = n_prefix + 1 (<bos>) + the longest token sequence;
            `embed_dim` must equal the encoder's dimension.
        vocab_size: byte-level BPE vocabulary, trained on the training split's sentences at fit start.
        n_prefix: prefix vectors the embedding is projected to.
        noise_std: training-time input noise: each embedding gets Gaussian noise of norm ~sigma, sigma drawn
            uniformly from [0, noise_std] per sentence (0 = off). A noise of norm s on a unit vector leaves
            cosine ~ 1/sqrt(1 + s^2) to the clean one: 0.5 covers predictions at cosine 0.9.
        max_new_tokens: cap on generated tokens at validation.
        split_digits: the tokenizer spells numbers digit by digit (`SentenceTokenizer.train`).
        optim: AdamW + warmup/cosine (`lcm.optim.OptimConfig`, as for the concept model).
    """

    KIND, WHAT, TRAIN_HINT = "decoder", "sentence-decoder", "lcm fit -c train/configs/decoder_quickstart.yaml"

    def __init__(self, arch: LCMConfig = DEFAULT_DECODER_ARCH, vocab_size: int = 4096, n_prefix: int = 4,
                 noise_std: float = 0.0, max_new_tokens: int = 64, optim: OptimConfig = OptimConfig(),
                 split_digits: bool = False):
        super().__init__()
        if isinstance(arch, dict):  # from a checkpoint's hyperparameters
            arch = LCMConfig(**arch)
        if vocab_size < MIN_VOCAB:
            raise LCMError(f"vocab_size={vocab_size} is below the {MIN_VOCAB} byte-level tokens + specials; use >= {MIN_VOCAB}")
        if n_prefix < 1 or arch.max_seq_len < n_prefix + 2:
            raise LCMError(f"n_prefix={n_prefix} and arch.max_seq_len={arch.max_seq_len} leave no room for tokens")
        self.optim = OptimConfig.of(optim)
        self.save_hyperparameters({"arch": asdict(arch), "vocab_size": vocab_size, "n_prefix": n_prefix,
                                   "noise_std": noise_std, "max_new_tokens": max_new_tokens,
                                   "optim": self.optim.hparams(), "split_digits": split_digits})
        self.arch = arch
        self.net = PrefixDecoder(arch, vocab_size, n_prefix)
        self.tokenizer: SentenceTokenizer | None = None
        self.meta: dict = {}

    # ---- wiring to the data ----------------------------------------------------------------------
    def attach_data(self, data: SentenceData) -> None:
        """Take the encoder record and the training sentences (`SentenceDataModule.setup` hands them over); the
        tokenizer is trained here unless a resumed checkpoint brings one (`on_load_checkpoint`)."""
        expect(data, SentenceData, type(self).__name__, "lcm.train.SentenceDataModule")
        self.check_data_encoder(data.encoder)
        self.keep_data(data)
        if self.tokenizer is None:
            texts = data.train_texts()
            self.tokenizer = SentenceTokenizer.train(texts, self.hparams.vocab_size,
                                                     split_digits=self.hparams.get("split_digits", False))
            self.meta = {**data.encoder.meta(), "kind": self.KIND}
            cut = sum(len(x) + 2 > self.net.max_tokens for x in self.tokenizer.encode(texts))  # + <bos>, <eos>
            if cut:
                rank_zero_warn(f"{cut} of {len(texts)} training sentences exceed the decoder's {self.net.max_tokens} "
                               "tokens and are cut without <eos> (logged as train/truncated); raise arch.max_seq_len")

    def check_data_encoder(self, encoder) -> None:
        """The data's encoder wrote the embeddings this decoder reads: its dimension must be the decoder's."""
        check_embed_dim(encoder, self.arch.embed_dim)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if bool(self.hparams.get("split_digits", False)) != self.tokenizer.splits_digits:  # a resume that changed it
            raise LCMError(f"split_digits is {self.hparams.get('split_digits', False)} but the checkpoint's tokenizer was "
                           f"trained with split_digits {self.tokenizer.splits_digits}: keep the checkpoint's setting")

    def check_record(self, meta: dict) -> None:
        if self.data is not None and meta.get("encoder_id") != self.data.encoder.id:
            raise LCMError(f"decoder checkpoint was trained with encoder {meta.get('encoder_id')!r}, "
                           f"the data config uses {self.data.encoder.id!r}")

    # ---- steps -----------------------------------------------------------------------------------
    def _batch_tokens(self, texts: list[str]) -> tuple[torch.Tensor, int]:
        """texts -> (B, L) [bos, tokens..., eos, pad...] truncated to the decoder's length; also the count
        of truncated sentences."""
        tok, cap = self.tokenizer, self.net.max_tokens
        ids = [[tok.bos_id, *x, tok.eos_id] for x in tok.encode(texts)]
        truncated = sum(len(x) > cap for x in ids)
        ids = [x[:cap] for x in ids]
        out = torch.full((len(ids), max(map(len, ids))), tok.pad_id, dtype=torch.long)
        for b, x in enumerate(ids):
            out[b, : len(x)] = torch.tensor(x)
        return out.to(self.device), truncated

    def _noisy(self, emb: torch.Tensor) -> torch.Tensor:
        x = unit(emb.float())
        if self.training and self.hparams.noise_std > 0:
            sigma = torch.rand(x.shape[0], 1, device=x.device) * self.hparams.noise_std  # (B, 1)
            x = unit(x + sigma * torch.randn_like(x) / x.shape[1] ** 0.5)
        return x

    def _loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """-> cross-entropy, token accuracy, scored tokens, and how many sentences of the batch were cut at the
        decoder's length (they lose their <eos>: the model never learns where they end)."""
        tokens, truncated = self._batch_tokens(batch["text"])
        logits = self.net(self._noisy(self.embedding_of(batch)), tokens[:, :-1])  # (B, L-1, V)
        target = tokens[:, 1:]
        loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=self.tokenizer.pad_id)
        keep = target != self.tokenizer.pad_id
        acc = (logits.argmax(-1) == target)[keep].float().mean()
        return loss, acc, keep.sum(), truncated

    def embedding_of(self, batch: dict) -> torch.Tensor:
        """(B, D) the embeddings the decoder reads for a batch's sentences: the data encoder's."""
        return batch["emb"]

    def sequence_lengths(self, batch: dict) -> torch.Tensor:
        """(B,) positions each sentence feeds the decoder: its prefix vectors, <bos> and its tokens (not <eos>, which
        predicts nothing; `lcm.train.cost`)."""
        tokens, _ = self._batch_tokens(batch["text"])
        return self.net.n_prefix + (tokens != self.tokenizer.pad_id).sum(1) - 1

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, acc, n, truncated = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=int(n))
        self.log("train/truncated", truncated / len(batch["text"]), batch_size=len(batch["text"]))
        return loss

    def predict_step(self, batch: dict, batch_idx: int) -> None:
        raise LCMError("lcm predict writes teacher-forced concept predictions: it is for concept models, not "
                       "the sentence decoder")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    @torch.no_grad()
    def _evaluate(self, batch: dict, batch_idx: int, split: str) -> None:
        loss, acc, n, truncated = self._loss(batch)
        self.log(f"{split}/loss", loss, batch_size=int(n), on_epoch=True, prog_bar=True, sync_dist=True)
        # share of sentences longer than the decoder can hold (cut, without <eos>): raise arch.max_seq_len if > 0
        self.log(f"{split}/truncated", truncated / len(batch["text"]), batch_size=len(batch["text"]), on_epoch=True,
                 sync_dist=True)
        self.log(f"{split}/token_acc", acc, batch_size=int(n), on_epoch=True, sync_dist=True)
        if batch_idx < 2:  # exact match of greedy decoding on the first two batches (sentences held out)
            texts = self.decode_texts(self.embedding_of(batch))
            exact = np.mean([a == b for a, b in zip(texts, batch["text"])])
            self.log(f"{split}/exact_match", float(exact), batch_size=len(texts), on_epoch=True, sync_dist=True)

    # ---- inference -------------------------------------------------------------------------------
    @torch.no_grad()
    def decode_texts(self, emb: torch.Tensor | np.ndarray, beam: int = 1,
                     max_new_tokens: int | None = None) -> list[str] | list[list[str]]:
        """Embeddings (N, D) -> N sentences (greedy, beam=1) or N lists of `beam` hypotheses, best first."""
        if self.tokenizer is None:
            raise LCMError("the decoder has no tokenizer: train it with `lcm fit` or load a checkpoint")
        x = torch.as_tensor(np.asarray(emb, dtype=np.float32) if isinstance(emb, np.ndarray) else emb)
        if x.ndim != 2 or x.shape[1] != self.arch.embed_dim:
            raise LCMError(f"decoder expects embeddings of shape (N, {self.arch.embed_dim}), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise LCMError("embedding to decode contains NaN/inf")
        x = unit(x.float().to(self.device))
        tok, max_new = self.tokenizer, max_new_tokens or self.hparams.max_new_tokens
        if beam <= 1:
            return tok.decode(greedy_decode(self.net, x, tok.bos_id, tok.eos_id, max_new))
        hyps = beam_decode(self.net, x, tok.bos_id, tok.eos_id, max_new, beam)
        return [tok.decode(h) for h in hyps]

    # ---- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.optim)
