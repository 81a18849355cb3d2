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

from lcm.concepts import DEFAULT_BREAK_TEXT, DEFAULT_EOT_TEXT, PAD, TARGET_TYPES, ConceptType
from lcm.encoders.base import Encoder
from lcm.encoders.cache import EmbeddingCache
from lcm.encoders.sentence_transformer import SentenceTransformerEncoder
from lcm.errors import LCMError
from lcm.planners.paragraphs import Paragraph, group_by_similarity, group_fixed, is_section_header, structure
from lcm.planners.planner import ExtractivePlanner, Planner
from lcm.retrieval import SentenceBank
from lcm.train.corpus import CorpusSource
from lcm.train.documents import Document

SPLITS = ("train", "val", "test")


def split_of(doc: Document, val_fraction: float, test_fraction: float, seed: int) -> str:
    """Deterministic split from a hash of the prompt: stable across runs, machines and corpus sizes."""
    h = hashlib.blake2b(f"{seed}\x00{doc.prompt_text}".encode(), digest_size=8).digest()
    u = int.from_bytes(h, "big") / 2**64
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def check_split_args(val_fraction: float, test_fraction: float, max_chars: int) -> None:
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise LCMError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must leave training data")
    if max_chars < 16:
        raise LCMError(f"max_chars={max_chars} is too small to hold a sentence (use >= 16)")


def load_documents(source: CorpusSource, max_chars: int, val_fraction: float, test_fraction: float,
                   split_seed: int) -> tuple[dict[str, list[Document]], dict]:
    """A source's usable documents by split (blank and repeated problems skipped, counted in the stats).
    Every model -- concept, decoder, token baseline -- sees the same split of the same documents."""
    stats = {"blank": 0, "duplicate": 0}
    seen: set[str] = set()
    docs: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for doc in source.documents(max_chars):
        if doc.is_blank():
            stats["blank"] += 1
            continue
        if doc.prompt_text in seen:  # same problem twice would leak across splits
            stats["duplicate"] += 1
            continue
        seen.add(doc.prompt_text)
        docs[split_of(doc, val_fraction, test_fraction, split_seed)].append(doc)
    if not docs["train"]:
        n = sum(len(d) for d in docs.values())
        raise LCMError(f"{source.describe()}: no usable training documents "
                       f"({stats['blank']} blank skipped, {n} held out); check the source fields")
    return docs, stats


@dataclass
class Corpus:
    """Everything the model needs, built once: texts, their embeddings, and per-split sequences."""

    texts: list[str]  # unique sentences; row i of `table`
    table: np.ndarray  # (U, D) float32 embeddings
    docs: dict[str, list[Document]]
    seqs: dict[str, list[tuple[np.ndarray, np.ndarray]]]  # per doc: (ids (T,), types (T,))
    eot_id: int
    break_id: int = -1  # -1 without planning
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
        planning: paragraph-level planning: a plan concept before each paragraph and a break concept
            between paragraphs (see `lcm.planners`).
        planner: plan of a paragraph without a section header (default: `ExtractivePlanner`).
        max_paragraph_steps / min_paragraph_steps: longer paragraphs are cut, shorter ones merged.
        flat_grouping: how a document with one paragraph and no headers is grouped into paragraphs:
            "none", "fixed" (`group_size` steps each) or "similarity" (a new paragraph where the cosine
            of consecutive steps drops below `similarity_threshold`).
        break_text: the sentence whose embedding is the break concept.
    """

    def __init__(self, source: CorpusSource, encoder: Encoder | None = None, cache_dir: str = ".cache/lcm",
                 batch_size: int = 32, max_seq_len: int = 128, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, split_seed: int = 0, max_chars: int = 256,
                 eot_text: str = DEFAULT_EOT_TEXT, num_workers: int = 0, encode_batch_size: int = 64,
                 show_progress: bool = True, bank_index: Literal["auto", "flat", "hnsw"] = "auto",
                 hnsw_above: int = 100_000, planning: bool = False, planner: Planner | None = None,
                 max_paragraph_steps: int = 9, min_paragraph_steps: int = 2,
                 flat_grouping: Literal["none", "fixed", "similarity"] = "none", group_size: int = 3,
                 similarity_threshold: float = 0.5, break_text: str = DEFAULT_BREAK_TEXT):
        super().__init__()
        check_split_args(val_fraction, test_fraction, max_chars)
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
        self.planning = planning
        self.planner = planner if planner is not None else ExtractivePlanner()
        self.max_paragraph_steps = max_paragraph_steps
        self.min_paragraph_steps = min_paragraph_steps
        self.flat_grouping = flat_grouping
        self.group_size = group_size
        self.similarity_threshold = similarity_threshold
        self.break_text = break_text
        if planning and (max_paragraph_steps < 1 or min_paragraph_steps < 1 or group_size < 1):
            raise LCMError("max_paragraph_steps, min_paragraph_steps and group_size must be >= 1")
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

    def _build(self) -> Corpus:
        docs, stats = load_documents(self.source, self.max_chars, self.val_fraction, self.test_fraction,
                                     self.split_seed)
        index: dict[str, int] = {}
        texts: list[str] = []

        def row(text: str) -> int:
            if text not in index:
                index[text] = len(texts)
                texts.append(text)
            return index[text]

        eot_id = row(self.eot_text)
        break_id = row(self.break_text) if self.planning else -1
        for split_docs in docs.values():  # every sentence that can appear, headers included
            for doc in split_docs:
                for s in doc.prompt + doc.steps:
                    row(s)
        cache = self.cache()
        cached_before = len(texts) - len(cache.missing(texts))
        table = cache.get(texts)
        if table.shape[1] != self.encoder.dim:
            raise LCMError(f"cache dim {table.shape[1]} != encoder {self.encoder.id} dim {self.encoder.dim}")
        stats.update(sentences=len(texts), cached=cached_before, encoded=len(texts) - cached_before)
        extra: list[np.ndarray] = []  # plan vectors that are not a sentence's embedding (MeanPlanner)
        extra_index: dict[bytes, int] = {}

        def plan_row(steps: list[str]) -> int:
            text, vec = self.planner.plan(steps, table[[index[s] for s in steps]])
            if text in index and np.array_equal(vec, table[index[text]]):
                return index[text]
            key = vec.tobytes()
            if key not in extra_index:
                extra_index[key] = len(texts)
                texts.append(text)  # display text of the plan vector
                extra.append(vec)
            return extra_index[key]

        seqs: dict[str, list] = {s: [] for s in SPLITS}
        stats["truncated"] = stats["no_target"] = stats["paragraphs"] = 0
        for split, split_docs in docs.items():
            for doc in split_docs:
                ids = [index[s] for s in doc.prompt]
                types = [ConceptType.PROMPT] * len(doc.prompt)
                if self.planning:
                    paragraphs = self.paragraphs(doc, table, index)
                    stats["paragraphs"] += len(paragraphs)
                    for k, para in enumerate(paragraphs):
                        ids.append(index[para.header] if para.header is not None else plan_row(para.steps))
                        types.append(ConceptType.PLAN)
                        ids += [index[s] for s in para.steps]
                        types += [ConceptType.STEP] * len(para.steps)
                        if k < len(paragraphs) - 1:
                            ids.append(break_id)
                            types.append(ConceptType.BREAK)
                else:
                    ids += [index[s] for s in doc.steps]
                    types += [ConceptType.STEP] * len(doc.steps)
                ids.append(eot_id)
                types.append(ConceptType.EOT)
                if len(ids) > self.max_seq_len:
                    stats["truncated"] += 1
                    ids, types = ids[: self.max_seq_len], types[: self.max_seq_len]
                    if not any(t in TARGET_TYPES for t in types[1:]):  # a prompt that fills the whole context
                        stats["no_target"] += 1
                        continue
                seqs[split].append((np.asarray(ids, dtype=np.int32), np.asarray(types, dtype=np.int8)))
        if extra:
            table = np.concatenate([table, np.stack(extra)]).astype(np.float32)
        planning = (f"; planning: {stats['paragraphs']} paragraphs, {len(extra)} mean-plan vectors"
                    if self.planning else "")
        rank_zero_info(
            f"data: {self.source.describe()} -> train {len(docs['train'])} / val {len(docs['val'])} / "
            f"test {len(docs['test'])} documents ({stats['blank']} blank and {stats['duplicate']} duplicate skipped, "
            f"{stats['truncated']} truncated to {self.max_seq_len} concepts, {stats['no_target']} of them dropped: "
            f"the prompt fills the context); {stats['sentences']} unique sentences "
            f"({stats['encoded']} encoded now, {stats['cached']} from cache){planning}")
        return Corpus(texts=texts, table=table, docs=docs, seqs=seqs, eot_id=eot_id, break_id=break_id, stats=stats)

    def paragraphs(self, doc: Document, table: np.ndarray, index: dict[str, int]) -> list[Paragraph]:
        """A document's planned paragraphs; flat single-paragraph documents are grouped as configured."""
        raw = doc.paragraphs
        if len(raw) == 1 and not is_section_header(raw[0][0]) and self.flat_grouping != "none":
            if self.flat_grouping == "fixed":
                raw = group_fixed(raw[0], self.group_size)
            else:
                raw = group_by_similarity(raw[0], table[[index[s] for s in raw[0]]], self.similarity_threshold)
        return structure(raw, max_steps=self.max_paragraph_steps, min_steps=self.min_paragraph_steps)

    def documents(self, split: str) -> list[Document]:
        return self.corpus.docs[split]

    # ---- what the model asks for -----------------------------------------------------------------
    def train_targets(self) -> np.ndarray:
        """Training target embeddings with repetition (N, D): fits the normalizer and the mean baseline."""
        c = self.corpus
        rows = c.target_ids("train")
        if len(rows) < 2:
            raise LCMError(f"only {len(rows)} training target(s) (steps / end-of-text) fit in max_seq_len="
                           f"{self.max_seq_len} concepts; raise model.arch.max_seq_len or shorten the prompts")
        return c.table[rows]

    def retrieval_candidates(self, split: str) -> np.ndarray:
        """Table rows that count as candidates for next-step retrieval accuracy: every target sentence of
        the training split and of `split` (so the gold step is always findable)."""
        c = self.corpus
        return np.unique(np.concatenate([c.target_ids("train"), c.target_ids(split)]))

    def bank(self) -> SentenceBank:
        """The generation sentence bank: unique training steps plus the end-of-text sentence."""
        c = self.corpus
        return self._bank(np.concatenate([c.target_ids("train", (ConceptType.STEP,)), [c.eot_id]]))

    def plan_bank(self) -> SentenceBank | None:
        """Plans of the training split (planning only): what a predicted plan is decoded against."""
        rows = self.corpus.target_ids("train", (ConceptType.PLAN,))
        return self._bank(rows) if self.planning and len(rows) else None

    def _bank(self, rows: np.ndarray) -> SentenceBank:
        c = self.corpus
        rows = np.unique(rows)
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
