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


def load_module(cls, path: str | Path, kind: str, what: str, train_hint: str, device: str = "cpu"):
    """An eval-mode `cls` from a checkpoint whose `lcm.kind` is `kind`, on `device`; one error line for a
    checkpoint of another kind or an unusable device. `what` names the kind in messages."""
    ckpt = load_checkpoint(path)
    if (ckpt.get("lcm") or {}).get("kind") != kind:
        raise LCMError(f"{path} is not a {what} checkpoint (train one with `{train_hint}`)")
    model = model_from_checkpoint(cls, ckpt, path)
    model.on_load_checkpoint(ckpt)
    try:
        return model.to(device).eval()
    except (RuntimeError, AssertionError) as e:  # e.g. device="cuda" on a machine without CUDA
        raise LCMError(f"cannot use device {device!r}: {str(e).splitlines()[0][:200]}") from e
