"""The encoding side of a sentence autoencoder trained with `lcm fit` (`lcm.autoencoder.SentenceAutoencoderLM`), as a
frozen `Encoder`: byte-level BPE tokens -> a bidirectional transformer -> a pool over the tokens (their mean,
`n_queries` learned queries attending to them, or `n_slots` positional slots) -> a linear bottleneck -> unit L2
norm. Its decoding side (the prefix decoder of `lcm.decoder`) reads the same vectors back to text.

The network is written with torch's own `nn.TransformerEncoder` (this floor sits below the models of `lcm/`), and
the checkpoint is read with `torch.load(weights_only=True)`: tensors and plain values only, no pickled code.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lcm.encoders.base import Encoder
from lcm.errors import ConfigError, LCMError

KIND = "autoencoder"  # the `lcm` record's kind in an autoencoder checkpoint
POOLS = ("mean", "attention", "slots")


@dataclass
class SentenceEncoderConfig:
    """Shape of the encoding side. `dim` is the concept space's dimension (the bottleneck)."""

    dim: int = 256
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    max_tokens: int = 64  # tokens read per sentence (longer ones are cut)
    dropout: float = 0.1
    # "mean": the mean of the token states; "attention": `n_queries` learned queries attend to the token states and
    # their outputs, concatenated, feed the bottleneck -- each query can pick its own positions (a number's digits)
    # where a mean superposes every position in one vector
    # "slots": the states of the first `n_slots` token positions, each projected to dim / n_slots and concatenated
    # (positions past the sentence's end are zero): a code that keeps word order, where each slot is contextual (it
    # can carry its neighbours), so sentences longer than n_slots still fit
    pool: str = "mean"
    n_queries: int = 4
    n_slots: int = 32

    def __post_init__(self) -> None:
        if self.dim < 1 or self.d_model % self.n_head or self.max_tokens < 1:
            raise ConfigError(f"need dim >= 1, d_model divisible by n_head and max_tokens >= 1 (got {asdict(self)})")
        if self.pool not in POOLS or self.n_queries < 1:
            raise ConfigError(f"pool must be one of {', '.join(POOLS)} and n_queries >= 1 (got {self.pool!r}, {self.n_queries})")
        if self.pool == "slots" and (self.n_slots < 1 or self.dim % self.n_slots or self.n_slots > self.max_tokens):
            raise ConfigError(f"pool 'slots' needs dim divisible by n_slots and 1 <= n_slots <= max_tokens "
                             f"(got dim {self.dim}, n_slots {self.n_slots}, max_tokens {self.max_tokens})")


class SentenceEncoderNet(nn.Module):
    """tokens (B, L) with padding id `pad` (the tokenizer's; BPE training gives <pad> id 0) -> unit embeddings (B, dim)."""

    def __init__(self, cfg: SentenceEncoderConfig, vocab_size: int, pad: int = 0):
        super().__init__()
        self.cfg, self.pad = cfg, pad
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_tokens, cfg.d_model)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_head, 4 * cfg.d_model, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.n_layer, norm=nn.LayerNorm(cfg.d_model), enable_nested_tensor=False)
        pooled = cfg.d_model
        if cfg.pool == "attention":
            self.queries = nn.Parameter(torch.randn(cfg.n_queries, cfg.d_model) * cfg.d_model ** -0.5)
            self.pool_attn = nn.MultiheadAttention(cfg.d_model, cfg.n_head, batch_first=True)
            pooled = cfg.n_queries * cfg.d_model
        # slots: one projection shared by every position (the position embedding tells them apart)
        self.out = nn.Linear(cfg.d_model, cfg.dim // cfg.n_slots) if cfg.pool == "slots" else nn.Linear(pooled, cfg.dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens[:, : self.cfg.max_tokens]
        real = tokens != self.pad  # (B, L)
        real[~real.any(1), 0] = True  # an empty sentence reads its one pad position (all-masked attention is NaN)
        h = self.tok_emb(tokens) + self.pos_emb(torch.arange(tokens.shape[1], device=tokens.device))
        h = self.layers(h, src_key_padding_mask=~real)  # (B, L, d)
        if self.cfg.pool == "slots":
            z = self.slots(h, real)
        elif self.cfg.pool == "attention":
            q = self.queries.expand(len(h), -1, -1)  # (B, Q, d)
            z = self.out(self.pool_attn(q, h, h, key_padding_mask=~real, need_weights=False)[0].flatten(1))  # (B, Q*d)
        else:
            z = self.out((h * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp_min(1))  # mean over real tokens
        return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    def slots(self, h: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """States (B, L, d) and real-token mask (B, L) -> (B, dim): the first n_slots positions projected and
        concatenated; a slot past the sentence's end is zero, so the code does not depend on the batch's padding."""
        n = self.cfg.n_slots
        h, real = h[:, :n], real[:, :n]
        s = self.out(h) * real[..., None]  # (B, min(L, n), dim / n)
        return F.pad(s, (0, 0, 0, n - s.shape[1])).flatten(1)  # (B, n * dim / n)


def pad_batch(ids: list[list[int]], pad: int) -> torch.Tensor:
    """Token id lists -> (B, max length) padded with `pad` (at least one column)."""
    out = torch.full((len(ids), max([1, *map(len, ids)])), pad, dtype=torch.long)
    for b, x in enumerate(ids):
        out[b, : len(x)] = torch.tensor(x, dtype=torch.long)
    return out


def autoencoder_id(encoder_state: dict[str, torch.Tensor], tokenizer_json: str) -> str:
    """The concept space's id: a hash of the encoding side's weights and tokenizer (new weights, new id), so the
    embedding cache, banks and checkpoints never mix vectors of two autoencoders."""
    h = hashlib.sha256(tokenizer_json.encode())
    for name in sorted(encoder_state):
        h.update(name.encode())
        h.update(encoder_state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return f"autoencoder-{h.hexdigest()[:16]}"


def encoder_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoding side's weights (`encoder.*`) of an autoencoder checkpoint's state_dict, without the prefix."""
    return {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}


class AutoencoderEncoder(Encoder):
    """The encoding side of an `lcm fit` sentence-autoencoder checkpoint (`data.encoder: {class_path:
    lcm.encoders.AutoencoderEncoder, init_args: {checkpoint: PATH}}`).

    Args:
        checkpoint: the autoencoder checkpoint (`runs/<name>/version_N/checkpoints/best.ckpt`).
        device: where it encodes.
    """

    def __init__(self, checkpoint: str, device: str = "cpu"):
        self.checkpoint, self.device = str(checkpoint), device

    def init_args(self) -> dict:
        return {"checkpoint": self.checkpoint, "device": self.device}

    @cached_property
    def _loaded(self) -> tuple[SentenceEncoderNet, object, str]:
        from tokenizers import Tokenizer

        path = Path(self.checkpoint)
        if not path.is_file():
            raise LCMError(f"no autoencoder checkpoint at {path} "
                           "(train one: lcm fit -c train/configs/autoencoder_quickstart.yaml)")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
            raise LCMError(f"{path} is not a loadable checkpoint ({type(e).__name__})") from e
        record = ckpt.get("lcm") or {}
        if record.get("kind") != KIND or not record.get("tokenizer"):
            raise LCMError(f"{path} is not a sentence-autoencoder checkpoint (its record kind is {record.get('kind')!r})")
        hp = ckpt["hyper_parameters"]
        tok = Tokenizer.from_str(record["tokenizer"])
        net = SentenceEncoderNet(SentenceEncoderConfig(**hp["encoder"]), hp["vocab_size"], tok.token_to_id("<pad>"))
        state = encoder_state(ckpt["state_dict"])
        net.load_state_dict(state)
        return net.eval().to(self.device), tok, autoencoder_id(state, record["tokenizer"])

    @property
    def id(self) -> str:
        return self._loaded[2]

    @property
    def dim(self) -> int:
        return self._loaded[0].cfg.dim

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        net, tok, _ = self._loaded
        pad = tok.token_to_id("<pad>")
        out = []
        for i in range(0, len(texts), batch_size):
            ids = [e.ids for e in tok.encode_batch(list(texts[i:i + batch_size]), add_special_tokens=False)]
            out.append(net(pad_batch(ids, pad).to(self.device)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
