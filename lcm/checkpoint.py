"""Reading `lcm fit` checkpoints: one clear error for a missing, corrupted, foreign or outdated file."""
from __future__ import annotations

from pathlib import Path

import torch

from lcm.errors import LCMError


def load_checkpoint(path: str | Path) -> dict:
    """torch.load with one clear error for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise LCMError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - pickle/zip errors of every kind mean the same thing here
        raise LCMError(f"checkpoint {path} is corrupted or not a torch checkpoint ({type(e).__name__})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise LCMError(f"checkpoint {path} is not an lcm-trainer checkpoint (no state_dict / hyper_parameters)")
    return ckpt


def model_from_checkpoint(cls, ckpt: dict, path: str | Path):
    """`cls(**hyper_parameters)` with the checkpoint's weights, or one error line when they do not fit."""
    try:
        model = cls(**ckpt["hyper_parameters"])
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise LCMError(f"checkpoint {path} does not match this version of lcm-trainer "
                       f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    return model
