"""Training windows over a split's documents: long documents wrapped (or truncated) at the context
length, and optionally short documents packed together into one window.

A window is a list of segments, each a [start, end) range of concepts of one document in the split's
flat arrays. Unpacked, every window has one segment. Packed, a window holds several whole segments; the
batch then carries `doc` (which segment each position belongs to) and `pos` (the position inside its
segment), from which the model builds a document-aware causal mask and per-document positions: no
position attends across documents, and no loss target is predicted from another document.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from lcm.concepts import PAD, TARGET_TYPES
from lcm.errors import LCMError
from lcm.train.store import read_rows

LongDocuments = Literal["wrap", "truncate"]


def cut_segments(offsets: np.ndarray, types: np.ndarray, window: int, long_documents: LongDocuments = "wrap"
             ) -> tuple[np.ndarray, dict]:
    """Cut documents into segments of at most `window` concepts. offsets (n_docs + 1,), types (N,) ->
    (S, 2) int64 [start, end) and stats. "wrap" loses nothing: a long document becomes segments that
    overlap by one concept (a segment's first concept is context only, so the next segment starts at the
    previous one's last concept and every concept after the document's first is a target exactly once; the
    LCM paper wraps at 128). "truncate" keeps each document's first `window` concepts. Segments with no
    loss target after their first position teach nothing and are dropped (counted)."""
    if window < 2:
        raise LCMError(f"max_seq_len={window} leaves no next concept to predict (use >= 2)")
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    out = []
    for a, n in zip(offsets[:-1].tolist(), lengths.tolist()):
        if n <= window or long_documents == "truncate":
            out.append((a, a + min(n, window)))
        else:
            out.extend((s, min(s + window, a + n)) for s in range(a, a + n - 1, window - 1))
    seg = np.asarray(out, dtype=np.int64).reshape(-1, 2)
    # is_target[i]: concept i is a loss target; a segment teaches something iff one sits after its start
    is_target = np.isin(np.asarray(types), [int(t) for t in TARGET_TYPES])
    cum = np.concatenate([[0], np.cumsum(is_target, dtype=np.int64)])
    useful = cum[seg[:, 1]] - cum[np.minimum(seg[:, 0] + 1, seg[:, 1])] > 0
    long = int((lengths > window).sum())
    stats = {"long_documents": long, "wrapped": long if long_documents == "wrap" else 0,
             "truncated": long if long_documents == "truncate" else 0, "no_target": int((~useful).sum())}
    return seg[useful], stats


def pack_segments(seg: np.ndarray, window: int, seed: int = 0) -> list[np.ndarray]:
    """Greedy first-fit packing of segments (in a seeded random order) into windows of `window` concepts.
    seg (S, 2) -> list of (k, 2) arrays, each a window's segments."""
    order = np.random.default_rng(seed).permutation(len(seg))
    done: list[list[int]] = []
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order.tolist():
        n = int(seg[i, 1] - seg[i, 0])
        for b, room in enumerate(free):
            if room >= n:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(window - n)
            if len(bins) > 32:  # keep the search short: the fullest open window is closed for good
                b = int(np.argmin(free))
                done.append(bins.pop(b))
                free.pop(b)
    return [seg[b] for b in done + bins]


@dataclass
class Window:
    ids: np.ndarray  # (T,) int table rows
    types: np.ndarray  # (T,) int ConceptType
    doc: np.ndarray | None  # (T,) segment index inside the window (packed only)
    pos: np.ndarray | None  # (T,) position inside the segment (packed only)


class WindowDataset(Dataset):
    """Windows of a split: `seqs` is a `Sequences` (flat ids / types arrays, memory-mapped); `windows` a
    list of (k, 2) segment arrays, or one (S, 2) array of single-segment windows (unpacked)."""

    def __init__(self, seqs, windows: list[np.ndarray] | np.ndarray, packed: bool):
        self.seqs, self.windows, self.packed = seqs, windows, packed

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> Window:
        parts = np.asarray(self.windows[i]).reshape(-1, 2)  # (k, 2)
        ids = np.concatenate([np.asarray(self.seqs.ids[a:b]) for a, b in parts.tolist()])
        types = np.concatenate([np.asarray(self.seqs.types[a:b]) for a, b in parts.tolist()])
        if not self.packed:
            return Window(ids, types, None, None)
        lengths = parts[:, 1] - parts[:, 0]
        doc = np.repeat(np.arange(len(parts)), lengths)
        pos = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return Window(ids, types, doc, pos)


class PadCollate:
    """Right-pads windows and looks their embeddings up in the concept table (float16 or float32, possibly
    memory-mapped). -> x (B, T, D) float32, ids / types (B, T) with PAD, and doc / pos (B, T) when packed."""

    def __init__(self, table):
        self.table = table

    def __call__(self, items: list[Window]) -> dict[str, torch.Tensor]:
        T = max(len(it.ids) for it in items)
        B = len(items)
        ids = np.full((B, T), PAD, dtype=np.int64)
        types = np.full((B, T), PAD, dtype=np.int64)
        for b, it in enumerate(items):
            ids[b, : len(it.ids)] = it.ids
            types[b, : len(it.types)] = it.types
        valid = ids >= 0
        x = np.zeros((B, T, self.table.shape[1]), dtype=np.float32)
        x[valid] = read_rows(self.table, ids[valid])  # zeros at padding; a mapped table is unmapped after
        batch = {"x": torch.from_numpy(x), "ids": torch.from_numpy(ids), "types": torch.from_numpy(types)}
        if items[0].doc is not None:
            doc = np.full((B, T), PAD, dtype=np.int64)
            pos = np.zeros((B, T), dtype=np.int64)
            for b, it in enumerate(items):
                doc[b, : len(it.doc)] = it.doc
                pos[b, : len(it.pos)] = it.pos
            batch |= {"doc": torch.from_numpy(doc), "pos": torch.from_numpy(pos)}
        return batch
