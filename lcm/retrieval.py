"""Retrieval decoding: a faiss index over a sentence bank, persisted with a manifest and verified on load."""
from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from lcm.errors import LCMError
from lcm.io import atomic_path, write_json, write_npy

FORMAT_VERSION = 1
IndexKind = Literal["auto", "flat", "hnsw"]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalize rows (inner product = cosine). (N, D) float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class SentenceBank:
    """Sentences and their embeddings, searchable by cosine.

    Exact `IndexFlatIP` on unit vectors up to `hnsw_above` sentences, HNSW (M=32, efConstruction=80,
    efSearch=128) above: flat search is exact but linear in the bank size. efSearch 128 keeps recall@1 at
    0.95 on a 1M-sentence bank at 0.26 ms/query batched (64: 0.94; benchmarks/retrieval_scale.py).
    """

    def __init__(self, texts: list[str], embeddings: np.ndarray, encoder_id: str, index: IndexKind = "auto",
                 hnsw_above: int = 100_000, _faiss_index=None):
        """`embeddings` (N, D) are kept as given (what the model saw); the index holds their unit versions."""
        import faiss

        if len(texts) != len(embeddings) or not len(texts):
            raise LCMError(f"sentence bank needs one embedding per text and at least one text "
                           f"(got {len(texts)} texts, {len(embeddings)} embeddings)")
        self.texts = list(texts)
        self.vectors = np.ascontiguousarray(embeddings, dtype=np.float32)  # (N, D) raw encoder outputs
        self.encoder_id = encoder_id
        self.dim = int(embeddings.shape[1]) if _faiss_index is None else _faiss_index.d
        if _faiss_index is not None:
            self.index = _faiss_index
        else:
            vecs = unit_rows(embeddings)
            if not np.isfinite(vecs).all():
                raise LCMError("sentence bank embeddings contain NaN/inf")
            kind = ("hnsw" if len(texts) > hnsw_above else "flat") if index == "auto" else index
            if kind == "hnsw":
                self.index = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
                self.index.hnsw.efConstruction = 80
                self.index.hnsw.efSearch = 128
            else:
                self.index = faiss.IndexFlatIP(self.dim)
            self.index.add(vecs)
        self.kind = "hnsw" if "HNSW" in type(self.index).__name__ else "flat"

    def __len__(self) -> int:
        return len(self.texts)

    def search(self, queries: np.ndarray, k: int = 1, exclude: Collection[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) -> cosines (Q, k), row ids (Q, k), best first. Rows in `exclude` are never returned
        (e.g. the end-of-text sentence when a step is read out); a missing hit has id -1 and cosine -inf."""
        q = unit_rows(np.atleast_2d(queries))
        if q.shape[1] != self.dim:
            raise LCMError(f"query dimension {q.shape[1]} != sentence bank dimension {self.dim}")
        if not np.isfinite(q).all():
            raise LCMError("predicted embedding contains NaN/inf; the model or its input is broken")
        drop = np.fromiter(exclude, dtype=np.int64)
        k = min(k, len(self))
        scores, ids = self.index.search(q, min(k + len(drop), len(self)))  # (Q, k + |drop|): room for the dropped
        if not len(drop):
            return scores, ids
        keep = ~np.isin(ids, drop)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept hits first, in their order
        return (np.take_along_axis(np.where(keep, scores, -np.inf), order, axis=1).astype(np.float32),
                np.take_along_axis(np.where(keep, ids, -1), order, axis=1))

    def rows_of(self, texts: Iterable[str]) -> list[int]:
        """Row ids of the bank sentences equal to any of `texts` (none when a text is not in the bank)."""
        wanted = set(texts)
        return [i for i, t in enumerate(self.texts) if t in wanted]

    def embeddings(self, ids: np.ndarray) -> np.ndarray:
        """Raw encoder vectors of row ids. (N, D)"""
        return self.vectors[np.asarray(ids, dtype=np.int64).ravel()]

    # ---- persistence -----------------------------------------------------------------------------
    def save(self, folder: str | Path, corpus: str | None = None) -> Path:
        """Index, texts, embeddings and a manifest; `corpus` records which data the bank was built from."""
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "index.faiss") as tmp:
            faiss.write_index(self.index, str(tmp))
        write_json(folder / "texts.json", self.texts)
        write_npy(folder / "embeddings.npy", self.vectors)
        write_json(folder / "manifest.json", {"encoder_id": self.encoder_id, "dim": self.dim, "count": len(self),
                                              "index": self.kind, "format": FORMAT_VERSION, "corpus": corpus})
        return folder

    @classmethod
    def load(cls, folder: str | Path, encoder_id: str | None = None, dim: int | None = None,
             corpus: str | None = None) -> "SentenceBank":
        """A saved bank, verified against its manifest; `encoder_id`, `dim` and `corpus` (the data it must
        have been built from) are checked when given."""
        import faiss

        folder = Path(folder)
        manifest_path = folder / "manifest.json"
        if not manifest_path.exists():
            raise LCMError(f"no sentence bank at {folder} (missing manifest.json)")
        try:
            meta = json.loads(manifest_path.read_text(encoding="utf-8"))
            texts = json.loads((folder / "texts.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LCMError(f"sentence bank at {folder} is corrupted ({type(e).__name__}: {e})") from e
        try:
            vectors = np.load(folder / "embeddings.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise LCMError(f"sentence bank embeddings {folder / 'embeddings.npy'} are corrupted or truncated "
                           f"({type(e).__name__}); delete the bank folder and run `lcm validate -c CONFIG "
                           "--ckpt_path CKPT` to rebuild it") from e
        try:
            index = faiss.read_index(str(folder / "index.faiss"))
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "unreadable"
            raise LCMError(f"faiss index {folder / 'index.faiss'} is corrupted or truncated ({first[:160]}); "
                           "delete the bank folder and run `lcm validate -c CONFIG --ckpt_path CKPT` to rebuild it") from e
        if (meta.get("count") != len(texts) or index.ntotal != len(texts) or index.d != meta.get("dim")
                or vectors.shape != (len(texts), index.d)):
            raise LCMError(f"sentence bank at {folder} is inconsistent: manifest says {meta.get('count')} x "
                           f"{meta.get('dim')}, texts.json has {len(texts)}, index has {index.ntotal} x {index.d}, "
                           f"embeddings.npy is {vectors.shape}")
        if encoder_id is not None and meta.get("encoder_id") != encoder_id:
            raise LCMError(f"sentence bank at {folder} was built with encoder {meta.get('encoder_id')!r}, "
                           f"the model uses {encoder_id!r}")
        if corpus is not None and meta.get("corpus") not in (None, corpus):  # banks from before the record pass
            raise LCMError(f"sentence bank at {folder} was built from corpus {meta.get('corpus')!r}, not {corpus!r} "
                           "(the data the model was trained on); rebuild it with `lcm validate -c CONFIG --ckpt_path CKPT` "
                           "using the training config")
        if dim is not None and index.d != dim:
            raise LCMError(f"sentence bank at {folder} has dimension {index.d}, the model predicts {dim}")
        return cls(texts, vectors, meta["encoder_id"], _faiss_index=index)
