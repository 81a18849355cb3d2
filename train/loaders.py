"""One DataLoader recipe and the split -> loader hooks shared by every DataModule."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from lcm.errors import LCMError


def make_loader(items, split: str, batch_size: int, shuffle: bool, collate_fn, num_workers: int) -> DataLoader:
    """A loader over `items` (any sized dataset); one clear error for an empty split."""
    if not len(items):
        raise LCMError(f"the {split} split is empty; raise data.{split}_fraction or add documents")
    return DataLoader(items, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)


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
