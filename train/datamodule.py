"""DataModule: documents -> cached embeddings -> padded (B, T, D) batches with target masks."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lcm.concepts import DEFAULT_EOT_TEXT, TARGET_TYPES, ConceptType, layout_mismatch
from lcm.encoders.base import Encoder
from lcm.encoders.cache import EmbeddingCache
from lcm.encoders.sentence_transformer import SentenceTransformerEncoder
from lcm.errors import LCMError
from lcm.handoff import ConceptData, EncoderRecord, hand_over
from lcm.planners.planner import Planner
from lcm.planners.planning import Planning
from lcm.retrieval import SentenceBank
from lcm.train.corpus import CorpusSource
from lcm.train.documents import Document
from lcm.train.loaders import SplitLoaders, make_loader
from lcm.train.store import CHUNK_ROWS, SPLITS, Mapped, Sequences, StoreWriter, Texts, corpus_key, open_store
from lcm.train.windows import LongDocuments, PadCollate, WindowDataset, cut_segments, pack_segments

MAX_FIT_TARGETS = 200_000  # normalizer / mean baseline fitted on at most this many training targets (seeded sample)


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
    Every model -- concept, decoder, token baseline -- sees the same split of the same documents. Documents of a
    later problem set (`meta["problem_set"]` > 0: fresh training problems for later epochs) are training-only:
    the held-out problems are those of set 0, and a later one the split hash would hold out is dropped
    (counted), so no held-out problem is ever trained on."""
    stats = {"blank": 0, "duplicate": 0, "held_out_later_sets": 0}
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
        split = split_of(doc, val_fraction, test_fraction, split_seed)
        if split != "train" and doc.meta.get("problem_set", 0) > 0:
            stats["held_out_later_sets"] += 1
            continue
        docs[split].append(doc)
    if not docs["train"]:
        n = sum(len(d) for d in docs.values())
        raise LCMError(f"{source.describe()}: no usable training documents "
                       f"({stats['blank']} blank skipped, {n} held out); check the source fields")
    return docs, stats


@dataclass
class Corpus:
    """Everything the model needs, built once: row texts, the concept table and per-split documents, all
    in a prepared store on disk (`lcm.train.store`) and memory-mapped from there."""

    texts: list[str] | Texts  # display text of table row i
    table: Mapped  # (U, D) float16 / float32 concept vectors, memory-mapped
    docs: dict[str, list[Document]]  # empty when trained from a store alone
    seqs: dict[str, Sequences]  # per split: documents as (ids (T,), types (T,))
    eot_id: int
    break_id: int = -1  # -1 without planning
    stats: dict = field(default_factory=dict)
    folder: Path | None = None  # the store
    train_sets: np.ndarray | None = None  # (n_train_docs,) problem set of each training document (sources with sets)

    def vectors(self, rows) -> np.ndarray:
        """Table rows as float32, read with bounded resident memory (`Mapped.rows`). (N, D)"""
        return self.table.rows(rows)


class ConceptTable:
    """Rows of the concept table while a corpus is built: each unique sentence once (encoded through the
    embedding cache), then plan vectors that are no sentence's embedding (e.g. `MeanPlanner`'s)."""

    def __init__(self, cache: EmbeddingCache, planner: Planner | None):
        self.cache, self.planner = cache, planner
        self.index: dict[str, int] = {}
        self.texts: list[str] = []
        self.n_sentences = 0
        self.extra: list[np.ndarray] = []  # (D,) plan vectors, rows n_sentences...
        self._extra_index: dict[bytes, int] = {}

    def row(self, text: str) -> int:
        if text not in self.index:
            self.index[text] = len(self.texts)
            self.texts.append(text)
        return self.index[text]

    def encode(self) -> dict:
        """Encode the sentences the cache lacks; returns the encode counts for the data summary."""
        cached_before = len(self.texts) - len(self.cache.missing(self.texts))
        start = time.perf_counter()
        self.cache.ensure(self.texts)
        self.n_sentences = len(self.texts)
        return {"sentences": self.n_sentences, "cached": cached_before, "encoded": self.n_sentences - cached_before,
                "encode_seconds": round(time.perf_counter() - start, 3)}

    def vectors(self, rows: list[int]) -> np.ndarray:
        """(n, D) float32 straight from the embedding cache (sentence rows only)."""
        return self.cache.get([self.texts[r] for r in rows])

    def plan_row(self, steps: list[str]) -> int:
        """Row of a paragraph's plan: the sentence's own row when the planner picks a sentence's embedding,
        else a new row holding the plan vector (shared by identical vectors)."""
        text, vec = self.planner.plan(steps, self.vectors([self.index[s] for s in steps]))
        if text in self.index and np.array_equal(vec, self.vectors([self.index[text]])[0]):
            return self.index[text]
        key = vec.tobytes()
        if key not in self._extra_index:
            self._extra_index[key] = len(self.texts)
            self.texts.append(text)  # display text of the plan vector
            self.extra.append(vec)
        return self._extra_index[key]


class ConceptDataModule(SplitLoaders, L.LightningDataModule):
    """Builds documents from a source, encodes every unique sentence once (cached), serves batches.

    Args:
        source: where documents come from (e.g. `GsmSymbolic`, `DatasetSource`). Their concepts are
            written to a prepared store under `<cache_dir>/corpora/` (memory-mapped; see `lcm.train.store`).
        store: train from a prepared store folder instead of a source (no documents, no encoding: e.g. a
            store carried to a GPU machine, or one too large to rebuild per run). Its splits and its
            `max_chars` are used; the split settings of the config are not.
        encoder: frozen sentence encoder (default: bundled all-MiniLM-L6-v2).
        cache_dir: embedding cache folder, reused across runs.
        batch_size: sequences per batch.
        max_seq_len: concepts per training window (the model's context).
        long_documents: documents longer than `max_seq_len`: "wrap" into consecutive windows (nothing is
            lost; the LCM paper wraps at 128) or "truncate" to their first `max_seq_len` concepts.
        pack: pack short documents together into windows of `max_seq_len` concepts; the model masks
            attention across documents and restarts positions in each.
        store_dtype: dtype of the stored concept table ("float16" halves memory and disk).
        banks: write the retrieval sentence banks next to the checkpoints at fit start. Turn off for very
            large corpora and build them later with `lcm validate ... --data.banks true`.
        val_retrieval_max: teacher-forced retrieval accuracy searches every target of the split plus
            training targets up to this many candidates in all (a seeded sample above it).
        val_fraction / test_fraction: share of documents held out, split by a hash of the prompt.
        split_seed: changes which documents are held out.
        max_chars: sentences longer than this are re-split (encoders degrade past ~256 characters).
        eot_text: the sentence whose embedding is the end-of-text concept.
        num_workers: DataLoader workers.
        encode_batch_size: sentences per encoder call when encoding what the cache lacks.
        encode_processes: encoder processes for that (one per GPU; on CPU they share the cores). The vectors
            do not depend on it; `lcm embed -c CONFIG --data.encode_processes N` encodes without training.
        show_progress: progress bar while encoding.
        bank_index: faiss index of the generation sentence bank: exact "flat", "hnsw", or "auto"
            (HNSW above `hnsw_above` sentences).
        hnsw_above: bank size from which "auto" picks HNSW.
        planning: paragraph-level planning (`lcm.planners.Planning`: planner, paragraph sizes, grouping, break
            sentence): a plan concept before each paragraph and a break concept between paragraphs. None = off;
            YAML `planning: {}` turns it on with the defaults.
    """

    def __init__(self, source: CorpusSource | None = None, encoder: Encoder | None = None, cache_dir: str = ".cache/lcm",
                 batch_size: int = 32, max_seq_len: int = 128, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, split_seed: int = 0, max_chars: int = 256,
                 eot_text: str = DEFAULT_EOT_TEXT, num_workers: int = 0, encode_batch_size: int = 64,
                 show_progress: bool = True, bank_index: Literal["auto", "flat", "hnsw"] = "auto",
                 hnsw_above: int = 100_000, planning: Planning | None = None, store: str | None = None,
                 long_documents: LongDocuments = "wrap", pack: bool = False,
                 store_dtype: Literal["float16", "float32"] = "float16", banks: bool = True,
                 val_retrieval_max: int = 100_000, encode_processes: int = 1):
        super().__init__()
        check_split_args(val_fraction, test_fraction, max_chars)
        if (source is None) == (store is None):
            raise LCMError("give the data either a source (data.source) or a prepared store (data.store), not "
                           + ("both" if source is not None else "neither"))
        if long_documents not in ("wrap", "truncate"):
            raise LCMError(f"long_documents must be wrap or truncate, not {long_documents!r}")
        self.source = source
        self.store = store
        self.long_documents = long_documents
        self.pack = pack
        self.store_dtype = store_dtype
        self.banks = banks
        self.val_retrieval_max = val_retrieval_max
        self._segments: dict[str, np.ndarray] = {}
        self._packed: dict[str, list[np.ndarray]] = {}
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
        self.encode_processes = encode_processes
        self.show_progress = show_progress
        self.bank_index = bank_index
        self.hnsw_above = hnsw_above
        self.planning = planning
        self._corpus: Corpus | None = None

    @property
    def break_text(self) -> str | None:
        """The break sentence (planning only)."""
        return self.planning.break_text if self.planning is not None else None

    @property
    def embed_dim(self) -> int:
        return self.encoder.dim

    def cache(self) -> EmbeddingCache:
        return EmbeddingCache(self.cache_dir, self.encoder, batch_size=self.encode_batch_size,
                              show_progress=self.show_progress, processes=self.encode_processes)

    # ---- building --------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.corpus  # encodes and writes the store on rank 0; other ranks then find both on disk

    def setup(self, stage: str | None = None) -> None:
        self.corpus
        if self.trainer is not None:  # the data side hands the model what it needs; the model never reads us
            self._handoff = self.handoff()  # owned here: the model keeps a weak reference
            hand_over(self.trainer.lightning_module, self._handoff)

    def encoder_record(self) -> EncoderRecord:
        return EncoderRecord(self.encoder.config(), self.encoder.id, self.encoder.dim)

    def handoff(self) -> ConceptData:
        """What a concept model needs from this data (`lcm.handoff.ConceptData`)."""
        c = self.corpus
        return ConceptData(
            encoder=self.encoder_record(), eot_text=self.eot_text, max_chars=self.max_chars,
            planning=self.planning is not None, break_text=self.break_text,
            planner=self.planning.planner_path if self.planning else None, corpus=self.corpus_key,
            prompt_format=self.prompt_format,
            eot_vector=c.vectors([c.eot_id])[0], break_vector=c.vectors([c.break_id])[0] if self.planning else None,
            fit_targets=self.train_targets, retrieval_candidates=self._retrieval_vectors)

    @property
    def prompt_format(self) -> str:
        """How the source split problem text into prompt concepts (a store records its source's)."""
        if self.source is not None:
            return self.source.prompt_format
        self.corpus  # opening the store reads its record
        return self._store_prompt_format

    @property
    def corpus_key(self) -> str:
        """Content key of the prepared corpus (its store folder's name)."""
        return Path(self.corpus.folder).name

    def _retrieval_vectors(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        rows = self.retrieval_candidates(split)
        return rows, self.corpus.vectors(rows)

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            self._corpus = self._build()
        return self._corpus

    def _build(self) -> Corpus:
        corpus = self._open_store() if self.store is not None else self._build_store()
        stats = corpus.stats
        for split in SPLITS:  # windows now: their counts belong in the summary
            for k, v in self._window_stats(corpus, split).items():
                stats[k] = stats.get(k, 0) + v
        n_docs = {s: len(corpus.seqs[s]) for s in SPLITS}
        where = f"prepared store {corpus.folder}"
        if self.store is None:
            where = (f"{self.source.describe()} ({stats['blank']} blank and {stats['duplicate']} duplicate "
                     f"skipped; {stats['sentences']} unique sentences, {stats['encoded']} encoded now, "
                     f"{stats['cached']} from cache; stored in {corpus.folder})")
        planning = (f"; planning: {stats['paragraphs']} paragraphs, {stats.get('plan_vectors', 0)} mean-plan vectors"
                    if self.planning and "paragraphs" in stats else "")
        handled = (f"{stats['wrapped']} wrapped" if self.long_documents == "wrap" else f"{stats['truncated']} truncated")
        rank_zero_info(
            f"data: {where} -> train {n_docs['train']} / val {n_docs['val']} / test {n_docs['test']} documents; "
            f"{stats['long_documents']} longer than {self.max_seq_len} concepts ({handled}), {stats['no_target']} "
            f"window(s) without a target dropped{'; packed' if self.pack else ''}{planning}")
        return corpus

    def _open_store(self) -> Corpus:
        meta, table, texts, seqs = open_store(self.store, encoder_id=self.encoder.id)
        if meta["dim"] != self.encoder.dim:
            raise LCMError(f"prepared corpus {self.store} has dimension {meta['dim']}, encoder {self.encoder.id} "
                           f"has {self.encoder.dim}")
        # a store always records its end-of-text sentence: a missing one disagrees with any config
        diff = layout_mismatch({"eot_text": None, **meta}, self.planning is not None, self.eot_text, self.break_text,
                               "store")
        if diff:
            raise LCMError(f"prepared corpus {self.store} and the data config disagree ({diff})")
        if "max_chars" in meta:  # generation must split prompts as the store's sentences were split
            self.max_chars = int(meta["max_chars"])
        self._store_prompt_format = meta.get("prompt_format", "sentences")
        sets = np.asarray(meta["train_sets"]) if "train_sets" in meta else None
        return Corpus(texts=texts, table=table, docs={s: [] for s in SPLITS}, seqs=seqs, eot_id=int(meta["eot_id"]),
                      break_id=int(meta.get("break_id", -1)), stats=dict(meta.get("stats", {})), folder=Path(self.store),
                      train_sets=sets)

    def _build_store(self) -> Corpus:
        """Documents -> unique sentences (encoded once, cached) -> a prepared store -> a memory-mapped Corpus."""
        docs, stats = load_documents(self.source, self.max_chars, self.val_fraction, self.test_fraction,
                                     self.split_seed)
        table = ConceptTable(self.cache(), self.planning.planner if self.planning else None)
        eot_id = table.row(self.eot_text)
        break_id = table.row(self.break_text) if self.planning else -1
        for split_docs in docs.values():  # every sentence that can appear, headers included
            for doc in split_docs:
                for s in doc.prompt + doc.steps:
                    table.row(s)
        stats.update(table.encode())
        seqs: dict[str, list] = {s: [] for s in SPLITS}
        stats["paragraphs"] = 0
        for split, split_docs in docs.items():
            for doc in split_docs:
                ids, types, n_paragraphs = self._sequence(doc, table, break_id)
                stats["paragraphs"] += n_paragraphs
                ids.append(eot_id)
                types.append(ConceptType.EOT)
                seqs[split].append((np.asarray(ids, dtype=np.int32), np.asarray(types, dtype=np.int8)))
        stats["plan_vectors"] = len(table.extra)
        extra_table = np.stack(table.extra).astype(np.float32) if table.extra else None
        meta = {"eot_id": eot_id, "break_id": break_id, "planning": self.planning is not None, "eot_text": self.eot_text,
                "break_text": self.break_text, "source": self.source.describe(),
                "max_chars": self.max_chars, "split": [self.val_fraction, self.test_fraction, self.split_seed]}
        if self.source.prompt_format != "sentences":  # absent = sentences: keys of earlier stores stay valid
            meta["prompt_format"] = self.source.prompt_format
        sets = [int(d.meta.get("problem_set", 0)) for d in docs["train"]]
        if any(sets):  # absent = one set: keys of earlier stores stay valid
            meta["train_sets"] = sets
        root = self.cache_dir / "corpora"
        key = corpus_key(self.encoder.id, self.store_dtype, table.texts, extra_table, seqs, meta)
        if not (root / key / "manifest.json").exists():  # built by an earlier run (or rank 0) otherwise
            self._write_store(root, key, table.texts, table.n_sentences, table.vectors, extra_table, seqs,
                              meta | {"stats": stats})
        _, mapped, _, stored = open_store(root / key, encoder_id=self.encoder.id)
        return Corpus(texts=table.texts, table=mapped, docs=docs, seqs=stored, eot_id=eot_id, break_id=break_id,
                      stats=stats, folder=root / key, train_sets=np.asarray(sets) if any(sets) else None)

    def _sequence(self, doc: Document, table: "ConceptTable", break_id: int) -> tuple[list[int], list[int], int]:
        """A document's table rows and position types, without the closing end-of-text; and its paragraphs
        (planning: plan, steps, break between paragraphs)."""
        ids = [table.index[s] for s in doc.prompt]
        types = [ConceptType.PROMPT] * len(doc.prompt)
        if not self.planning:
            return ids + [table.index[s] for s in doc.steps], types + [ConceptType.STEP] * len(doc.steps), 0
        paragraphs = self.planning.paragraphs(doc.paragraphs, lambda texts: table.vectors([table.index[t] for t in texts]))
        for k, para in enumerate(paragraphs):
            ids.append(table.index[para.header] if para.header is not None else table.plan_row(para.steps))
            types.append(ConceptType.PLAN)
            ids += [table.index[s] for s in para.steps]
            types += [ConceptType.STEP] * len(para.steps)
            if k < len(paragraphs) - 1:
                ids.append(break_id)
                types.append(ConceptType.BREAK)
        return ids, types, len(paragraphs)

    def _write_store(self, root: Path, key: str, texts: list[str], n_sentences: int, vectors, extra_table,
                     seqs: dict, meta: dict) -> None:
        writer = StoreWriter(root, len(texts), self.encoder.dim, self.encoder.id, self.store_dtype, name=key)
        try:
            for a in range(0, n_sentences, CHUNK_ROWS):  # chunked: the float32 table is never whole in memory
                rows = list(range(a, min(a + CHUNK_ROWS, n_sentences)))
                writer.add_rows(texts[a:rows[-1] + 1], vectors(rows))
            if extra_table is not None:
                writer.add_rows(texts[n_sentences:], extra_table)
            for split in SPLITS:
                writer.add_split(split, seqs[split])
            writer.finish(**meta)
        except BaseException:
            writer.abort()
            raise

    def documents(self, split: str) -> list[Document]:
        """A split's documents (read from the source; the corpus is not built for this)."""
        if self.store is not None:
            raise LCMError(f"data.store {self.store} holds concepts, not documents: evaluation and generation "
                           "previews need the data source it was prepared from")
        if self._corpus is not None:
            return self._corpus.docs[split]
        return load_documents(self.source, self.max_chars, self.val_fraction, self.test_fraction, self.split_seed)[0][split]

    # ---- windows ---------------------------------------------------------------------------------
    def _window_stats(self, corpus: Corpus, split: str) -> dict:
        seqs = corpus.seqs[split]
        seg, stats = cut_segments(seqs.offsets[:], seqs.types[:], self.max_seq_len, self.long_documents)
        self._segments[split] = seg
        return stats

    def window_segments(self, split: str) -> np.ndarray:
        """[start, end) of every training window segment of a split, in its flat arrays. (S, 2)"""
        if split not in self._segments:
            self._window_stats(self.corpus, split)
        return self._segments[split]

    def target_rows(self, split: str, types=TARGET_TYPES) -> np.ndarray:
        """Table rows of every loss target of a split (a window's first concept is never one), with
        repetition. (N,)"""
        seqs, seg = self.corpus.seqs[split], self.window_segments(split)
        n = len(seqs.ids)
        if not len(seg):
            return np.zeros(0, dtype=np.int64)
        edge = np.zeros(n + 1, dtype=np.int64)  # +1 where a segment's targets start, -1 where it ends
        np.add.at(edge, seg[:, 0] + 1, 1)
        np.add.at(edge, seg[:, 1], -1)
        inside = np.cumsum(edge[:n]) > 0
        keep = inside & np.isin(seqs.types[:], [int(t) for t in types])
        return np.asarray(seqs.ids[:], dtype=np.int64)[keep]

    # ---- what the model asks for -----------------------------------------------------------------
    def train_targets(self) -> np.ndarray:
        """Training target embeddings with repetition (N, D) float32 -- a seeded sample of at most
        MAX_FIT_TARGETS: fits the normalizer and the mean baseline."""
        rows = self.target_rows("train")
        if len(rows) < 2:
            raise LCMError(f"only {len(rows)} training target(s) (steps / end-of-text) fit in max_seq_len="
                           f"{self.max_seq_len} concepts; raise model.arch.max_seq_len or shorten the prompts")
        if len(rows) > MAX_FIT_TARGETS:
            rows = np.random.default_rng(self.split_seed).choice(rows, MAX_FIT_TARGETS, replace=False)
        return self.corpus.vectors(rows)

    def retrieval_candidates(self, split: str) -> np.ndarray:
        """Table rows that count as candidates for next-step retrieval accuracy: every target sentence of
        `split` (so the gold step is always findable) and of the training split, the latter sampled
        (seeded) when both together exceed `val_retrieval_max`."""
        own = np.unique(self.target_rows(split))
        train = np.setdiff1d(np.unique(self.target_rows("train")), own)
        room = max(0, self.val_retrieval_max - len(own))
        if len(train) > room:
            train = np.random.default_rng(self.split_seed).choice(train, room, replace=False)
        return np.union1d(own, train)

    def bank(self) -> SentenceBank:
        """The generation sentence bank: unique training steps plus the end-of-text sentence."""
        c = self.corpus
        return self._bank(np.concatenate([self.target_rows("train", (ConceptType.STEP,)), [c.eot_id]]))

    def plan_bank(self) -> SentenceBank | None:
        """Plans of the training split (planning only): what a predicted plan is decoded against."""
        rows = self.target_rows("train", (ConceptType.PLAN,))
        return self._bank(rows) if self.planning and len(rows) else None

    def banks_to_write(self) -> dict:
        """Banks that go next to the checkpoints, `{folder name: () -> SentenceBank | None}` (none when
        `banks` is off); written by `lcm.train.callbacks.BankWriter`."""
        return {"bank": self.bank, "plan_bank": self.plan_bank} if self.banks else {}

    def _bank(self, rows: np.ndarray) -> SentenceBank:
        c = self.corpus
        rows = np.unique(rows)
        return SentenceBank([c.texts[i] for i in rows], c.vectors(rows), self.encoder.id, index=self.bank_index,
                            hnsw_above=self.hnsw_above)

    # ---- loaders ---------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        seg = self.window_segments(split)
        if self.pack and len(seg) and split not in self._packed:  # packed once (seeded); shuffled per epoch
            self._packed[split] = pack_segments(seg, self.max_seq_len, self.split_seed)
        windows = self._packed[split] if self.pack and len(seg) else seg
        return make_loader(WindowDataset(self.corpus.seqs[split], windows, self.pack), split, self.batch_size,
                           shuffle, PadCollate(self.corpus.table), self.num_workers, sets=self._window_sets(split))

    def _window_sets(self, split: str) -> np.ndarray | None:
        """(windows,) the problem set of each training window's document (sources with several sets), else None."""
        sets = self.corpus.train_sets
        if split != "train" or sets is None:
            return None
        if self.pack:
            raise LCMError("data.pack mixes documents in one window: it cannot serve one problem set per epoch; "
                           "turn pack off or use one problem set")
        doc = np.searchsorted(self.corpus.seqs[split].offsets[:], self.window_segments(split)[:, 0], side="right") - 1
        return sets[doc]
