"""The encoder protocol: a frozen text -> vector map with a stable id and a dimension."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Encoder(ABC):
    """Frozen sentence encoder.

    `id` must change whenever the vectors would change (model, normalization): it keys the cache and is
    stored in checkpoints so that a model is never fed vectors from another encoder.
    """

    @property
    @abstractmethod
    def id(self) -> str: ...

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """texts -> float32 array (N, D)."""

    def config(self) -> dict:
        """`{"class_path", "init_args"}` that rebuilds this encoder (stored in checkpoints)."""
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": self.init_args()}

    @abstractmethod
    def init_args(self) -> dict: ...


def encoder_from_config(cfg: dict) -> Encoder:
    """Rebuild an encoder from `Encoder.config()` output, as LightningCLI builds one from a YAML config.

    The class path comes from a checkpoint, which may be someone else's: it must name an `Encoder` subclass
    (checked before anything is called), so a record such as `{"class_path": "os.system", ...}` runs nothing."""
    import importlib

    from lightning.pytorch.cli import instantiate_class

    module, _, name = str(cfg.get("class_path", "")).rpartition(".")
    cls = getattr(importlib.import_module(module), name, None) if module else None
    if not (isinstance(cls, type) and issubclass(cls, Encoder)):
        raise TypeError(f"{cfg.get('class_path')!r} is not an lcm encoder class (an lcm.encoders.Encoder subclass)")
    return instantiate_class((), cfg)
