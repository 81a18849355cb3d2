"""SONAR text encoder (Meta's LCM space), behind the optional `sonar` extra."""
from __future__ import annotations

from functools import cached_property

import numpy as np

from lcm.encoders.base import Encoder
from lcm.errors import LCMError

INSTALL_HINT = "SONAR needs the optional extra: pip install 'lcm-trainer[sonar]' (plus its fairseq2 runtime and model weights)"


def import_sonar_pipeline():
    """Import SONAR lazily; one clear line when it is not installed."""
    try:
        from sonar.inference_pipelines.text import TextToEmbeddingModelPipeline
    except ImportError as e:
        raise LCMError(f"{INSTALL_HINT} ({type(e).__name__}: {e})") from e
    return TextToEmbeddingModelPipeline


class SonarEncoder(Encoder):
    """SONAR text encoder (1024-d). Weights are loaded by SONAR's own asset store (local card or cache)."""

    def __init__(self, encoder: str = "text_sonar_basic_encoder", tokenizer: str = "text_sonar_basic_encoder",
                 lang: str = "eng_Latn", device: str = "cpu"):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.lang = lang
        self.device = device

    def init_args(self) -> dict:
        return {"encoder": self.encoder, "tokenizer": self.tokenizer, "lang": self.lang, "device": self.device}

    @property
    def id(self) -> str:
        return f"sonar:{self.encoder}:{self.lang}"

    @property
    def dim(self) -> int:
        return 1024

    @cached_property
    def pipeline(self):
        pipeline_cls = import_sonar_pipeline()
        import torch

        try:
            return pipeline_cls(encoder=self.encoder, tokenizer=self.tokenizer, device=torch.device(self.device))
        except Exception as e:  # noqa: BLE001 - missing weights / asset cards surface here
            raise LCMError(f"could not load SONAR encoder {self.encoder!r}: {type(e).__name__}: {e}") from e

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        emb = self.pipeline.predict(list(texts), source_lang=self.lang, batch_size=batch_size)
        return emb.float().cpu().numpy().astype(np.float32).reshape(len(texts), self.dim)
