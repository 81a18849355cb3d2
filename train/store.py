"""A prepared corpus on disk: the concept table and every split's sequences as memory-mapped arrays.

Layout of a store folder:
    manifest.json           format, encoder id, dim, dtype, row count, end-of-text / break rows, splits, stats
    table.npy               (U, D) float16: one row per unique concept (a sentence, or a mean-plan vector)
    texts.bin               UTF-8 text of every row, back to back
    texts.offsets.npy       (U + 1,) int64 byte offsets into texts.bin
    <split>.ids.npy         (N,) int32: table row of every concept, documents back to back
    <split>.types.npy       (N,) int8: `ConceptType` of every concept
    <split>.offsets.npy     (n_docs + 1,) int64: document d is concepts offsets[d]:offsets[d + 1]

Readers map every array (`np.load(mmap_mode="r")`): resident memory is what a batch touches, not the
corpus size, and DataLoader workers share the pages instead of copying them (`Mapped` reopens the file
in a worker rather than pickling its contents). A store is written under a temporary name and renamed
when complete, so it exists whole or not at all; its folder name is a hash of its content, so identical
corpora share one folder and a store can be carried to another machine and trained from (`data.store`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from lcm.errors import LCMError
from lcm.io import AtomicDir, write_json, write_npy

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
CHUNK_ROWS = 65_536  # table rows converted / hashed at a time: bounds the memory of writing a store
READ_ROWS = 2_048  # rows per chunk of `Mapped.rows` (each row read can map ~64 KB: the kernel faults around)


class Mapped:
    """A read-only memory-mapped .npy array that pickles as its path, not its data (DataLoader workers)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            try:
                self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise LCMError(f"prepared corpus file {self.path} is missing, corrupted or truncated "
                               f"({type(e).__name__}); rebuild it from its source (delete the folder and run "
                               "again with data.source)") from e
        return self._array

    def __getstate__(self) -> dict:
        return {"path": self.path, "_array": None}

    def release(self) -> None:
        """Unmap the file: pages a read touched leave this process's resident set (they stay in the page
        cache); the next access maps it again."""
        self._array = None

    def rows(self, index) -> np.ndarray:
        """Rows `index` (N,) as float32 (N, ...), read in sorted chunks of READ_ROWS and unmapped after each.
        The kernel maps ~16 neighbouring pages per fault, so without unmapping a few thousand random rows
        would put the whole file into the resident set of every process that reads it."""
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), *self.shape[1:]), dtype=np.float32)
        order = np.argsort(index, kind="stable")
        for a in range(0, len(index), READ_ROWS):
            sel = order[a:a + READ_ROWS]
            out[sel] = self.array[index[sel]]
            self.release()
        return out

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index):
        return self.array[index]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape


def read_rows(table, rows) -> np.ndarray:
    """Rows of a concept table -- a `Mapped` file (bounded resident memory) or an in-memory array -- as
    float32. (N, D)"""
    if isinstance(table, Mapped):
        return table.rows(rows)
    return np.asarray(table[np.asarray(rows, dtype=np.int64)], dtype=np.float32)


class Texts:
    """The display text of every table row, read from disk on demand (a list-like of str)."""

    def __init__(self, folder: Path):
        self.blob = Path(folder) / "texts.bin"
        self.offsets = Mapped(Path(folder) / "texts.offsets.npy")
        self._data: np.ndarray | None = None

    def _bytes(self) -> np.ndarray:
        if self._data is None:
            size = self.blob.stat().st_size
            self._data = np.memmap(self.blob, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        return self._data

    def __getstate__(self) -> dict:
        return {"blob": self.blob, "offsets": self.offsets, "_data": None}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self._bytes()[a:b].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


class Sequences:
    """One split's documents: `seqs[d]` -> (ids (T,) int32, types (T,) int8) of document d."""

    def __init__(self, folder: Path, split: str):
        folder = Path(folder)
        self.ids = Mapped(folder / f"{split}.ids.npy")
        self.types = Mapped(folder / f"{split}.types.npy")
        self.offsets = Mapped(folder / f"{split}.offsets.npy")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= d < len(self):
            raise IndexError(d)
        a, b = int(self.offsets[d]), int(self.offsets[d + 1])
        return np.asarray(self.ids[a:b]), np.asarray(self.types[a:b])

    def __iter__(self):
        return (self[d] for d in range(len(self)))


def _split_arrays(seqs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Documents -> the flat ids (N,) int32, types (N,) int8 and offsets (n_docs + 1,) int64 of a split."""
    ids, types, offsets = [], [], [0]
    for i, t in seqs:
        ids.append(np.asarray(i, dtype=np.int32))
        types.append(np.asarray(t, dtype=np.int8))
        offsets.append(offsets[-1] + len(i))
    return {"ids": np.concatenate(ids) if ids else np.zeros(0, np.int32),
            "types": np.concatenate(types) if types else np.zeros(0, np.int8),
            "offsets": np.asarray(offsets, dtype=np.int64)}


def _hash_texts(h, texts: Iterable[str]) -> None:
    for t in texts:  # length-prefixed: no two text lists hash alike
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)


def corpus_key(encoder_id: str, dtype: str, texts: list[str], extra: np.ndarray | None,
               seqs: dict[str, list[tuple[np.ndarray, np.ndarray]]], meta: dict) -> str:
    """The store folder name of a corpus, computed before anything is written: a sentence row's vector is
    fixed by (encoder id, text) through the embedding cache, so texts, the extra (plan) vectors, the
    sequences and the metadata determine the whole store."""
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps([FORMAT_VERSION, encoder_id, dtype, meta], sort_keys=True, default=str).encode())
    _hash_texts(h, texts)
    if extra is not None:
        h.update(np.ascontiguousarray(extra, dtype=np.float32).tobytes())
    for split in SPLITS:
        for a in _split_arrays(seqs.get(split, [])).values():
            h.update(a.tobytes())
    return h.hexdigest()


class StoreWriter:
    """Writes a store folder. Call `add_rows` with every table row in order, `add_split` once per split,
    then `finish`, which renames the folder into `root/<name>` (default: a hash of the content written)
    and returns that path; `abort` (or leaving a `with StoreWriter(...)` block by an exception) removes
    what was written. The folder is an `lcm.io.AtomicDir`: whole or absent, also after a crash."""

    def __init__(self, root: str | Path, n_rows: int, dim: int, encoder_id: str, dtype: str = "float16",
                 name: str | None = None):
        if dtype not in ("float16", "float32"):
            raise LCMError(f"store dtype must be float16 or float32, not {dtype!r}")
        self.root = Path(root)
        self.folder = AtomicDir(self.root)  # also removes the temp folders of killed writers
        self.tmp = self.folder.path
        self.name, self.n_rows, self.dim, self.dtype = name, n_rows, dim, dtype
        self.meta = {"format": FORMAT_VERSION, "encoder_id": encoder_id, "dim": dim, "dtype": dtype, "rows": n_rows,
                     "splits": {}}
        # streamed row by row into the temporary folder, which the final rename makes visible
        self.table = np.lib.format.open_memmap(self.tmp / "table.npy", mode="w+", dtype=dtype, shape=(n_rows, dim))
        self.filled = 0
        self.text_offsets = [0]
        self.texts = open(self.tmp / "texts.bin", "wb")
        # content hash (used when no name is given): vectors, texts and splits hashed apart, so how the rows
        # were chunked into add_rows calls does not change it
        self.hashes = {k: hashlib.blake2b(digest_size=12) for k in ("vectors", "texts", "splits")}

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def add_rows(self, texts: list[str], vectors: np.ndarray) -> None:
        """Append table rows: texts and their (n, D) float vectors."""
        n = len(texts)
        if vectors.shape != (n, self.dim) or self.filled + n > self.n_rows:
            raise LCMError(f"store rows of shape {vectors.shape} do not fit "
                           f"({self.filled} of {self.n_rows} filled, dim {self.dim})")
        cast = vectors.astype(self.dtype)
        if not np.isfinite(cast).all():
            raise LCMError(f"concept vectors contain NaN/inf or exceed the {self.dtype} range; "
                           "use data.store_dtype: float32")
        self.table[self.filled:self.filled + n] = cast
        self.hashes["vectors"].update(cast.tobytes())
        _hash_texts(self.hashes["texts"], texts)
        for t in texts:
            b = t.encode("utf-8")
            self.texts.write(b)
            self.text_offsets.append(self.text_offsets[-1] + len(b))
        self.filled += n

    def add_split(self, split: str, seqs: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        arrays = _split_arrays(seqs)
        self.hashes["splits"].update(split.encode())
        for name, a in arrays.items():
            write_npy(self.tmp / f"{split}.{name}.npy", a)
            self.hashes["splits"].update(a.tobytes())
        self.meta["splits"][split] = {"docs": len(arrays["offsets"]) - 1, "concepts": int(arrays["offsets"][-1])}

    def finish(self, **meta) -> Path:
        if self.filled != self.n_rows:
            raise LCMError(f"store has {self.filled} of {self.n_rows} table rows")
        self.texts.close()
        write_npy(self.tmp / "texts.offsets.npy", np.asarray(self.text_offsets, dtype=np.int64))
        self.table.flush()
        del self.table
        self.meta.update(meta)
        write_json(self.tmp / "manifest.json", self.meta)
        if self.name is None:
            h = hashlib.blake2b(digest_size=12)
            for part in self.hashes.values():
                h.update(part.digest())
            # content, not history: how many sentences were freshly encoded does not change the store
            h.update(json.dumps({k: v for k, v in self.meta.items() if k != "stats"}, sort_keys=True,
                                default=str).encode())
            self.name = h.hexdigest()
        final = self.root / self.name
        try:  # a folder already there with its manifest is a twin written by another rank: kept
            return self.folder.commit(final, complete="manifest.json")
        except OSError as e:
            raise LCMError(f"could not move the prepared corpus into {final} ({e}); delete that folder") from e

    def abort(self) -> None:
        self.texts.close()
        self.folder.abort()


def open_store(folder: str | Path, encoder_id: str | None = None) -> tuple[dict, Mapped, Texts, dict[str, Sequences]]:
    """(manifest, table (U, D), texts, {split: sequences}) of a store folder, checked for consistency."""
    folder = Path(folder)
    manifest = folder / "manifest.json"
    if not manifest.exists():
        raise LCMError(f"no prepared corpus at {folder} (missing manifest.json)")
    broken = (f"prepared corpus {folder} is corrupted or inconsistent ({{}}); rebuild it from its source "
              "(delete the folder and run again with data.source)")
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        rows, dim, splits = int(meta["rows"]), int(meta["dim"]), meta["splits"]
        int(meta["eot_id"])
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise LCMError(broken.format(f"manifest.json: {type(e).__name__} {e}")) from e
    if meta.get("format") != FORMAT_VERSION:
        raise LCMError(f"prepared corpus {folder} has format {meta.get('format')}, this version reads {FORMAT_VERSION}")
    if encoder_id is not None and meta.get("encoder_id") != encoder_id:
        raise LCMError(f"prepared corpus {folder} was encoded with {meta.get('encoder_id')!r}, the data config uses "
                       f"encoder {encoder_id!r}")
    table, texts = Mapped(folder / "table.npy"), Texts(folder)
    seqs = {s: Sequences(folder, s) for s in SPLITS}
    if table.shape != (rows, dim) or len(texts) != rows:
        raise LCMError(broken.format(f"manifest says {rows} x {dim}, table.npy is {table.shape}, "
                                     f"texts has {len(texts)} rows"))
    ends = np.asarray(texts.offsets[:])
    if not texts.blob.exists() or texts.blob.stat().st_size != ends[-1] or (np.diff(ends) < 0).any():
        raise LCMError(broken.format("texts.bin does not match texts.offsets.npy"))
    for s, seq in seqs.items():
        offsets = np.asarray(seq.offsets[:])
        n = int(offsets[-1]) if len(offsets) else -1
        if (len(seq.ids) != n or len(seq.types) != n or len(seq) != splits.get(s, {}).get("docs", -1)
                or (np.diff(offsets) < 0).any()):
            raise LCMError(broken.format(f"split {s} does not match its manifest"))
        if n > 0 and not 0 <= int(np.min(seq.ids[:])) <= int(np.max(seq.ids[:])) < rows:
            raise LCMError(broken.format(f"split {s} refers to table rows outside 0..{rows - 1}"))
    return meta, table, texts, seqs
