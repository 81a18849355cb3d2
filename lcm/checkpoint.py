"""Reading `lcm fit` checkpoints: one clear error for a missing, corrupted, foreign, unsafe or outdated file.

Only what really means "written by another version" becomes that error: hyper-parameters this class's
`__init__` (or a dataclass config it takes as a dict) does not accept or needs but lacks, and weights whose
names or shapes differ from the model's. Both are checked before anything runs, so an exception raised by
the model's own code propagates as the bug it is.
"""
from __future__ import annotations

import dataclasses
import inspect
import pickle
import re
from pathlib import Path

import torch

from lcm.errors import LCMError
from lcm.optim import nest_legacy_optim

LIGHTNING_KEYS = ("_instantiator",)  # LightningCLI may record it; Lightning itself drops it before `__init__`
SHOWN = 3  # names listed per kind of mismatch; the rest are counted


def _refused_by_safe_loader(e: Exception) -> bool:
    """Whether `torch.load(weights_only=True)` refused the file's content (a global it does not allow, e.g.
    `os.system` in a pickled `__reduce__`) rather than failing to read it. torch raises
    `pickle.UnpicklingError("Weights only load failed. ...")` for every refusal (torch/serialization.py)."""
    return isinstance(e, pickle.UnpicklingError) and str(e).startswith("Weights only load failed")


def _refused_global(e: Exception) -> str:
    """The first refused global torch names ("posix.system"), or "" when it names none."""
    found = re.search(r"GLOBAL (\S+)", str(e))
    return f" ({found.group(1)})" if found else ""


def load_checkpoint(path: str | Path) -> dict:
    """torch.load with one clear error for a missing, truncated, foreign or unsafe file.

    Loads with `weights_only=True`: `lcm fit` checkpoints hold only tensors and plain Python values (the
    modules save their configs as dicts), which torch's weights-only unpickler accepts without an
    allow-list. Anything else in the pickle (an object whose `__reduce__` would call a function) is refused
    before it runs."""
    path = Path(path)
    if not path.is_file():
        raise LCMError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle/zip errors of every kind mean the same thing here
        if _refused_by_safe_loader(e):
            raise LCMError(f"checkpoint {path} contains objects that could run code when loaded"
                           f"{_refused_global(e)}; it was not loaded (lcm-trainer checkpoints hold only "
                           "tensors and plain values)") from None
        raise LCMError(f"checkpoint {path} is corrupted or not a torch checkpoint ({type(e).__name__})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise LCMError(f"checkpoint {path} is not an lcm-trainer checkpoint (no state_dict / hyper_parameters)")
    return ckpt


def _names(what: str, names: list[str]) -> list[str]:
    """[] or ["<what>: a, b, c (+N more)"]."""
    if not names:
        return []
    more = f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return [f"{what}: {', '.join(names[:SHOWN])}{more}"]


def _config_keys(name: str, value, default) -> tuple[list[str], list[str]]:
    """(unexpected, missing) keys of `value`, a dict standing for the dataclass config `default` is an
    instance of (`ConceptLM(arch={...})`); nothing to check otherwise. Older names were already renamed
    (`upgrade_hparams`)."""
    if not (isinstance(value, dict) and dataclasses.is_dataclass(default) and not isinstance(default, type)):
        return [], []
    fields = [f for f in dataclasses.fields(default) if f.init]
    required = {f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    return ([f"{name}.{k}" for k in sorted(set(value) - {f.name for f in fields})],
            [f"{name}.{k}" for k in sorted(required - set(value))])


def hparams_mismatch(cls, hparams: dict) -> list[str]:
    """Why `cls(**hparams)` cannot take these keywords, from `cls`'s signature alone: keywords it does not
    accept and required ones that are absent, also inside dataclass configs passed as dicts. [] if none."""
    params = inspect.signature(cls).parameters
    keyword = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    unexpected = [] if takes_any else sorted(set(hparams) - set(keyword))
    missing = sorted(n for n, p in keyword.items() if p.default is p.empty and n not in hparams)
    for name, value in hparams.items():
        if name in keyword:
            extra, absent = _config_keys(name, value, keyword[name].default)
            unexpected, missing = unexpected + extra, missing + absent
    return _names("unexpected hyper-parameters", unexpected) + _names("missing hyper-parameters", missing)


def state_dict_mismatch(model: torch.nn.Module, state: dict) -> list[str]:
    """Why `model.load_state_dict(state)` (strict) cannot take these weights: missing or unexpected names
    and shapes that differ. [] if none."""
    own = model.state_dict()
    resized = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own.keys() & state.keys()
               if isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    return (_names("missing weights", sorted(own.keys() - state.keys()))
            + _names("unexpected weights", sorted(state.keys() - own.keys()))
            + _names("size mismatch (checkpoint vs model)", sorted(resized)))


def _mismatch(path: str | Path, problems: list[str]) -> LCMError:
    return LCMError(f"checkpoint {path} does not match this version of lcm-trainer ({'; '.join(problems)})")


def upgrade_hparams(hparams: dict) -> dict:
    """Hyper-parameters of checkpoints written by earlier versions, in today's names: the flat optimizer keys
    move under "optim", the diffusion config's `steps` is `ddim_steps`. Used by generation and by the CLI's
    --ckpt_path (which applies the checkpoint's hyper-parameters to the config)."""
    hparams = nest_legacy_optim({k: v for k, v in hparams.items() if k not in LIGHTNING_KEYS})
    diffusion = hparams.get("diffusion")
    if isinstance(diffusion, dict):
        from lcm.diffusion import legacy_diffusion_settings

        hparams = {**hparams, "diffusion": legacy_diffusion_settings(diffusion)}
    return hparams


def model_from_checkpoint(cls, ckpt: dict, path: str | Path):
    """`cls(**hyper_parameters)` with the checkpoint's weights, or one error line when they do not fit.
    Exceptions from `cls`'s own code (a bug, an invalid value) propagate unchanged."""
    hparams = upgrade_hparams(ckpt["hyper_parameters"])
    problems = hparams_mismatch(cls, hparams)
    if problems:
        raise _mismatch(path, problems)
    model = cls(**hparams)
    problems = state_dict_mismatch(model, ckpt["state_dict"])
    if problems:
        raise _mismatch(path, problems)
    model.load_state_dict(ckpt["state_dict"])
    return model


def load_module(cls, path: str | Path, kind: str, what: str, train_hint: str, device: str = "cpu",
                ckpt: dict | None = None):
    """An eval-mode `cls` from a checkpoint whose `lcm.kind` is `kind`, on `device`; one error line for a
    checkpoint of another kind or an unusable device. `what` names the kind in messages; `ckpt`: the checkpoint at
    `path`, when the caller has already read it."""
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    if (ckpt.get("lcm") or {}).get("kind") != kind:
        raise LCMError(f"{path} is not a {what} checkpoint (train one with `{train_hint}`)")
    model = model_from_checkpoint(cls, ckpt, path)
    model.on_load_checkpoint(ckpt)
    return on_device(model, device)


def on_device(model, device):
    """`model` in eval mode on `device`, or one error line for a device this machine cannot use."""
    try:
        return model.to(device).eval()
    except (RuntimeError, AssertionError) as e:  # e.g. device="cuda" on a machine without CUDA
        raise LCMError(f"cannot use device {device!r}: {str(e).splitlines()[0][:200]}") from e
