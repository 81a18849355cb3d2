"""A sentence autoencoder trained with `lcm fit`: a concept space that keeps the content, for a user's own domain.

text -> byte-level BPE -> `SentenceEncoderNet` (bidirectional transformer, mean pool, linear bottleneck, unit norm;
`lcm.encoders.autoencoder`) -> z -> the prefix decoder of `lcm.decoder` -> the same text. Trained end to end with
teacher-forced cross-entropy on the corpus's own sentences (`lcm.train.SentenceDataModule`, the splits and cache of
every other config), with two augmentations so that imperfect *predicted* concepts still decode (the LCM paper's
lesson about SONAR's fragility): each input token is dropped with probability `token_dropout` (denoising), and the
decoder reads z plus Gaussian noise (`noise_std`, as the sentence decoder). An optional semantic term
(`semantic_weight`) pulls the pairwise cosines of a batch's z towards those of the data's encoder (MiniLM), so that
nearby concepts mean nearby sentences. `number_resample` rewrites the numbers of a share of the training sentences
with random ones of the same digit count: the input is the target, so every rewritten sentence is a valid example,
and the model sees numbers it must copy rather than the few the corpus repeats.

Once trained, the checkpoint is both halves of a concept space: `lcm.encoders.AutoencoderEncoder` (the encoding side,
`data.encoder` of any config) and this module as a sentence decoder (`decode_texts`; `lcm.decoding.GenerativeDecoder`
reads concepts out with it, no bank needed).
"""
from __future__ import annotations

import random
import re
from dataclasses import asdict, replace

import numpy as np
import torch
import torch.nn.functional as F

from lcm.decoder import DEFAULT_DECODER_ARCH, PrefixDecoder, SentenceDecoderLM
from lcm.encoders.autoencoder import (
    KIND,
    SentenceEncoderConfig,
    SentenceEncoderNet,
    autoencoder_id,
    pad_batch,
)
from lcm.errors import LCMError
from lcm.model import LCMConfig
from lcm.optim import OptimConfig

DIGITS = re.compile(r"[0-9]+")  # ASCII digits only: other scripts' digits are left as written


def resample_numbers(text: str, rng: random.Random) -> str:
    """`text` with every run of digits replaced by a random run of the same length (no new leading zero):
    "$420,000 x 7/100" -> "$913,528 x 4/362". Separators and everything else are kept."""
    def fresh(m: re.Match) -> str:
        n = len(m.group())
        first = str(rng.randint(1, 9)) if n > 1 and m.group()[0] != "0" else str(rng.randint(0, 9))
        return first + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))

    return DIGITS.sub(fresh, text)


class SentenceAutoencoderLM(SentenceDecoderLM):
    """Encoder + prefix decoder, trained to reconstruct sentences (`lcm fit -c train/configs/autoencoder_*.yaml`).

    Args:
        encoder: the encoding side's shape (`dim` = the concept space's dimension).
        arch: the decoding side's transformer shape (its `embed_dim` is set to `encoder.dim`).
        vocab_size, n_prefix, max_new_tokens, optim, split_digits: as `SentenceDecoderLM` (one tokenizer for both sides).
        noise_std: Gaussian noise on z the decoder reads in training (as `SentenceDecoderLM`).
        token_dropout: probability of dropping each input token of the encoder in training (one token is kept).
        number_resample: share of training sentences whose numbers are rewritten at random (`resample_numbers`), drawn
            afresh at every step (0 = off).
        semantic_weight: weight of the MSE between the batch's pairwise cosines of z and of the data encoder's
            embeddings (0 = off).
    """

    KIND, WHAT, TRAIN_HINT = KIND, "sentence-autoencoder", "lcm fit -c train/configs/autoencoder_quickstart.yaml"

    def __init__(self, encoder: SentenceEncoderConfig = SentenceEncoderConfig(), arch: LCMConfig = DEFAULT_DECODER_ARCH,
                 vocab_size: int = 4096, n_prefix: int = 4, noise_std: float = 0.3, token_dropout: float = 0.1,
                 semantic_weight: float = 0.0, max_new_tokens: int = 64, optim: OptimConfig = OptimConfig(),
                 split_digits: bool = False, number_resample: float = 0.0):
        if isinstance(encoder, dict):  # from a checkpoint's hyperparameters
            encoder = SentenceEncoderConfig(**encoder)
        if isinstance(arch, dict):
            arch = LCMConfig(**arch)
        if not 0 <= token_dropout < 1 or semantic_weight < 0 or not 0 <= number_resample <= 1:
            raise LCMError(f"token_dropout must be in [0, 1), semantic_weight >= 0 and number_resample in [0, 1] "
                           f"(got {token_dropout}, {semantic_weight}, {number_resample})")
        if encoder.pool == "slots" and token_dropout > 0:
            raise LCMError("token_dropout shifts the tokens after a dropped one out of their slots: use 0 with pool slots")
        arch = replace(arch, embed_dim=encoder.dim)  # the decoder reads the bottleneck
        super().__init__(arch, vocab_size=vocab_size, n_prefix=n_prefix, noise_std=noise_std,
                         max_new_tokens=max_new_tokens, optim=optim, split_digits=split_digits)
        self.save_hyperparameters({**self.hparams, "encoder": asdict(encoder), "token_dropout": token_dropout,
                                   "number_resample": number_resample,
                                   "semantic_weight": semantic_weight})
        self.encoder_config = encoder
        if encoder.pool == "slots":  # the decoder reads each slot where it writes that slot's token
            self.net = PrefixDecoder(arch, vocab_size, n_prefix, n_slots=encoder.n_slots)
        # sized for the configured vocabulary, as the decoder's embedding (the trained tokenizer has at most that many)
        self.encoder = SentenceEncoderNet(encoder, vocab_size)
        self._meta: dict = {}

    # ---- the concept space's identity ---------------------------------------------------------------
    @property
    def meta(self) -> dict:
        """The checkpoint record; `encoder_id` is this autoencoder's own space, computed from its current weights."""
        out = dict(self._meta, kind=KIND)
        if self.tokenizer is not None:
            out["encoder_id"] = autoencoder_id(self.encoder.state_dict(), self.tokenizer.to_str())
            out["dim"] = self.encoder_config.dim
        return out

    @meta.setter
    def meta(self, value: dict) -> None:
        self._meta = {k: v for k, v in value.items() if k not in ("encoder_id", "dim")}

    def check_data_encoder(self, encoder) -> None:
        """The data's encoder is only the semantic term's teacher here: any dimension will do."""

    def check_record(self, meta: dict) -> None:
        """A resumed autoencoder brings its own space: nothing to match against the data's encoder."""

    def attach_data(self, data) -> None:
        super().attach_data(data)
        self._meta["teacher_encoder_id"] = data.encoder.id
        self.encoder.pad = self.tokenizer.pad_id

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.encoder.pad = self.tokenizer.pad_id

    # ---- steps ----------------------------------------------------------------------------------------
    def encoder_tokens(self, texts: list[str]) -> torch.Tensor:
        """(B, L) padded input tokens of the encoder; in training each token is dropped with `token_dropout`
        (at least one kept)."""
        ids = self.tokenizer.encode(texts)
        p = self.hparams.token_dropout
        if self.training and p > 0:
            keep = [np.random.rand(len(x)) >= p for x in ids]
            ids = [[t for t, k in zip(x, m) if k] or x[:1] for x, m in zip(ids, keep)]
        return pad_batch(ids, self.tokenizer.pad_id).to(self.device)

    def embedding_of(self, batch: dict) -> torch.Tensor:
        """(B, dim) unit concepts of the batch's sentences, from its own encoder."""
        return self.encoder(self.encoder_tokens(batch["text"]))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch = self.resampled(batch)
        loss = super().training_step(batch, batch_idx)
        w = self.hparams.semantic_weight
        if w > 0 and len(batch["text"]) > 1:
            semantic = self.semantic_loss(self.embedding_of(batch), batch["emb"].float())
            self.log("train/semantic", semantic, batch_size=len(batch["text"]))
            loss = loss + w * semantic
        return loss

    def resampled(self, batch: dict) -> dict:
        """The batch with `number_resample` of its sentences' numbers rewritten (python's `random`, which
        `seed_everything` seeds). The semantic term still compares with the teacher's embedding of the original
        sentence: MiniLM barely encodes numbers."""
        p = self.hparams.get("number_resample", 0.0)
        if p <= 0:
            return batch
        rng = random.Random(random.getrandbits(64))
        return {**batch, "text": [resample_numbers(t, rng) if rng.random() < p else t for t in batch["text"]]}

    @staticmethod
    def semantic_loss(z: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """MSE between the off-diagonal pairwise cosines of z (B, dim) and of the teacher's embeddings (B, D')."""
        t = F.normalize(teacher, dim=-1)
        off = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
        return ((z @ z.T - t @ t.T)[off] ** 2).mean()

    # ---- inference ------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Sentences -> (N, dim) float32 unit concepts (what `AutoencoderEncoder` computes from the checkpoint)."""
        was = self.training
        self.eval()
        try:
            out = [self.encoder(self.encoder_tokens(texts[i:i + batch_size])).float().cpu().numpy()
                   for i in range(0, len(texts), batch_size)]
        finally:
            self.train(was)
        return np.concatenate(out) if out else np.zeros((0, self.encoder_config.dim), np.float32)


def load_sentence_decoder(path, device: str = "cpu") -> SentenceDecoderLM:
    """The module that writes concepts out as text, from a sentence-decoder checkpoint (it reads a frozen encoder's
    space) or a sentence-autoencoder checkpoint (it reads its own): chosen by the checkpoint's recorded kind."""
    from lcm.checkpoint import load_checkpoint, load_module

    ckpt = load_checkpoint(path)  # read once: its kind picks the class
    cls = SentenceAutoencoderLM if (ckpt.get("lcm") or {}).get("kind") == KIND else SentenceDecoderLM
    return load_module(cls, path, cls.KIND, cls.WHAT, cls.TRAIN_HINT, device, ckpt=ckpt)
