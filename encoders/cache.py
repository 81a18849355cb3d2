"""Content-addressed on-disk embedding cache: every unique sentence is encoded once per encoder, ever.

Layout under `<root>/<encoder-slug>/`:
    manifest.json               encoder id, dim, dtype, format version
    shard-<time>-<random>.emb.npy    float32 (n, D)
    shard-<time>-<random>.keys.npy   uint8 (n, 16) blake2b-128 of the UTF-8 text
Each shard is written atomically, embeddings first and keys last, so a shard exists only once its keys
file does; an interrupted encode keeps every finished shard and the next run encodes only the rest.

The cache decides the encoder's batches itself (longest sentences first, `batch_size` per encoder call), so
a sentence's embedding does not depend on how the work is split: one process or several
(`lcm.encoders.parallel`, each taking every N-th batch) encode the same batches and store the same vectors,
and the progress bar moves once per batch.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from lcm.encoders.base import Encoder
from lcm.errors import LCMError
from lcm.io import write_json, write_npy

FORMAT_VERSION = 1


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def encoder_slug(encoder_id: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder_id)[:60]
    return f"{readable}-{hashlib.blake2b(encoder_id.encode(), digest_size=4).hexdigest()}"


def check_finite(emb: np.ndarray, texts: list[str]) -> None:
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LCMError(f"encoder returned NaN/inf for {int(bad.sum())} sentence(s), e.g. {texts[i][:80]!r}; "
                       "nothing was cached for them")


def plan_batches(todo: list[str], batch_size: int) -> list[list[str]]:
    """Unique texts -> the encoder's batches: longest first, so similar lengths share a batch (less padding)
    and the ETA is pessimistic, not optimistic. Ties keep their order (a stable sort), so the batches -- and
    the vectors, which depend on a batch's padding -- are the same however many processes encode them."""
    ordered = sorted(todo, key=len, reverse=True)
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An advisory lock held by one process at a time (POSIX `flock`; released if the process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, two processes may encode the same sentences (still consistent)
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class EmbeddingCache:
    """Maps sentence texts to embeddings of one encoder, encoding only what is not on disk yet.

    Args:
        root: cache folder (shared by all encoders; each gets its own sub-folder).
        encoder: the frozen encoder. Only called for texts missing from the cache.
        chunk_size: sentences per shard (about); bounds the work an interruption can lose.
        batch_size: sentences per encoder call.
        show_progress: rich progress bar while encoding.
        processes: encoder processes (`lcm.encoders.parallel`): each loads its own copy of the encoder (one per
            GPU when there are GPUs, else the CPU threads are shared out) and writes its own shards.
        read_shards: False = a writer that never reads the existing shards (an encoding worker: the parent
            already knows what is missing).
    """

    def __init__(self, root: str | Path, encoder: Encoder, chunk_size: int = 4096, batch_size: int = 64,
                 show_progress: bool = True, processes: int = 1, read_shards: bool = True):
        if processes < 1 or batch_size < 1 or chunk_size < 1:
            raise LCMError(f"encoding needs processes, batch_size and chunk_size >= 1 "
                           f"(got {processes}, {batch_size}, {chunk_size})")
        self.encoder = encoder
        self.root = Path(root)
        self.dir = self.root / encoder_slug(encoder.id)
        self.chunk_size = chunk_size
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.processes = processes
        self._rows: dict[bytes, tuple[int, int]] = {}  # key -> (shard, row)
        self._shards: list[np.ndarray] = []  # memory-mapped (n, D) float32
        self._loaded: set[str] = set()  # shard files already mapped
        if read_shards:
            self._open()
        else:
            self.dim = encoder.dim

    # ---- loading -------------------------------------------------------------------------------
    def _open(self) -> None:
        manifest = self.dir / "manifest.json"
        if not manifest.exists():
            return
        import json

        try:
            meta = json.loads(manifest.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise LCMError(f"embedding cache manifest {manifest} is corrupted ({e}); delete {self.dir} to rebuild it") from e
        if meta.get("encoder_id") != self.encoder.id or meta.get("format") != FORMAT_VERSION:
            raise LCMError(f"embedding cache {self.dir} belongs to encoder {meta.get('encoder_id')!r} "
                           f"(format {meta.get('format')}), not {self.encoder.id!r}")
        self.dim = int(meta["dim"])
        for keys_path in sorted(self.dir.glob("shard-*.keys.npy")):
            if keys_path.name in self._loaded:  # re-opened to pick up shards another process wrote
                continue
            emb_path = keys_path.with_name(keys_path.name.replace(".keys.npy", ".emb.npy"))
            try:
                keys = np.load(keys_path, allow_pickle=False)
                emb = np.load(emb_path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise LCMError(f"embedding cache shard {keys_path.name[:-9]} in {self.dir} is corrupted or truncated "
                               f"({type(e).__name__}); delete its two files and rerun: only its sentences are re-encoded") from e
            if emb.ndim != 2 or emb.shape != (len(keys), self.dim) or keys.dtype != np.uint8 or keys.shape[1:] != (16,):
                raise LCMError(f"embedding cache shard {keys_path.name[:-9]} in {self.dir} has shape {emb.shape} "
                               f"for {len(keys)} keys of dim {self.dim}; delete its two files and rerun")
            self._add_shard(keys, emb, keys_path.name)

    def _add_shard(self, keys: np.ndarray, emb: np.ndarray, name: str) -> None:
        self._loaded.add(name)
        shard = len(self._shards)
        self._shards.append(emb)
        # view rows as 16-byte voids: .tolist() gives exact bytes ("S16" would strip trailing NULs)
        for row, key in enumerate(np.ascontiguousarray(keys).view("V16").ravel().tolist()):
            self._rows[key] = (shard, row)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._rows

    # ---- encoding ------------------------------------------------------------------------------
    def missing(self, texts: list[str]) -> list[str]:
        """Unique texts not in the cache yet, in first-seen order."""
        seen: set[bytes] = set()
        out = []
        for t in texts:
            k = text_key(t)
            if k not in self._rows and k not in seen:
                seen.add(k)
                out.append(t)
        return out

    def ensure(self, texts: list[str]) -> int:
        """Encode and store every text not cached yet. Returns how many were encoded.

        Processes sharing the cache take turns (a lock file): the second waits, then finds the first one's
        shards and encodes only what is still missing, instead of encoding everything twice."""
        if not self.missing(texts):
            return 0
        self.dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.dir / ".encode.lock"):
            self._open()  # shards written by another process while we waited
            todo = self.missing(texts)
            return self._encode(todo) if todo else 0

    def _encode(self, todo: list[str]) -> int:
        if not self._shards:
            self.dim = self.encoder.dim
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json(self.dir / "manifest.json",
                       {"encoder_id": self.encoder.id, "dim": self.dim, "dtype": "float32", "format": FORMAT_VERSION})
        batches = plan_batches(todo, self.batch_size)
        from lcm.progress import progress_bar

        with progress_bar(len(todo), f"encoding with {self.encoder.id}", enabled=self.show_progress) as advance:
            if self.processes > 1 and len(batches) > 1:
                from lcm.encoders.parallel import encode_in_processes

                encode_in_processes(self, batches, advance)
                self._open()  # the workers' shards
            else:
                self.encode_batches(batches, advance)
        return len(todo)

    def encode_batches(self, batches: list[list[str]], advance=lambda n: None) -> None:
        """Encode each batch with one encoder call; write a shard whenever `chunk_size` rows are pending.

        Rows of a batch with NaN/inf are never stored: the good rows so far are written, then one clear error."""
        texts: list[str] = []
        rows: list[np.ndarray] = []
        for batch in batches:
            emb = np.ascontiguousarray(self.encoder.encode(batch, batch_size=len(batch)), dtype=np.float32)
            if emb.shape != (len(batch), self.dim):
                raise LCMError(f"encoder {self.encoder.id} returned shape {emb.shape}, expected ({len(batch)}, {self.dim})")
            finite = np.isfinite(emb).all(axis=1)
            texts += [t for t, ok in zip(batch, finite) if ok]
            rows.append(emb[finite])
            if not finite.all() or len(texts) >= self.chunk_size:
                self._write_shard(texts, np.concatenate(rows))
                texts, rows = [], []
            check_finite(emb, batch)
            advance(len(batch))
        if texts:
            self._write_shard(texts, np.concatenate(rows))

    def _write_shard(self, texts: list[str], emb: np.ndarray) -> None:
        if not texts:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        keys = np.frombuffer(b"".join(text_key(t) for t in texts), dtype=np.uint8).reshape(len(texts), 16)
        # A name no other process can pick (time + random): two runs sharing a cache never overwrite
        # each other's half-written shard.
        stem = self.dir / f"shard-{time.time_ns():020d}-{secrets.token_hex(4)}"
        write_npy(f"{stem}.emb.npy", emb)
        write_npy(f"{stem}.keys.npy", keys)  # written last: the shard's commit marker
        self._add_shard(keys, np.load(f"{stem}.emb.npy", mmap_mode="r"), Path(f"{stem}.keys.npy").name)

    # ---- lookup --------------------------------------------------------------------------------
    def get(self, texts: list[str]) -> np.ndarray:
        """texts -> float32 (N, D); encodes whatever is missing first."""
        self.ensure(texts)
        if not texts:
            return np.zeros((0, getattr(self, "dim", self.encoder.dim)), dtype=np.float32)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        where = np.array([self._rows[text_key(t)] for t in texts], dtype=np.int64)  # (N, 2): shard, row
        for shard in np.unique(where[:, 0]):
            sel = np.flatnonzero(where[:, 0] == shard)
            out[sel] = self._shards[shard][where[sel, 1]]
        check_finite(out, texts)
        return out
