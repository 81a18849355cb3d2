"""Token baseline: a Hugging Face causal LM on the same documents rendered as text, with sampling and Soft Thinking.

The network is a `transformers` causal LM: by default `LlamaForCausalLM` at random init from a small
`LlamaConfig` mapped from `arch` -- the concept trunk's shape (`lcm.model`: pre-norm RMSNorm, rotary
positions, SwiGLU, causal attention), with the output head tied to the embedding -- or any causal LM loaded
from a local HF model folder or a hub name (`pretrained`). The tokenizer is the project's byte-level BPE
trained on the training split (`lcm.tokenizer`), wrapped as a `transformers.PreTrainedTokenizerFast` (a
pretrained model brings its own). Trained by the same CLI: `lcm fit -c train/configs/token_baseline.yaml`.
The loss covers the solution tokens only (the prompt is given), as the concept model's loss covers only step
positions. `save_pretrained` writes a folder that plain transformers loads (`AutoModelForCausalLM` /
`AutoTokenizer.from_pretrained`), so TRL can drive it.

Generation (`TokenLM.generate`) runs the k samples of a problem as one batch with the model's KV cache:
- mode "sample": temperature and nucleus (top-p) sampling; "greedy": argmax.
- mode "soft" (Soft Thinking, Zhang et al. 2025), as the official code runs it (`SoftThinking`: its defaults and
  their sources): while a row thinks, its next input (`inputs_embeds`) is a *concept token*, the
  probability-weighted embedding of the top `max_topk` tokens of softmax(logits / T) after top-k, top-p and min-p
  filtering; the token shown is the concept token's heaviest. Thinking ends when the text reaches `think_end` (the
  official `</think>`; here the answer line's `####`), or by a *cold stop*: after `cold_stop_patience` tokens in a
  row of entropy (at T) below `cold_stop_entropy`, `think_end` is written in place of the next token. After
  thinking, tokens are sampled discretely (after-thinking top-k / top-p / min-p, seeded). Optional Gumbel or
  Dirichlet noise on the concept token (Wu et al. 2025) makes the thinking sample too.
Each sample records per-token entropy (temperature 1), the final-layer hidden states (after the final norm),
and the network evaluations it cost.
"""
from __future__ import annotations

import functools
import inspect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from lcm.compile import CompileOnFit
from lcm.decoder import MIN_VOCAB
from lcm.errors import LCMError
from lcm.handoff import DataConsumer, TextData, expect
from lcm.metrics import token_entropy
from lcm.model import LCMConfig
from lcm.optim import OptimConfig, adamw_warmup_cosine
from lcm.tokenizer import SentenceTokenizer, TokenizerInCheckpoint, fast_from_record, fast_record

DEFAULT_TOKEN_ARCH = LCMConfig(d_model=256, n_layer=4, n_head=4, max_seq_len=512, dropout=0.1)
RECORD = "lcm.json"  # beside the HF files of an exported token model: what rebuilds the TokenLM around them


@dataclass
class TokenSample:
    text: str
    token_ids: list[int]  # generated tokens without the final <eos>
    entropies: np.ndarray  # (n,) nats at temperature 1, one per generated token (<eos> included)
    hidden: np.ndarray  # (n, d) final-layer hidden state that produced each token
    forward_passes: int  # network evaluations: the prompt prefill + one per generated token after the first
    stop_reason: Literal["eos", "max_tokens"] = "eos"
    soft_tokens: int = 0  # Soft Thinking: tokens chosen as a concept token's heaviest (the thinking length)
    token_texts: list[str] = field(default_factory=list)  # (n,) each generated token as text, "<eos>" included


def filter_probs(probs: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """The official Soft Thinking sampler's filters, in its order (`top_k_renorm_prob`, `top_p_renorm_prob`, then
    min-p): keep the `top_k` most likely tokens (0: all), then the fewest of those whose renormalized mass reaches
    `top_p`, then those at least `min_p` x the most likely one; renormalized. (B, V) -> (B, V)"""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    if top_k > 0:
        sorted_p = torch.cat([sorted_p[:, :top_k], torch.zeros_like(sorted_p[:, top_k:])], dim=-1)
    sorted_p = sorted_p / sorted_p.sum(-1, keepdim=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the first token is always kept
    keep &= sorted_p >= min_p * sorted_p[:, :1]  # min-p compares with the top probability: renormalizing keeps it
    kept = sorted_p * keep
    return torch.zeros_like(probs).scatter(-1, order, kept / kept.sum(-1, keepdim=True))


@dataclass(frozen=True)
class SoftThinking:
    """Soft Thinking settings, at the defaults of the official code (github.com/eric-ai-lab/Soft-Thinking @ b97407c:
    readme.md "Hyperparameter Search", scripts/st/qwq32b_st_math.sh; the sampling itself in
    sglang_soft_thinking_pkg/python/sglang/srt/layers/sampler.py and managers/schedule_batch.py `update_topk_info`).
    The noise settings follow the follow-up that found plain Soft Thinking single-threaded (Wu et al. 2025,
    arXiv 2508.03440; github.com/WJMacro/Randomized-Soft-Thinking scripts/st/st_with_{gumbel,dirichlet}.sh)."""

    max_topk: int = 10  # tokens mixed into a concept token (--max_topk 10)
    temperature: float = 0.6  # --temperature 0.6; the official sampler applies it after thinking too
    top_k: int = 30  # --top_k 30: filter before the concept token is cut to max_topk (0: off)
    top_p: float = 0.95  # --top_p 0.95
    min_p: float = 0.001  # --min_p 0.001: drop tokens below min_p x the top probability
    after_thinking_top_k: int = 30  # --after_thinking_top_k 30: discrete sampling once thinking has ended
    after_thinking_top_p: float = 0.95  # --after_thinking_top_p 0.95
    after_thinking_min_p: float = 0.0  # --after_thinking_min_p 0.0
    cold_stop_entropy: float = 0.01  # --early_stopping_entropy_threshold 0.01 (nats at `temperature`; 0: off)
    cold_stop_patience: int = 256  # --early_stopping_length_threshold 256 low-entropy tokens in a row
    think_end: str = "####"  # --think_end_str "</think>"; our models have no think tags: the answer line's marker
    noise: Literal["none", "gumbel", "dirichlet"] = "none"  # the official flags --add_noise_{gumbel_softmax,dirichlet}
    gumbel_temperature: float = 0.5  # --gumbel_softmax_temperature 0.5 (official readme; follow-up: 0.5 on AIME)
    dirichlet_alpha: float = 4.0  # --dirichlet_alpha 4.0 (follow-up's script; official argparse default 1.0)

    def __post_init__(self):
        bad = [name for name, ok in (
            ("max_topk", self.max_topk >= 1), ("temperature", self.temperature > 0), ("top_k", self.top_k >= 0),
            ("top_p", 0 < self.top_p <= 1), ("min_p", 0 <= self.min_p <= 1),
            ("after_thinking_top_k", self.after_thinking_top_k >= 0),
            ("after_thinking_top_p", 0 < self.after_thinking_top_p <= 1),
            ("after_thinking_min_p", 0 <= self.after_thinking_min_p <= 1), ("cold_stop_entropy", self.cold_stop_entropy >= 0),
            ("cold_stop_patience", self.cold_stop_patience >= 1), ("think_end", bool(self.think_end)),
            ("noise", self.noise in ("none", "gumbel", "dirichlet")), ("gumbel_temperature", self.gumbel_temperature > 0),
            ("dirichlet_alpha", self.dirichlet_alpha > 0)) if not ok]
        if bad:
            raise LCMError(f"bad Soft Thinking settings: {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}")


def concept_token(probs: torch.Tensor, soft: SoftThinking, gen: torch.Generator | None = None,
                  rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Filtered probabilities (B, V) -> a concept token: weights (B, K) summing to 1, heaviest first, and their token
    ids (B, K), K = `max_topk`. As the official sampler: Dirichlet noise (concentration alpha x p) on the kept
    tokens, then the top `max_topk` renormalized, then Gumbel noise: softmax((log w + g) / tau), re-sorted."""
    n = min(probs.shape[-1], max(soft.top_k or probs.shape[-1], soft.max_topk))
    w, ids = probs.topk(n, dim=-1)  # (B, n): the kept support (at most top_k tokens) in front
    if soft.noise == "dirichlet":  # Gamma(0) draws are 0: filtered-out tokens stay out
        g = torch.from_numpy((rng or np.random.default_rng()).gamma(w.double().cpu().numpy() * soft.dirichlet_alpha))
        w = g.to(w) / g.sum(-1, keepdim=True).to(w)
        w, pick = w.topk(min(soft.max_topk, n), dim=-1)
        ids = ids.gather(-1, pick)
    w, ids = w[:, : soft.max_topk], ids[:, : soft.max_topk]
    w = w / w.sum(-1, keepdim=True)
    if soft.noise == "gumbel":
        gumbel = -torch.empty_like(w).exponential_(generator=gen).log()  # ~ Gumbel(0, 1)
        w, order = torch.softmax((w.log() + gumbel) / soft.gumbel_temperature, dim=-1).sort(-1, descending=True)
        ids = ids.gather(-1, order)
    return w, ids


class SoftThinker:
    """The per-row state of Soft Thinking in one `TokenLM.generate` batch: which rows still think, their low-entropy
    streaks, the `think_end` tokens a cold stop still has to write, each row's text (to see `think_end`), and this
    step's concept tokens."""

    def __init__(self, tokenizer, soft: SoftThinking, k: int, device: torch.device, seed: int | None):
        self.s, self.tok = soft, tokenizer
        self.thinking = torch.ones(k, dtype=torch.bool, device=device)
        self.calm = torch.zeros(k, dtype=torch.long, device=device)  # low-entropy tokens in a row
        self.produced = torch.zeros(k, dtype=torch.long, device=device)  # tokens chosen as a concept token's heaviest
        self.chosen = torch.zeros_like(self.thinking)  # this step's token is a concept token's heaviest
        self.active = True  # some row still thinks (host-side: skips the concept token once none does)
        self.texts = [""] * k
        self.forced: list[list[int]] = [[] for _ in range(k)]
        self.rng = np.random.default_rng(seed)  # Dirichlet draws (numpy: torch has no seeded gamma sampler)
        self.mix: tuple[torch.Tensor, torch.Tensor] | None = None  # weights, ids (k, max_topk)

    def next_tokens(self, logits: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """logits (k, V) -> the tokens shown (k,): the concept token's heaviest while a row thinks, a cold stop's
        `think_end`, or a discrete sample after thinking."""
        s = self.s
        probs = torch.softmax(logits / s.temperature, dim=-1)  # (k, V)
        after = filter_probs(probs, s.after_thinking_top_k, s.after_thinking_top_p, s.after_thinking_min_p)
        nxt = torch.multinomial(after, 1, generator=gen)[:, 0]
        if self.active:
            self.mix = concept_token(filter_probs(probs, s.top_k, s.top_p, s.min_p), s, gen, self.rng)
            nxt = torch.where(self.thinking, self.mix[1][:, 0], nxt)
        if s.cold_stop_entropy > 0:  # the official entropy: at the sampling temperature, before any filter
            calm = token_entropy(logits / s.temperature) < s.cold_stop_entropy
            self.calm = torch.where(calm & self.thinking, self.calm + 1, torch.zeros_like(self.calm))
        stop = self.thinking & (self.calm >= s.cold_stop_patience)
        self.chosen = self.thinking & ~stop
        self.thinking = self.thinking & ~stop
        return self._force(nxt, stop.nonzero().flatten().tolist())

    def _force(self, nxt: torch.Tensor, cold: list[int]) -> torch.Tensor:
        """A cold stop writes `think_end` in place of the row's next tokens (official: `</think>` replaces the
        token), on a new line as the answer line needs."""
        for r in cold:
            text = self.s.think_end if not self.texts[r] or self.texts[r].endswith("\n") else "\n" + self.s.think_end
            self.forced[r] = self.tok(text, add_special_tokens=False)["input_ids"]
        if not any(self.forced):
            return nxt
        ids = nxt.tolist()
        for r, queue in enumerate(self.forced):
            if queue:
                ids[r] = queue.pop(0)
        return torch.tensor(ids, dtype=nxt.dtype, device=nxt.device)

    def record(self, nxt: torch.Tensor, live: torch.Tensor) -> None:
        """Count this step's concept tokens; a row whose text now holds `think_end` stops thinking (the token that
        completes it goes back in discretely, as the official one-hot `</think>`)."""
        self.produced += (self.chosen & live).long()
        if not self.active:
            return
        end, ended = self.s.think_end, []
        for r, piece in enumerate(self.tok.batch_decode(nxt[:, None].tolist(), skip_special_tokens=True)):
            self.texts[r] += piece
            if end in self.texts[r][-(len(piece) + len(end)):]:
                ended.append(r)
        if ended:
            self.thinking[ended] = False
        self.thinking &= live & (nxt != self.tok.eos_token_id)  # a finished row thinks no more
        self.active = bool(self.thinking.any())

    def inputs(self, emb: torch.nn.Embedding, discrete: torch.Tensor) -> torch.Tensor:
        """The next inputs (k, d): the concept token sum_i w_i e(id_i) for thinking rows, `discrete` for the others."""
        if self.mix is None or not bool(self.thinking.any()):
            return discrete
        w, ids = self.mix
        mix = (w[..., None] * emb(ids).float()).sum(1)  # (k, K, 1) * (k, K, d) -> (k, d)
        return torch.where(self.thinking[:, None], mix.to(discrete.dtype), discrete)


# ---- the network ---------------------------------------------------------------------------------------------
def llama_config(arch: LCMConfig, vocab_size: int):
    """`arch` as a `LlamaConfig`: d_model -> hidden_size, ffn_dim -> intermediate_size, max_seq_len ->
    max_position_embeddings, rope_base -> rope_theta, norm_eps -> rms_norm_eps, tied embeddings.
    Llama has no residual dropout: `arch.dropout` becomes its attention dropout. Special-token ids are those of
    `SentenceTokenizer` (<pad> 0, <bos> 1, <eos> 2: trained first, in that order)."""
    from transformers import LlamaConfig

    if arch.positions != "rope":
        raise LCMError("token models use rotary positions (arch.positions: rope)")
    return LlamaConfig(vocab_size=vocab_size, hidden_size=arch.d_model, intermediate_size=arch.ffn_dim,
                       num_hidden_layers=arch.n_layer, num_attention_heads=arch.n_head,
                       num_key_value_heads=arch.n_head, max_position_embeddings=arch.max_seq_len,
                       rope_theta=arch.rope_base, rms_norm_eps=arch.norm_eps, tie_word_embeddings=True,
                       attention_dropout=arch.dropout, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def config_from_json(hf_config: str):
    """A transformers config from its JSON (kept in checkpoints of runs that started from `pretrained`)."""
    from transformers import AutoConfig

    rest = json.loads(hf_config)
    return AutoConfig.for_model(rest.pop("model_type", "llama"), **rest)


def load_hf(name: str | Path):
    """(causal LM in float32, its tokenizer) from a local HF model folder or a hub name (fetched when online);
    one error line otherwise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lcm.pretrained import resolve

    folder = resolve(name)
    try:
        net = AutoModelForCausalLM.from_pretrained(str(folder)).float()  # train in float32; autocast does the rest
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as e:
        raise LCMError(f"{name} is not a Hugging Face causal LM folder with its tokenizer ({type(e).__name__}: "
                       f"{(str(e).strip().splitlines() or [''])[0][:160]})") from e
    if tokenizer.eos_token_id is None:
        raise LCMError(f"the tokenizer of {name} has no end-of-sequence token")
    if tokenizer.pad_token is None:  # right padding is never attended to: any token will do
        tokenizer.pad_token = tokenizer.eos_token
    return net, tokenizer


@functools.cache
def cache_keyword(model_class: type) -> str:
    """The KV-cache argument of `model_class.forward`: `cache` in recent transformers (`past_key_values`
    deprecated there), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


class TokenLM(CompileOnFit, TokenizerInCheckpoint, DataConsumer, L.LightningModule):
    """Hugging Face causal-LM baseline (see the module docstring).

    Args:
        arch: transformer shape of the random-init Llama (`embed_dim` is unused); `max_seq_len` = prompt +
            solution tokens (with `pretrained`: a cap under the model's own context).
        vocab_size: byte-level BPE vocabulary trained on the training split at fit start (random init only).
        optim: AdamW + warmup/cosine (`lcm.optim.OptimConfig`, the same defaults as every model).
        compile: `torch.compile` the network (`self.net`, its training forward) when `fit` starts, in place
            (`nn.Module.compile`: parameter names and checkpoints unchanged); KV-cache generation stays eager.
        pretrained: a local HF model folder or hub name to start from (weights and tokenizer; any causal LM
            `AutoModelForCausalLM` reads) instead of a random-init Llama.
        hf_config: the network's transformers config as JSON. Written into the checkpoints of `pretrained` runs,
            so they load without the folder; not for YAML files.

    Batches: `{"prompt": [B str], "solution": [B str]}` (TokenDataModule; tokenized in the step), or already
    tokenized `{"tokens": (B, L) long, "target": (B, L-1) bool}` (target: the next token is a loss target).
    """

    KIND, WHAT, TRAIN_HINT = "token", "token-baseline", "lcm fit -c train/configs/token_baseline.yaml"

    def __init__(self, arch: LCMConfig = DEFAULT_TOKEN_ARCH, vocab_size: int = 1024,
                 optim: OptimConfig = OptimConfig(), compile: bool = False, pretrained: str | None = None,
                 hf_config: str | None = None):
        super().__init__()
        if isinstance(arch, dict):  # from a checkpoint's hyperparameters
            arch = LCMConfig(**arch)
        if vocab_size < MIN_VOCAB:
            raise LCMError(f"vocab_size={vocab_size} is below the {MIN_VOCAB} byte-level tokens + specials")
        self.optim = OptimConfig.of(optim)
        self.arch = arch
        self.tokenizer = None  # a transformers PreTrainedTokenizerFast once trained, loaded or restored
        self.meta: dict = {}
        if hf_config is not None:  # restoring: the checkpoint brings the weights and the tokenizer
            from transformers import AutoModelForCausalLM

            self.net = AutoModelForCausalLM.from_config(config_from_json(hf_config))
        elif pretrained:
            self.net, self.tokenizer = load_hf(pretrained)
            hf_config = self.net.config.to_json_string()  # a string: the CLI's --ckpt_path re-reads it as given
        else:
            from transformers import LlamaForCausalLM

            self.net = LlamaForCausalLM(llama_config(arch, vocab_size))
        self.save_hyperparameters({"arch": asdict(arch), "vocab_size": vocab_size, "optim": self.optim.hparams(),
                                   "compile": bool(compile), "pretrained": pretrained and str(pretrained),
                                   "hf_config": hf_config})

    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())  # the tied head counted once

    @property
    def context(self) -> int:
        """Tokens per sequence: `arch.max_seq_len`, capped by the network's own position limit."""
        return min(self.arch.max_seq_len, getattr(self.net.config, "max_position_embeddings", None) or 10**9)

    # ---- wiring to the data ----------------------------------------------------------------------
    def attach_data(self, data: TextData) -> None:
        """Take the training texts (`TokenDataModule.setup` hands them over); the BPE is trained here unless the
        model came with a tokenizer (`pretrained`) or a resumed checkpoint brings one (`on_load_checkpoint`)."""
        expect(data, TextData, type(self).__name__, "lcm.train.TokenDataModule")
        if self.tokenizer is None:
            self.tokenizer = SentenceTokenizer.train(data.train_texts(), self.hparams.vocab_size).to_hf()
            self._sync_special_ids()
        if not self.meta:
            self.meta = {"kind": "token", "source": data.source, "pretrained": self.hparams.pretrained}

    def setup(self, stage: str) -> None:
        if self.tokenizer is None:  # no TokenDataModule handed texts over, and no checkpoint brought a tokenizer
            raise LCMError("TokenLM trains on text: use data class_path lcm.train.TokenDataModule")

    def _sync_special_ids(self) -> None:
        """The tokenizer's pad / bos / eos ids into the network's configs (what HF `generate` and TRL read)."""
        tok = self.tokenizer
        for cfg in (self.net.config, getattr(self.net, "generation_config", None)):
            if cfg is not None:
                cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id

    # ---- checkpoints and folders -------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lcm"] = {**self.meta, **(fast_record(self.tokenizer) if self.tokenizer else {"tokenizer": None})}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = dict(checkpoint.get("lcm") or {})
        if meta.get("kind") != self.KIND or not meta.get("tokenizer"):
            raise LCMError(f"checkpoint is not a {self.WHAT} checkpoint (no tokenizer record)")
        if "special_tokens" not in meta:
            raise LCMError("checkpoint holds the home-made GPT token baseline, which a Hugging Face Llama "
                           f"replaced; train a new one with `{self.TRAIN_HINT}`")
        self.tokenizer = fast_from_record(meta.pop("tokenizer"), meta.pop("special_tokens"))
        self.meta = meta
        self._sync_special_ids()

    def save_pretrained(self, folder: str | Path) -> Path:
        """The HF model and tokenizer (`AutoModelForCausalLM` / `AutoTokenizer.from_pretrained(folder)` read
        them in plain transformers) and `lcm.json`, the hyper-parameters and record that rebuild this TokenLM."""
        from lcm.io import write_json
        from lcm.pretrained import FORMAT

        folder = Path(folder)
        self.net.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        hparams = {k: v for k, v in self.hparams.items() if k not in ("pretrained", "hf_config")}
        write_json(folder / RECORD, {"format": FORMAT, "hyper_parameters": hparams, "lcm": self.meta})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu") -> "TokenLM":
        """An eval-mode model from a folder written by `lcm export` / `save_pretrained`, or from any HF causal-LM
        folder or hub name (then with default settings). Reads safetensors and JSON: no pickle."""
        from lcm.checkpoint import hparams_mismatch, on_device
        from lcm.pretrained import resolve

        folder = resolve(folder)
        record = json.loads((folder / RECORD).read_text(encoding="utf-8")) if (folder / RECORD).is_file() else {}
        meta = record.get("lcm") or {"kind": "token", "source": f"pretrained {folder}"}
        if meta.get("kind") != cls.KIND:
            raise LCMError(f"{folder} holds a {meta.get('kind') or 'concept'} model, not a token model")
        hparams = {**record.get("hyper_parameters", {}), "pretrained": str(folder), "hf_config": None}
        problems = hparams_mismatch(cls, hparams)
        if problems:
            raise LCMError(f"{folder}/{RECORD} does not match this version of lcm-trainer ({'; '.join(problems)})")
        model = cls(**hparams)
        model.meta = meta
        return on_device(model, device)

    # ---- training --------------------------------------------------------------------------------
    def _encode(self, texts: list[str]) -> list[list[int]]:
        """texts -> token ids, without specials."""
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def prompt_ids(self, prompt: str) -> list[int]:
        bos = self.tokenizer.bos_token_id  # some pretrained tokenizers (Qwen) have none
        return [*([bos] if bos is not None else []), *self._encode([prompt + "\n"])[0]]

    def _batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """-> tokens (B, L) = [bos, prompt, "\\n", solution, eos, pad...] cut at the context, and the mask of
        positions whose *next* token is a solution token or eos (B, L-1). Pre-tokenized batches pass through."""
        if "tokens" in batch:
            return batch["tokens"], batch["target"]
        tok, cap = self.tokenizer, self.context
        rows = [(self.prompt_ids(p), s + [tok.eos_token_id]) for p, s in zip(batch["prompt"], self._encode(batch["solution"]))]
        L_ = min(cap, max(len(p) + len(s) for p, s in rows))
        tokens = torch.full((len(rows), L_), tok.pad_token_id, dtype=torch.long)
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
        """-> logits (B, L-1, V), next tokens (B, L-1), loss mask (B, L-1). Right padding comes after every real
        token, so the plain causal mask suffices (no attention mask: SDPA keeps its causal fast path)."""
        tokens, mask = self._batch(batch)
        return self.net(input_ids=tokens[:, :-1], use_cache=False).logits, tokens[:, 1:], mask

    @staticmethod
    def _masked_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the masked positions, without a host-device sync (no boolean indexing)."""
        return F.cross_entropy(logits.flatten(0, 1).float(), target.masked_fill(~mask, -100).flatten(), ignore_index=-100)

    def sequence_lengths(self, batch: dict) -> torch.Tensor:
        """(B,) tokens each sequence of the batch feeds the model to predict its next one: its real length - 1
        (padding excluded; `lcm.train.cost`)."""
        return ((self._batch(batch)[0] != self.tokenizer.pad_token_id).sum(1) - 1).clamp_min(0)

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
    def _forward_cached(self, cache, **inputs) -> torch.Tensor:
        """`input_ids` or `inputs_embeds` (B, T[, d]) after the cached positions -> the last position's
        final-layer hidden state (B, d), after the final norm; the cache grows by T."""
        base = self.net.base_model
        out = base(**inputs, use_cache=True, **{cache_keyword(type(base)): cache})
        return out.last_hidden_state[:, -1]

    def _prefill(self, ids: list[int], k: int):
        """The prompt through the network once, its KV cache repeated for the k samples -> (cache, h (k, d))."""
        from transformers import DynamicCache

        cache = DynamicCache()
        h = self._forward_cached(cache, input_ids=torch.tensor([ids], device=self.device))  # (1, d)
        cache.batch_repeat_interleave(k)  # every sample continues the same prompt
        return cache, h.expand(k, -1)

    def _check_settings(self, mode: str, num_samples: int, temperature: float, top_p: float, soft) -> None:
        if not isinstance(soft, SoftThinking):
            raise LCMError(f"soft must be a lcm.token_model.SoftThinking, not {type(soft).__name__}")
        if self.tokenizer is None:
            raise LCMError("the token model has no tokenizer: train it with `lcm fit` or load a checkpoint")
        if mode not in ("sample", "greedy", "soft") or num_samples < 1 or temperature <= 0 or not 0 < top_p <= 1:
            raise LCMError(f"bad sampling settings: mode={mode!r}, num_samples={num_samples}, "
                           f"temperature={temperature}, top_p={top_p}")

    @torch.no_grad()
    def generate(self, prompt: str, num_samples: int = 1, mode: Literal["sample", "greedy", "soft"] = "sample",
                 temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256, seed: int | None = None,
                 soft: SoftThinking = SoftThinking()) -> list[TokenSample]:
        """k = `num_samples` solutions of one problem, generated as one batch (one forward per token). `temperature`
        and `top_p` are mode "sample"'s; mode "soft" takes every setting from `soft`. `seed` makes sampling, noise
        and the after-thinking draws reproducible."""
        self._check_settings(mode, num_samples, temperature, top_p, soft)
        k, dev, ids = num_samples, self.device, self.prompt_ids(prompt)
        budget = min(max_new_tokens, self.context - len(ids))
        if budget < 1:
            raise LCMError(f"prompt of {len(ids)} tokens fills the model's context ({self.context})")
        gen = torch.Generator(device=dev).manual_seed(seed) if seed is not None else None
        emb, head, eos = self.net.get_input_embeddings(), self.net.get_output_embeddings(), self.tokenizer.eos_token_id
        thinker = SoftThinker(self.tokenizer, soft, k, dev, seed) if mode == "soft" else None
        cache, h = self._prefill(ids, k)
        out_ids, ents, hids = [], [], []
        done = torch.zeros(k, dtype=torch.bool, device=dev)
        steps = torch.zeros(k, dtype=torch.long, device=dev)  # tokens generated per row, eos included
        for t in range(budget):
            logits = head(h).float()  # (k, V)
            if thinker is not None:
                nxt = thinker.next_tokens(logits, gen)
            elif mode == "sample":
                probs = filter_probs(torch.softmax(logits / temperature, dim=-1), top_p=top_p)
                nxt = torch.multinomial(probs, 1, generator=gen)[:, 0]
            else:
                nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            out_ids.append(nxt)
            ents.append(token_entropy(logits))
            hids.append(h.float())
            live = ~done
            steps += live.long()
            if thinker is not None:
                thinker.record(nxt, live)
            done = done | (nxt == eos)
            if bool(done.all()) or t == budget - 1:  # no forward pass for a token that is never produced
                break
            inp = emb(nxt)  # (k, d)
            if thinker is not None:
                inp = thinker.inputs(emb, inp)
            h = self._forward_cached(cache, inputs_embeds=inp[:, None])
        soft_tokens = thinker.produced if thinker is not None else torch.zeros_like(steps)
        return self._samples(torch.stack(out_ids, 1), torch.stack(ents, 1), torch.stack(hids, 1), steps, soft_tokens)

    def _samples(self, ids: torch.Tensor, ents: torch.Tensor, hids: torch.Tensor, steps: torch.Tensor,
                 soft_tokens: torch.Tensor) -> list[TokenSample]:
        """ids/ents (k, n), hids (k, n, d), steps (k,) -> one TokenSample per row, cut at its eos."""
        tok, out = self.tokenizer, []
        eos = tok.eos_token_id
        for r in range(ids.shape[0]):
            n = int(steps[r])
            row = ids[r, :n].tolist()
            ended = bool(row) and row[-1] == eos
            body = row[:-1] if ended else row
            pieces = tok.batch_decode([[i] for i in row], skip_special_tokens=True)
            out.append(TokenSample(
                text=tok.decode(body, skip_special_tokens=True), token_ids=body, entropies=ents[r, :n].cpu().numpy(),
                hidden=hids[r, :n].cpu().numpy(), forward_passes=n, stop_reason="eos" if ended else "max_tokens",
                soft_tokens=int(soft_tokens[r]),
                token_texts=["<eos>" if i == eos else t for i, t in zip(row, pieces)]))
        return out
