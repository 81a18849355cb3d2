"""Concept decoders: predicted embeddings (N, D) -> text, each with its round-trip cosine.

- `RetrievalDecoder`: nearest sentence of a bank (exact text, but only sentences that exist).
- `GenerativeDecoder`: the trained sentence decoder (new sentences; re-encoded to score them).
- `HybridDecoder`: retrieval hit when its cosine >= `threshold`, else decode, re-encode every candidate
  (top-k bank sentences + decoder hypotheses) and keep the one closest to the prediction.
- `SonarDecoder`: SONAR's embedding -> text decoder, behind the optional `sonar` extra.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from lcm.encoders.base import Encoder
from lcm.errors import LCMError
from lcm.retrieval import SentenceBank, unit_rows

Source = Literal["retrieved", "generated"]


@dataclass
class Decoded:
    text: str
    embedding: np.ndarray  # (D,) encoder embedding of `text` (what "decoded" feedback feeds back)
    score: float  # round-trip cosine: cosine(embedding, prediction)
    source: Source


def check_queries(preds: np.ndarray, dim: int) -> np.ndarray:
    """(N, D) float32 with D == dim and finite values, or one clear error."""
    q = np.atleast_2d(np.asarray(preds, dtype=np.float32))
    if q.ndim != 2 or q.shape[1] != dim:
        raise LCMError(f"embeddings to decode have shape {tuple(np.shape(preds))}; this decoder reads dimension {dim}")
    if not np.isfinite(q).all():
        raise LCMError("embedding to decode contains NaN/inf; the model or its input is broken")
    return q


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of (N, D) and (N, D). (N,)"""
    return np.sum(unit_rows(a) * unit_rows(b), axis=1)


class ConceptDecoder(ABC):
    """Reads predicted concepts back out as text."""

    encoder_id: str
    dim: int

    @abstractmethod
    def decode(self, preds: np.ndarray) -> list[Decoded]:
        """preds (N, D) raw (de-normalized) predictions -> N decoded sentences."""


class RetrievalDecoder(ConceptDecoder):
    """The nearest bank sentence. `exclude`: texts it never returns (generation passes the end-of-text and
    break sentences: those are decided as boundaries before the read-out, a step is never one of them)."""

    def __init__(self, bank: SentenceBank, exclude: Iterable[str] = ()):
        self.bank, self.encoder_id, self.dim = bank, bank.encoder_id, bank.dim
        self.exclude = bank.rows_of(exclude)
        if len(self.exclude) == len(bank):
            raise LCMError("the sentence bank holds no sentence besides the excluded end-of-text / break sentences")

    def hit(self, score: float, i: int) -> Decoded:
        """Bank sentence `i` read out for a prediction it has cosine `score` to."""
        return Decoded(self.bank.texts[i], self.bank.embeddings([i])[0], float(score), "retrieved")

    def decode(self, preds: np.ndarray) -> list[Decoded]:
        scores, ids = self.bank.search(check_queries(preds, self.dim), k=1, exclude=self.exclude)
        return [self.hit(s, i) for s, i in zip(scores[:, 0], ids[:, 0].tolist())]


def _check_encoder(decoder, encoder: Encoder) -> None:
    meta = decoder.meta
    if meta.get("encoder_id") != encoder.id or decoder.arch.embed_dim != encoder.dim:
        raise LCMError(f"the sentence decoder was trained on encoder {meta.get('encoder_id')!r} "
                       f"(dim {decoder.arch.embed_dim}), not {encoder.id!r} (dim {encoder.dim})")


class GenerativeDecoder(ConceptDecoder):
    """The trained sentence decoder alone; each output is re-encoded for its round-trip cosine.

    Args:
        decoder: a `SentenceDecoderLM` (e.g. `SentenceDecoderLM.from_checkpoint(path)`).
        encoder: the frozen encoder the decoder was trained on.
        beam: 1 = greedy; > 1 = beam search, the best hypothesis by length-normalized log-probability.
    """

    def __init__(self, decoder, encoder: Encoder, beam: int = 1):
        _check_encoder(decoder, encoder)
        if beam < 1:
            raise LCMError(f"beam must be >= 1, not {beam}")
        self.model, self.encoder, self.beam = decoder, encoder, beam
        self.encoder_id, self.dim = encoder.id, encoder.dim

    def generate(self, q: np.ndarray) -> list[list[str]]:
        """(N, D) -> N lists of hypotheses, best first (one for greedy)."""
        out = self.model.decode_texts(q, beam=self.beam)
        return [[t] for t in out] if self.beam <= 1 else out

    def decode(self, preds: np.ndarray) -> list[Decoded]:
        q = check_queries(preds, self.dim)
        texts = [h[0] for h in self.generate(q)]
        emb = self.encoder.encode(texts)
        return [Decoded(t, e, float(c), "generated") for t, e, c in zip(texts, emb, cosine_rows(emb, q))]


class HybridDecoder(ConceptDecoder):
    """Retrieval plus generation with a round-trip check.

    Per prediction: if the top bank sentence has cosine >= `threshold`, take it (cheap, exact text).
    Otherwise the candidates are the top-`k` bank sentences and the decoder's hypotheses (greedy, or
    `beam` beams); generated candidates are re-encoded with the frozen encoder, and the candidate whose
    embedding is closest to the prediction wins. `threshold > 1` always compares. `exclude`: bank texts never
    returned, as `RetrievalDecoder`'s.
    """

    def __init__(self, bank: SentenceBank, decoder, encoder: Encoder, k: int = 4, threshold: float = 0.95,
                 beam: int = 1, exclude: Iterable[str] = ()):
        if bank.encoder_id != encoder.id:
            raise LCMError(f"sentence bank encoder {bank.encoder_id!r} differs from {encoder.id!r}")
        if k < 1 or beam < 1:
            raise LCMError(f"hybrid decoding needs k >= 1 and beam >= 1 (got k={k}, beam={beam}; k=0 reads out with the "
                           "decoder alone)")
        self.retrieval = RetrievalDecoder(bank, exclude)
        self.generator = GenerativeDecoder(decoder, encoder, beam=beam)
        self.bank, self.encoder, self.k, self.threshold = bank, encoder, k, threshold
        self.encoder_id, self.dim = encoder.id, encoder.dim

    def decode(self, preds: np.ndarray) -> list[Decoded]:
        q = check_queries(preds, self.dim)
        scores, ids = self.bank.search(q, k=self.k, exclude=self.retrieval.exclude)  # (N, k)
        out: list[Decoded | None] = [None] * len(q)
        todo = []
        for n in range(len(q)):
            if scores[n, 0] >= self.threshold:
                out[n] = self.retrieval.hit(scores[n, 0], int(ids[n, 0]))
            else:
                todo.append(n)
        if todo:
            hyps = self.generator.generate(q[todo])
            flat = [t for h in hyps for t in h]
            emb = self.encoder.encode(flat)  # every generated candidate, one encoder call
            start = 0
            for n, h in zip(todo, hyps):
                cands = [self.retrieval.hit(s, i) for s, i in zip(scores[n], ids[n].tolist()) if i >= 0]
                gen_emb = emb[start:start + len(h)]
                cos = cosine_rows(gen_emb, np.repeat(q[n:n + 1], len(h), axis=0))
                cands += [Decoded(t, e, float(c), "generated") for t, e, c in zip(h, gen_emb, cos)]
                start += len(h)
                out[n] = max(cands, key=lambda d: d.score)
        return out


SONAR_HINT = ("the SONAR decoder needs the optional extra: pip install 'lcm-trainer[sonar]' "
              "(plus its fairseq2 runtime and model weights)")


class SonarDecoder(ConceptDecoder):
    """SONAR's embedding -> text decoder (1024-d SONAR space). Scores come from re-encoding with `encoder`
    (a `SonarEncoder`) when given, else they are NaN.

    Args:
        decoder / tokenizer: SONAR asset names, loaded by SONAR's own asset store (local card or cache).
        lang: target language code.
        max_seq_len: cap on generated tokens.
    """

    def __init__(self, decoder: str = "text_sonar_basic_decoder", tokenizer: str = "text_sonar_basic_decoder",
                 lang: str = "eng_Latn", encoder: Encoder | None = None, device: str = "cpu", max_seq_len: int = 128):
        self.decoder_name, self.tokenizer, self.lang, self.encoder = decoder, tokenizer, lang, encoder
        self.device, self.max_seq_len = device, max_seq_len
        self.encoder_id, self.dim = (encoder.id if encoder else "sonar"), 1024

    @cached_property
    def pipeline(self):
        try:
            import torch
            from sonar.inference_pipelines.text import EmbeddingToTextModelPipeline
        except ImportError as e:
            raise LCMError(f"{SONAR_HINT} ({type(e).__name__}: {e})") from e
        try:
            return EmbeddingToTextModelPipeline(decoder=self.decoder_name, tokenizer=self.tokenizer,
                                                device=torch.device(self.device))
        except Exception as e:  # noqa: BLE001 - missing weights / asset cards surface here
            raise LCMError(f"could not load SONAR decoder {self.decoder_name!r}: {type(e).__name__}: {e}") from e

    def decode(self, preds: np.ndarray) -> list[Decoded]:
        import torch

        q = check_queries(preds, self.dim)
        texts = list(self.pipeline.predict(torch.from_numpy(q), target_lang=self.lang, max_seq_len=self.max_seq_len))
        if self.encoder is None:
            return [Decoded(t, np.full(self.dim, np.nan, np.float32), float("nan"), "generated") for t in texts]
        emb = self.encoder.encode(texts)
        return [Decoded(t, e, float(c), "generated") for t, e, c in zip(texts, emb, cosine_rows(emb, q))]
