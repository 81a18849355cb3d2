"""Sentence-decoder data: (embedding, text) pairs of a split's unique sentences, from the same corpus,
splits and embedding cache as the concept model."""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from lcm.concepts import DEFAULT_EOT_TEXT
from lcm.encoders.base import Encoder
from lcm.errors import LCMError
from lcm.handoff import SentenceData
from lcm.retrieval import SentenceBank
from lcm.train.corpus import CorpusSource
from lcm.train.datamodule import ConceptDataModule
from lcm.train.loaders import make_loader
from lcm.train.store import read_rows


class SentenceCollate:
    def __init__(self, table: np.ndarray, texts: list[str]):
        self.table, self.texts = table, texts

    def __call__(self, rows: list[int]) -> dict:
        emb = read_rows(self.table, rows)  # (B, D); a mapped table is unmapped after the read
        return {"emb": torch.from_numpy(emb), "text": [self.texts[r] for r in rows]}


class SentenceDataModule(ConceptDataModule):
    """Batches `{"emb": (B, D), "text": [B strings]}` of single sentences from the same corpus, splits and
    embedding cache as `ConceptDataModule` (its arguments of the same names). Sequence options -- windows,
    packing, planning -- do not apply to single sentences and are not accepted.

    train = every unique sentence (prompts and steps) of the training documents; val / test = the
    sentences of those documents that never occur in training, so decoder scores are on unseen text.
    """

    def __init__(self, source: CorpusSource | None = None, encoder: Encoder | None = None,
                 cache_dir: str = ".cache/lcm", batch_size: int = 32, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, split_seed: int = 0, max_chars: int = 256, eot_text: str = DEFAULT_EOT_TEXT,
                 num_workers: int = 0, encode_batch_size: int = 64, show_progress: bool = True,
                 bank_index: Literal["auto", "flat", "hnsw"] = "auto", hnsw_above: int = 100_000,
                 store: str | None = None, store_dtype: Literal["float16", "float32"] = "float16", banks: bool = True,
                 encode_processes: int = 1):
        super().__init__(source=source, encoder=encoder, cache_dir=cache_dir, batch_size=batch_size,
                         val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed,
                         max_chars=max_chars, eot_text=eot_text, num_workers=num_workers,
                         encode_batch_size=encode_batch_size, show_progress=show_progress, bank_index=bank_index,
                         hnsw_above=hnsw_above, store=store, store_dtype=store_dtype, banks=banks,
                         encode_processes=encode_processes)

    def handoff(self) -> SentenceData:
        """What the sentence decoder needs from this data (`lcm.handoff.SentenceData`)."""
        return SentenceData(self.encoder_record(), lambda: self.decoder_sentences("train")[0])

    def decoder_sentences(self, split: str, steps_only: bool = False) -> tuple[list[str], np.ndarray]:
        """Unique sentences of `split` (minus every training sentence unless split == "train") and their
        table rows."""
        c = self.corpus
        train = set() if split == "train" else set(self.decoder_sentences("train")[0])
        seen: dict[str, None] = {}
        for doc in self.documents(split):
            for s in doc.steps if steps_only else doc.prompt + doc.steps:
                if s not in train:
                    seen.setdefault(s)
        texts = list(seen)
        row: dict[str, int] = {}
        for i, t in enumerate(c.texts):  # first occurrence: the sentence's own embedding, not a plan vector
            row.setdefault(t, i)
        return texts, np.asarray([row[t] for t in texts], dtype=np.int64)

    def bank(self) -> SentenceBank:
        """Retrieval over what the decoder was trained on: every unique training sentence + end-of-text."""
        return self._bank(np.concatenate([self.decoder_sentences("train")[1], [self.corpus.eot_id]]))

    def plan_bank(self) -> None:
        return None

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        _, rows = self.decoder_sentences(split)
        if not len(rows):
            raise LCMError(f"the {split} split has no sentences unseen in training; raise data.{split}_fraction")
        return make_loader(rows.tolist(), split, self.batch_size, shuffle,
                           SentenceCollate(self.corpus.table, self.corpus.texts), self.num_workers)
