"""DataModule: documents -> cached embeddings -> padded (B, T, D) batches with target masks."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from lcm.concepts import DEFAULT_EOT_TEXT, PAD, TARGET_TYPES, ConceptType
from lcm.encoders.base import Encoder
from lcm.encoders.cache import EmbeddingCache
from lcm.encoders.sentence_transformer import SentenceTransformerEncoder
from lcm.errors import LCMError
from lcm.retrieval import SentenceBank
from lcm.train.corpus import CorpusSource
from lcm.train.documents import Document

SPLITS = ("train", "val", "test")


def split_of(doc: Document, val_fraction: float, test_fraction: float, seed: int) -> str:
    """Deterministic split from a hash of the prompt: stable across runs, machines and corpus sizes."""
    h = hashlib.blake2b(f"{seed}\x00{doc.prompt_text}".encode(), digest_size=8).digest()
    u = int.from_bytes(h, "big") / 2**64
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


@dataclass
class Corpus:
    """Everything the model needs, built once: texts, their embeddings, and per-split sequences."""

    texts: list[str]  # unique sentences; row i of `table`
    table: np.ndarray  # (U, D) float32 embeddings
    docs: dict[str, list[Document]]
    seqs: dict[str, list[tuple[np.ndarray, np.ndarray]]]  # per doc: (ids (T,), types (T,))
    eot_id: int
    stats: dict = field(default_factory=dict)

    def target_ids(self, split: str, types=TARGET_TYPES) -> np.ndarray:
        """Table rows of every target position of a split, with repetition. (N,)"""
        parts = [ids[np.isin(t, [int(x) for x in types])] for ids, t in self.seqs[split]]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class SequenceDataset(Dataset):
    def __init__(self, seqs: list[tuple[np.ndarray, np.ndarray]]):
        self.seqs = seqs

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.seqs[i]


class PadCollate:
    """Right-pads sequences and looks their embeddings up in the shared table."""

    def __init__(self, table: np.ndarray):
        self.table = torch.from_numpy(table)

    def __call__(self, items: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
        T = max(len(ids) for ids, _ in items)
        ids = torch.full((len(items), T), PAD, dtype=torch.long)
        types = torch.full((len(items), T), PAD, dtype=torch.long)
        for b, (i, t) in enumerate(items):
            ids[b, : len(i)] = torch.from_numpy(i.astype(np.int64))
            types[b, : len(t)] = torch.from_numpy(t.astype(np.int64))
        x = self.table[ids.clamp_min(0)] * (ids >= 0).unsqueeze(-1)  # (B, T, D), zeros at padding
        return {"x": x, "ids": ids, "types": types}


class ConceptDataModule(L.LightningDataModule):
    """Builds documents from a source, encodes every unique sentence once (cached), serves batches.

    Args:
        source: where documents come from (e.g. `GsmSymbolic`, `DatasetSource`).
        encoder: frozen sentence encoder (default: bundled all-MiniLM-L6-v2).
        cache_dir: embedding cache folder, reused across runs.
        batch_size: sequences per batch.
        max_seq_len: concepts per sequence; longer documents are truncated (counted in the summary).
        val_fraction / test_fraction: share of documents held out, split by a hash of the prompt.
        split_seed: changes which documents are held out.
        max_chars: sentences longer than this are re-split (encoders degrade past ~256 characters).
        eot_text: the sentence whose embedding is the end-of-text concept.
        num_workers: DataLoader workers.
        encode_batch_size: encoder batch size for the first encode.
        show_progress: progress bar while encoding.
        bank_index: faiss index of the generation sentence bank: exact "flat", "hnsw", or "auto"
            (HNSW above `hnsw_above` sentences).
        hnsw_above: bank size from which "auto" picks HNSW.
    """

    def __init__(self, source: CorpusSource, encoder: Encoder | None = None, cache_dir: str = ".cache/lcm",
                 batch_size: int = 32, max_seq_len: int = 128, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, split_seed: int = 0, max_chars: int = 256,
                 eot_text: str = DEFAULT_EOT_TEXT, num_workers: int = 0, encode_batch_size: int = 64,
                 show_progress: bool = True, bank_index: Literal["auto", "flat", "hnsw"] = "auto",
                 hnsw_above: int = 100_000):
        super().__init__()
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise LCMError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must leave training data")
        if max_chars < 16:
            raise LCMError(f"max_chars={max_chars} is too small to hold a sentence (use >= 16)")
        self.source = source
        self.encoder = encoder if encoder is not None else SentenceTransformerEncoder()
        self.cache_dir = Path(cache_dir)
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.max_chars = max_chars
        self.eot_text = eot_text
        self.num_workers = num_workers
        self.encode_batch_size = encode_batch_size
        self.show_progress = show_progress
        self.bank_index = bank_index
        self.hnsw_above = hnsw_above
        self._corpus: Corpus | None = None

    @property
    def embed_dim(self) -> int:
        return self.encoder.dim

    def cache(self) -> EmbeddingCache:
        return EmbeddingCache(self.cache_dir, self.encoder, batch_size=self.encode_batch_size,
                              show_progress=self.show_progress)

    # ---- building --------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.corpus  # encodes on rank 0; other ranks then find everything cached

    def setup(self, stage: str | None = None) -> None:
        self.corpus

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            self._corpus = self._build()
        return self._corpus

    def _load_documents(self) -> tuple[dict[str, list[Document]], dict]:
        stats = {"blank": 0, "duplicate": 0}
        seen: set[str] = set()
        docs: dict[str, list[Document]] = {s: [] for s in SPLITS}
        for doc in self.source.documents(self.max_chars):
            if doc.is_blank():
                stats["blank"] += 1
                continue
            if doc.prompt_text in seen:  # same problem twice would leak across splits
                stats["duplicate"] += 1
                continue
            seen.add(doc.prompt_text)
            docs[split_of(doc, self.val_fraction, self.test_fraction, self.split_seed)].append(doc)
        if not docs["train"]:
            n = sum(len(d) for d in docs.values())
            raise LCMError(f"{self.source.describe()}: no usable training documents "
                           f"({stats['blank']} blank skipped, {n} held out); check the source fields")
        return docs, stats

    def _build(self) -> Corpus:
        docs, stats = self._load_documents()
        index: dict[str, int] = {}
        texts: list[str] = []

        def row(text: str) -> int:
            if text not in index:
                index[text] = len(texts)
                texts.append(text)
            return index[text]

        eot_id = row(self.eot_text)
        seqs: dict[str, list] = {s: [] for s in SPLITS}
        stats["truncated"] = 0
        for split, split_docs in docs.items():
            for doc in split_docs:
                ids = [row(s) for s in doc.prompt] + [row(s) for s in doc.steps] + [eot_id]
                types = [ConceptType.PROMPT] * len(doc.prompt) + [ConceptType.STEP] * len(doc.steps) + [ConceptType.EOT]
                if len(ids) > self.max_seq_len:
                    stats["truncated"] += 1
                    ids, types = ids[: self.max_seq_len], types[: self.max_seq_len]
                seqs[split].append((np.asarray(ids, dtype=np.int32), np.asarray(types, dtype=np.int8)))
        cache = self.cache()
        cached_before = len(texts) - len(cache.missing(texts))
        table = cache.get(texts)
        if table.shape[1] != self.encoder.dim:
            raise LCMError(f"cache dim {table.shape[1]} != encoder {self.encoder.id} dim {self.encoder.dim}")
        stats.update(sentences=len(texts), cached=cached_before, encoded=len(texts) - cached_before)
        rank_zero_info(
            f"data: {self.source.describe()} -> train {len(docs['train'])} / val {len(docs['val'])} / "
            f"test {len(docs['test'])} documents ({stats['blank']} blank and {stats['duplicate']} duplicate skipped, "
            f"{stats['truncated']} truncated to {self.max_seq_len} concepts); {len(texts)} unique sentences "
            f"({stats['encoded']} encoded now, {stats['cached']} from cache)")
        return Corpus(texts=texts, table=table, docs=docs, seqs=seqs, eot_id=eot_id, stats=stats)

    # ---- what the model asks for -----------------------------------------------------------------
    def train_targets(self) -> np.ndarray:
        """Training target embeddings with repetition (N, D): fits the normalizer and the mean baseline."""
        c = self.corpus
        return c.table[c.target_ids("train")]

    def retrieval_candidates(self, split: str) -> np.ndarray:
        """Table rows that count as candidates for next-step retrieval accuracy: every target sentence of
        the training split and of `split` (so the gold step is always findable)."""
        c = self.corpus
        return np.unique(np.concatenate([c.target_ids("train"), c.target_ids(split)]))

    def bank(self) -> SentenceBank:
        """The generation sentence bank: unique training steps plus the end-of-text sentence."""
        c = self.corpus
        rows = np.unique(np.concatenate([c.target_ids("train"), [c.eot_id]]))
        return SentenceBank([c.texts[i] for i in rows], c.table[rows], self.encoder.id, index=self.bank_index,
                            hnsw_above=self.hnsw_above)

    # ---- loaders ---------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        seqs = self.corpus.seqs[split]
        if not seqs:
            raise LCMError(f"the {split} split is empty; raise data.{split}_fraction or add documents")
        return DataLoader(SequenceDataset(seqs), batch_size=self.batch_size, shuffle=shuffle,
                          collate_fn=PadCollate(self.corpus.table), num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
