"""Token baseline: a GPT on the same documents rendered as text, with sampling and Soft Thinking.

The network is the same stack of transformer blocks as the concept model (`lcm.model`), with a byte-level
BPE tokenizer trained on the training split (`lcm.tokenizer`) and an output head tied to the embedding.
Trained by the same CLI: `lcm fit -c train/configs/token_baseline.yaml`. The loss covers the solution
tokens only (the prompt is given), as the concept model's loss covers only step positions.

Generation (`TokenLM.generate`) runs the k samples of a problem as one batch with a KV cache:
- mode "sample": temperature and nucleus (top-p) sampling; "greedy": argmax.
- mode "soft" (Soft Thinking, Zhang et al. 2025): each next input is the probability-weighted token
  embedding (top-k 30, top-p 0.95, renormalized) instead of one token; the text shown is the argmax
  token. When the entropy stays below `cold_stop_entropy` for `cold_stop_patience` tokens in a row, the
  row stops thinking softly and finishes with discrete (greedy) tokens. Deterministic.
Each sample records per-token entropy (temperature 1), the final-layer hidden states, and the network
evaluations it cost.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from lcm.compile import CompileOnFit
from lcm.decoder import MIN_VOCAB, CausalTokenStack
from lcm.errors import LCMError
from lcm.handoff import DataConsumer, TextData, expect
from lcm.metrics import token_entropy
from lcm.model import LCMConfig
from lcm.optim import OptimConfig, adamw_warmup_cosine
from lcm.tokenizer import SentenceTokenizer, TokenizerInCheckpoint

DEFAULT_TOKEN_ARCH = LCMConfig(d_model=256, n_layer=4, n_head=4, max_seq_len=512, dropout=0.1)


@dataclass
class TokenSample:
    text: str
    token_ids: list[int]  # generated tokens without the final <eos>
    entropies: np.ndarray  # (n,) nats at temperature 1, one per generated token (<eos> included)
    hidden: np.ndarray  # (n, d) final-layer hidden state that produced each token
    forward_passes: int  # network evaluations: the prompt prefill + one per generated token after the first
    stop_reason: Literal["eos", "max_tokens"] = "eos"
    soft_tokens: int = 0  # Soft Thinking: tokens produced in soft mode (before a cold stop)
    token_texts: list[str] = field(default_factory=list)  # (n,) each generated token as text, "<eos>" included


def nucleus(probs: torch.Tensor, top_p: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """Keep the most likely tokens up to cumulative mass `top_p` (and at most `top_k`), renormalized. (B, V)"""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the first token is always kept
    if top_k > 0:
        keep[:, top_k:] = False
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return kept / kept.sum(-1, keepdim=True)


class TokenLM(CompileOnFit, TokenizerInCheckpoint, DataConsumer, L.LightningModule):
    """GPT baseline (see the module docstring).

    Args:
        arch: transformer shape (`embed_dim` is unused); `max_seq_len` = prompt + solution tokens.
        vocab_size: byte-level BPE vocabulary trained on the training split at fit start.
        optim: AdamW + warmup/cosine (`lcm.optim.OptimConfig`, the same defaults as every model).
        compile: `torch.compile` the network (`self.net`, its training forward) when `fit` starts, in place
            (`nn.Module.compile`: parameter names and checkpoints unchanged); KV-cache generation stays eager.

    Batches: `{"prompt": [B str], "solution": [B str]}` (TokenDataModule; tokenized in the step), or already
    tokenized `{"tokens": (B, L) long, "target": (B, L-1) bool}` (target: the next token is a loss target).
    """

    KIND, WHAT, TRAIN_HINT = "token", "token-baseline", "lcm fit -c train/configs/token_baseline.yaml"

    def __init__(self, arch: LCMConfig = DEFAULT_TOKEN_ARCH, vocab_size: int = 1024,
                 optim: OptimConfig = OptimConfig(), compile: bool = False):
        super().__init__()
        if isinstance(arch, dict):  # from a checkpoint's hyperparameters
            arch = LCMConfig(**arch)
        if vocab_size < MIN_VOCAB:
            raise LCMError(f"vocab_size={vocab_size} is below the {MIN_VOCAB} byte-level tokens + specials")
        self.optim = OptimConfig.of(optim)
        self.save_hyperparameters({"arch": asdict(arch), "vocab_size": vocab_size, "optim": self.optim.hparams(),
                                   "compile": bool(compile)})
        self.arch = arch
        self.net = CausalTokenStack(arch, vocab_size)
        self.tokenizer: SentenceTokenizer | None = None
        self.meta: dict = {}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    # ---- wiring to the data ----------------------------------------------------------------------
    def attach_data(self, data: TextData) -> None:
        """Take the training texts (`TokenDataModule.setup` hands them over); the tokenizer is trained here
        unless a resumed checkpoint brings one (`on_load_checkpoint`)."""
        expect(data, TextData, type(self).__name__, "lcm.train.TokenDataModule")
        if self.tokenizer is None:
            self.tokenizer = SentenceTokenizer.train(data.train_texts(), self.hparams.vocab_size)
            self.meta = {"kind": "token", "source": data.source}

    def setup(self, stage: str) -> None:
        if self.tokenizer is None:  # no TokenDataModule handed texts over, and no checkpoint brought a tokenizer
            raise LCMError("TokenLM trains on text: use data class_path lcm.train.TokenDataModule")

    # ---- training --------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        return [self.tokenizer.bos_id, *self.tokenizer.encode([prompt + "\n"])[0]]

    def _batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """-> tokens (B, L) = [bos, prompt, "\\n", solution, eos, pad...] cut at max_seq_len, and the mask of
        positions whose *next* token is a solution token or eos (B, L-1). Pre-tokenized batches pass through."""
        if "tokens" in batch:
            return batch["tokens"], batch["target"]
        tok, cap = self.tokenizer, self.arch.max_seq_len
        solutions = tok.encode(batch["solution"])
        rows = [(self.prompt_ids(p), s + [tok.eos_id]) for p, s in zip(batch["prompt"], solutions)]
        L_ = min(cap, max(len(p) + len(s) for p, s in rows))
        tokens = torch.full((len(rows), L_), tok.pad_id, dtype=torch.long)
        target = torch.zeros(len(rows), L_, dtype=torch.bool)
        for b, (p, s) in enumerate(rows):
            ids = (p + s)[:cap]
            tokens[b, : len(ids)] = torch.tensor(ids)
            target[b, len(p): len(ids)] = True
        return self._to_device(tokens), self._to_device(target[:, 1:])

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":  # pinned, asynchronous: the copy does not stall the host
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> logits (B, L-1, V), next tokens (B, L-1), loss mask (B, L-1)."""
        tokens, mask = self._batch(batch)
        return self.net(tokens[:, :-1]), tokens[:, 1:], mask

    @staticmethod
    def _masked_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the masked positions, without a host-device sync (no boolean indexing)."""
        return F.cross_entropy(logits.flatten(0, 1).float(), target.masked_fill(~mask, -100).flatten(), ignore_index=-100)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits, target, mask = self._logits(batch)
        loss = self._masked_ce(logits, target, mask)
        # documents, not tokens: the train loss is logged per step, and counting tokens would sync the device
        self.log("train/loss", loss, prog_bar=True, batch_size=mask.shape[0])
        return loss

    def predict_step(self, batch: dict, batch_idx: int) -> None:
        raise LCMError("lcm predict writes teacher-forced concept predictions: it is for concept models, not "
                       "the token baseline")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    @torch.no_grad()
    def _evaluate(self, batch: dict, split: str) -> None:
        logits, target, mask = self._logits(batch)
        loss = self._masked_ce(logits, target, mask)
        acc = (logits[mask].argmax(-1) == target[mask]).float().mean()
        entropy, n = token_entropy(logits[mask]).mean(), mask.sum()
        for name, value in (("loss", loss), ("token_acc", acc), ("entropy", entropy)):
            self.log(f"{split}/{name}", value, batch_size=int(n), on_epoch=True, prog_bar=name == "loss",
                     sync_dist=True)

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.optim)

    # ---- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt: str, num_samples: int = 1, mode: Literal["sample", "greedy", "soft"] = "sample",
                 temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256, seed: int | None = None,
                 soft_top_k: int = 30, soft_top_p: float = 0.95, cold_stop_entropy: float = 0.01,
                 cold_stop_patience: int = 16) -> list[TokenSample]:
        """k = `num_samples` solutions of one problem, generated as one batch (one forward per token)."""
        if self.tokenizer is None:
            raise LCMError("the token model has no tokenizer: train it with `lcm fit` or load a checkpoint")
        if mode not in ("sample", "greedy", "soft") or num_samples < 1 or temperature <= 0 or not 0 < top_p <= 1:
            raise LCMError(f"bad sampling settings: mode={mode!r}, num_samples={num_samples}, "
                           f"temperature={temperature}, top_p={top_p}")
        net, k, dev = self.net, num_samples, self.device
        ids = self.prompt_ids(prompt)
        budget = min(max_new_tokens, self.arch.max_seq_len - len(ids))
        if budget < 1:
            raise LCMError(f"prompt of {len(ids)} tokens fills the model's context ({self.arch.max_seq_len})")
        gen = torch.Generator(device=dev).manual_seed(seed) if seed is not None else None
        caches = net.new_caches()
        h = net._blocks(net.tok_emb(torch.tensor([ids], device=dev)), caches)[:, -1]  # prefill (1, d)
        for cache in caches:  # every sample continues the same prompt
            cache.reorder(torch.zeros(k, dtype=torch.long, device=dev))
        h = h.expand(k, -1)
        eos = self.tokenizer.eos_id
        out_ids, ents, hids = [], [], []
        done = torch.zeros(k, dtype=torch.bool, device=dev)
        steps = torch.zeros(k, dtype=torch.long, device=dev)  # tokens generated per row, eos included
        soft = torch.full((k,), mode == "soft", device=dev)
        soft_tokens = torch.zeros(k, dtype=torch.long, device=dev)
        calm = torch.zeros(k, dtype=torch.long, device=dev)  # consecutive low-entropy tokens
        for t in range(budget):
            logits = net.head(h).float()  # (k, V)
            entropy = token_entropy(logits)  # (k,)
            probs = torch.softmax(logits / temperature, dim=-1)
            if mode == "sample":
                nxt = torch.multinomial(nucleus(probs, top_p), 1, generator=gen)[:, 0]
            else:
                nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            out_ids.append(nxt)
            ents.append(entropy)
            hids.append(h.float())
            live = ~done
            steps += live.long()
            soft_tokens += (live & soft).long()
            done = done | (nxt == eos)
            if bool(done.all()) or t == budget - 1:  # no forward pass for a token that is never produced
                break
            inp = net.tok_emb(nxt)  # (k, d)
            if mode == "soft":
                calm = torch.where(entropy < cold_stop_entropy, calm + 1, torch.zeros_like(calm))
                soft = soft & (calm < cold_stop_patience)  # cold stop: finish with discrete tokens
                mix = nucleus(probs, soft_top_p, soft_top_k) @ net.tok_emb.weight  # (k, d) concept token
                inp = torch.where(soft[:, None], mix.to(inp.dtype), inp)
            h = net._blocks(inp[:, None], caches)[:, -1]
        return self._samples(torch.stack(out_ids, 1), torch.stack(ents, 1), torch.stack(hids, 1), steps, soft_tokens)

    def _samples(self, ids: torch.Tensor, ents: torch.Tensor, hids: torch.Tensor, steps: torch.Tensor,
                 soft_tokens: torch.Tensor) -> list[TokenSample]:
        """ids/ents (k, n), hids (k, n, d), steps (k,) -> one TokenSample per row, cut at its eos."""
        tok, out = self.tokenizer, []
        for r in range(ids.shape[0]):
            n = int(steps[r])
            row = ids[r, :n].tolist()
            ended = bool(row) and row[-1] == tok.eos_id
            body = row[:-1] if ended else row
            out.append(TokenSample(
                text=tok.decode([body])[0], token_ids=body, entropies=ents[r, :n].cpu().numpy(),
                hidden=hids[r, :n].cpu().numpy(), forward_passes=n, stop_reason="eos" if ended else "max_tokens",
                soft_tokens=int(soft_tokens[r]),
                token_texts=["<eos>" if i == tok.eos_id else t for i, t in zip(row, tok.decode([[i] for i in row]))]))
        return out
