"""One DataLoader recipe and the split -> loader hooks shared by every DataModule."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from lcm.errors import LCMError


class ProblemSetSampler(Sampler[int]):
    """Fresh problems every epoch: epoch e draws only from problem set e mod E (shuffled, seeded by the global
    seed and e), so a source that generates E sets (e.g. `Forks(problem_sets=E)`) shows every epoch problems no
    earlier epoch saw, for E epochs. Every epoch yields as many items as the smallest set holds (the same number
    of batches per epoch). Lightning calls `set_epoch` before each training epoch (resumed runs included).

    sets: (N,) the problem set of each item."""

    def __init__(self, sets: np.ndarray):
        sets = np.asarray(sets)
        self.groups = [np.flatnonzero(sets == v) for v in np.unique(sets)]
        self.size = min(len(g) for g in self.groups)
        self.seed = int(torch.empty((), dtype=torch.int64).random_().item())  # follows seed_everything
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        group = self.groups[self.epoch % len(self.groups)]
        order = np.random.default_rng([self.seed, self.epoch]).permutation(group)[: self.size]
        return iter(order.tolist())


def make_loader(items, split: str, batch_size: int, shuffle: bool, collate_fn, num_workers: int,
                sets: np.ndarray | None = None) -> DataLoader:
    """A loader over `items` (any sized dataset); one clear error for an empty split. `sets` (the problem set of
    each item; training only): with more than one set, each epoch reads one set (`ProblemSetSampler`)."""
    if not len(items):
        raise LCMError(f"the {split} split is empty; raise data.{split}_fraction or add documents")
    sampler = ProblemSetSampler(sets) if sets is not None and len(np.unique(sets)) > 1 and shuffle else None
    return DataLoader(items, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      collate_fn=collate_fn, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=num_workers > 0)


class SplitLoaders:
    """Lightning's loader hooks for a DataModule that implements `_loader(split, shuffle)`; `lcm predict`
    predicts on the test split."""

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
