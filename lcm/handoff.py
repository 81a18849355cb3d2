"""What a model needs from the data, computed on the data side and handed over as one explicit object.

A DataModule (train floor) builds one of these in its `setup` and passes it to `model.attach_data`; the
model never reads the DataModule. Expensive parts are callables, read when the model needs them (the
training targets when a fresh model fits its normalizer; `setup` runs before Lightning restores a
checkpoint, so a resumed run reads them too and the checkpoint then overwrites the result).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lcm.errors import LCMError


@dataclass(frozen=True)
class EncoderRecord:
    """The frozen encoder the data was embedded with: enough to check a checkpoint and rebuild the encoder."""

    config: dict  # `Encoder.config()`: rebuilds it at generation time
    id: str
    dim: int

    def meta(self) -> dict:
        return {"encoder": self.config, "encoder_id": self.id, "dim": self.dim}


@dataclass(frozen=True)
class ConceptData:
    """Concept models (Base-LCM, diffusion): layout, fixed vectors, normalizer data, retrieval candidates."""

    encoder: EncoderRecord
    eot_text: str
    max_chars: int  # how problem text is split at generation, as the corpus was
    planning: bool
    break_text: str | None  # planning only
    planner: str | None  # planning only: class path of the planner that built the plan concepts
    corpus: str  # content key of the prepared corpus (banks built from another corpus are stale)
    prompt_format: str  # how problem text was split into prompt concepts: "sentences", "lines" or "auto"
    eot_vector: np.ndarray  # (D,) raw encoder vector of the end-of-text sentence
    break_vector: np.ndarray | None  # (D,) planning only
    fit_targets: Callable[[], np.ndarray]  # -> (N, D) training targets (seeded sample): normalizer + mean baseline
    retrieval_candidates: Callable[[str], tuple[np.ndarray, np.ndarray]]  # split -> rows (N,), raw vectors (N, D)

    def meta(self) -> dict:
        """What a checkpoint records so that generation rebuilds inputs exactly as training saw them."""
        return {**self.encoder.meta(), "eot_text": self.eot_text, "max_chars": self.max_chars,
                "planning": self.planning, "break_text": self.break_text, "planner": self.planner,
                "corpus": self.corpus, "prompt_format": self.prompt_format}


@dataclass(frozen=True)
class SentenceData:
    """The sentence decoder: the encoder record and the training sentences its tokenizer is fitted on."""

    encoder: EncoderRecord
    train_texts: Callable[[], list[str]]


@dataclass(frozen=True)
class TextData:
    """The token baseline: the training texts its tokenizer is fitted on and where they came from."""

    source: str
    train_texts: Callable[[], list[str]]


def expect(data: object, kind: type, model: str, datamodule: str) -> None:
    """One clear line when a model is paired with the wrong kind of data."""
    if not isinstance(data, kind):
        raise LCMError(f"{model} trains on {kind.__name__} but the data is {type(data).__name__}; "
                       f"use data class_path {datamodule}")


def check_embed_dim(encoder: EncoderRecord, embed_dim: int) -> None:
    """The data's encoder must produce the vectors the model was built for."""
    if encoder.dim != embed_dim:
        raise LCMError(f"encoder {encoder.id} has dimension {encoder.dim} but model.arch.embed_dim is "
                       f"{embed_dim}; set model.arch.embed_dim: {encoder.dim}")


class DataConsumer:
    """A model that takes its data through `attach_data` (every lcm LightningModule).

    The model keeps only a weak reference to the object (the DataModule owns it): its callables are bound to
    the DataModule, and a copy of the model (EMA / SWA weight averaging deep-copies it) must not copy the data."""

    _data_ref: weakref.ref | None = None

    def attach_data(self, data: object) -> None:
        raise NotImplementedError

    @property
    def data(self):
        """The attached data object, or None (no DataModule handed one over, or it is gone)."""
        return self._data_ref() if self._data_ref is not None else None

    def keep_data(self, data: object) -> None:
        self._data_ref = weakref.ref(data)


def hand_over(model: object, data: object) -> None:
    """Called by a DataModule's `setup`: give the model its data, or one error line if it takes none."""
    if not isinstance(model, DataConsumer):
        raise LCMError(f"model {type(model).__name__} does not take data from lcm-trainer's DataModules "
                       "(it is not an lcm.handoff.DataConsumer)")
    model.attach_data(data)
