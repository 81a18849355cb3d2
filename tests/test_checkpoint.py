"""Loading checkpoints: only a real version mismatch becomes the one-line "does not match" error; a bug in a
model's own code surfaces as itself."""
from __future__ import annotations

import json
from dataclasses import dataclass

import lightning as L
import pytest
import torch
from conftest import CONFIGS, run_lcm

from lcm.checkpoint import load_checkpoint, model_from_checkpoint
from lcm.errors import LCMError
from lcm.model import LCMConfig
from lcm.module import ConceptLM

ARCH = LCMConfig(embed_dim=8, d_model=16, n_layer=1, n_head=2, max_seq_len=8)


class Tiny(L.LightningModule):
    def __init__(self, width: int = 4, broken: str = ""):
        super().__init__()
        self.save_hyperparameters()
        if broken == "value":
            raise ValueError("bug")
        if broken == "type":
            len(5)  # a TypeError from the model's own code, not from its keywords
        self.lin = torch.nn.Linear(width, 2)


def ckpt_of(model: L.LightningModule, **hparams) -> dict:
    return {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams) | hparams}


def saved(tmp_path, ckpt: dict) -> dict:
    """Through the file, as `lcm generate` reads it."""
    torch.save(ckpt, tmp_path / "m.ckpt")
    return load_checkpoint(tmp_path / "m.ckpt")


def test_round_trip_keeps_the_weights(tmp_path):
    model = ConceptLM(ARCH)
    ckpt = saved(tmp_path, ckpt_of(model) | {"hyper_parameters": dict(model.hparams) | {"_instantiator": "x.y"}})
    loaded = model_from_checkpoint(ConceptLM, ckpt, "m.ckpt")
    assert loaded.arch == ARCH
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize("broken, error", [("value", ValueError), ("type", TypeError)])
def test_a_bug_in_init_is_not_a_version_mismatch(tmp_path, broken, error):
    ckpt = saved(tmp_path, ckpt_of(Tiny(), broken=broken))
    with pytest.raises(error) as info:
        model_from_checkpoint(Tiny, ckpt, "m.ckpt")
    assert not isinstance(info.value, LCMError)
    if broken == "value":
        assert str(info.value) == "bug"


def mismatch(ckpt: dict, cls=ConceptLM) -> str:
    with pytest.raises(LCMError, match="does not match this version of lcm-trainer") as info:
        model_from_checkpoint(cls, ckpt, "m.ckpt")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_or_missing_hyper_parameters_are_a_mismatch():
    assert "unexpected hyper-parameters: retired_option" in mismatch(ckpt_of(Tiny(), retired_option=1), Tiny)
    model = ConceptLM(ARCH)
    arch = dict(model.hparams["arch"]) | {"old_field": 2}
    assert "unexpected hyper-parameters: arch.old_field" in mismatch(ckpt_of(model, arch=arch))

    class Required(Tiny):
        def __init__(self, depth: int, width: int = 4):
            super().__init__(width)

    assert "missing hyper-parameters: depth" in mismatch(ckpt_of(Tiny()), Required)


def test_other_weights_are_a_mismatch():
    model = ConceptLM(ARCH)
    wide = ConceptLM(LCMConfig(**{**vars(ARCH), "d_model": 32}))
    message = mismatch(ckpt_of(wide) | {"hyper_parameters": dict(model.hparams)})
    assert "size mismatch (checkpoint vs model): net.blocks.0.attn.proj.weight (32, 32) vs (16, 16)" in message
    state = model.state_dict()
    extra = ckpt_of(model) | {"state_dict": state | {"net.retired.weight": torch.zeros(1)}}
    assert "unexpected weights: net.retired.weight" in mismatch(extra)
    lacking = ckpt_of(model) | {"state_dict": {k: v for k, v in state.items() if k != "net.norm.weight"}}
    assert "missing weights: net.norm.weight" in mismatch(lacking)


@dataclass
class Shape:
    depth: int = 1


def test_dataclass_configs_are_checked_after_old_names_are_renamed():
    """Diffusion checkpoints written before `ddim_steps` load; an unknown key in a config is the one-line error."""
    from lcm.diffusion import DiffusionConfig, DiffusionLCM

    model = DiffusionLCM(ARCH, DiffusionConfig(denoiser_layers=1, timesteps=10, ddim_steps=4))
    old = {k: v for k, v in model.hparams["diffusion"].items() if k != "ddim_steps"} | {"steps": 3}
    assert model_from_checkpoint(DiffusionLCM, ckpt_of(model, diffusion=old), "m.ckpt").diffusion.ddim_steps == 3
    bogus = dict(model.hparams["diffusion"], bogus=1)
    assert "unexpected hyper-parameters: diffusion.bogus" in mismatch(ckpt_of(model, diffusion=bogus), DiffusionLCM)


def old_format(trained_run, tmp_path):
    """The fixture's checkpoint as versions before `model.optim` wrote it: lr, warmup_steps, ... at the top level."""
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt["hyper_parameters"] = {**{k: v for k, v in ckpt["hyper_parameters"].items() if k != "optim"},
                                **ckpt["hyper_parameters"]["optim"]}
    old = tmp_path / "checkpoints" / "old.ckpt"
    old.parent.mkdir()
    torch.save(ckpt, old)
    return old


def test_checkpoints_with_flat_optimizer_hparams_still_load(trained_run, tmp_path):
    from lcm.generate import ConceptGenerator

    gen = ConceptGenerator.from_checkpoint(old_format(trained_run, tmp_path), bank=trained_run / "checkpoints" / "bank")
    assert gen.model.optim.warmup_steps == 5 and gen.generate("Tom has 3 apples. How many?", max_steps=2).steps


def test_old_checkpoints_resume_and_validate_through_the_cli(trained_run, tmp_path, monkeypatch):
    """--ckpt_path applies the checkpoint's hyper-parameters to the config: old names are renamed first."""
    from conftest import CONFIGS, TINY_FIT, run_lcm

    old = old_format(trained_run, tmp_path)
    monkeypatch.chdir(trained_run.parents[2])  # the fixture's embedding cache
    code, _ = run_lcm(["validate", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT, "--ckpt_path", str(old)])
    assert code == 0


def test_a_torch_file_that_is_no_checkpoint_is_one_error_line(tmp_path, capsys):
    from conftest import CONFIGS, run_lcm

    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pt")
    code, err = run_lcm(["validate", "-c", str(CONFIGS / "quickstart.yaml"), "--ckpt_path", str(tmp_path / "weights.pt")],
                        capsys)
    assert code == 2 and "is not an lcm-trainer checkpoint" in err and err.count("\n") == 1


class RunsCode:
    """What a hostile checkpoint carries: unpickling calls `os.system` (any callable would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        import shlex

        return os.system, (f"echo pwned > {shlex.quote(str(self.marker))}",)


def hostile(trained_run, tmp_path) -> tuple:
    """The fixture's real checkpoint with a code-running payload added: without the payload it loads."""
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    marker = tmp_path / "pwned"
    ckpt["lcm"] = dict(ckpt["lcm"], note=RunsCode(marker))
    path = tmp_path / "shared.ckpt"
    torch.save(ckpt, path)
    return path, marker


def test_real_checkpoints_load_without_an_allow_list(trained_run):
    """`lcm fit` writes only tensors and plain values: torch's weights-only unpickler takes them as they are."""
    ckpt = load_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    assert ckpt["lcm"]["encoder_id"] and ckpt["state_dict"]


def test_a_checkpoint_that_would_run_code_is_refused_by_the_api(trained_run, tmp_path):
    from lcm.generate import ConceptGenerator

    path, marker = hostile(trained_run, tmp_path)
    with pytest.raises(LCMError) as info:
        ConceptGenerator.from_checkpoint(path, bank=trained_run / "checkpoints" / "bank")
    message = str(info.value)
    assert message == (f"checkpoint {path} contains objects that could run code when loaded (posix.system); "
                       "it was not loaded (lcm-trainer checkpoints hold only tensors and plain values)")
    assert not marker.exists()


def test_a_checkpoint_that_would_run_code_is_one_error_line_in_the_cli(trained_run, tmp_path, capsys):
    from conftest import run_lcm

    path, marker = hostile(trained_run, tmp_path)
    code, err = run_lcm(["generate", "--ckpt", str(path), "--bank", str(trained_run / "checkpoints" / "bank"),
                         "Tom has 3 apples. How many?"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "contains objects that could run code when loaded" in err and "corrupted" not in err
    assert not marker.exists()


class Unlisted:
    pass


def test_a_checkpoint_with_an_unknown_class_is_refused_too(tmp_path):
    """No class outside torch's weights-only defaults is allow-listed: an unknown one is named, not built."""
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Unlisted()}}, tmp_path / "m.ckpt")
    with pytest.raises(LCMError, match=r"could run code when loaded \(\S*Unlisted\); it was not loaded"):
        load_checkpoint(tmp_path / "m.ckpt")


def test_an_encoder_record_that_names_no_encoder_runs_nothing(trained_run, tmp_path):
    """The encoder is rebuilt from the checkpoint's record: a class path such as os.system is refused before
    anything is called (weights-only loading alone does not stop that)."""
    from lcm.generate import ConceptGenerator

    marker = tmp_path / "pwned"
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["lcm"]["encoder"] = {"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}
    path = tmp_path / "checkpoints" / "hostile.ckpt"
    path.parent.mkdir()
    torch.save(ckpt, path)
    with pytest.raises(LCMError, match="cannot rebuild the encoder .*'os.system' is not an lcm encoder class"):
        ConceptGenerator.from_checkpoint(path, bank=trained_run / "checkpoints" / "bank")
    assert not marker.exists()


def test_a_token_baseline_resumes_with_ckpt_path(tmp_path, monkeypatch):
    """--ckpt_path parsed every checkpoint's hyper-parameters as a concept model's: no other model could resume."""
    monkeypatch.chdir(tmp_path)
    tiny = ["-c", str(CONFIGS / "token_baseline_logic.yaml"), "--data.source.init_args.n", "40",
            "--model.arch.d_model", "32", "--model.arch.n_layer", "1", "--model.arch.n_head", "2",
            "--model.vocab_size", "300", "--trainer.enable_progress_bar", "false", "--data.batch_size", "16"]
    code, _ = run_lcm(["fit", *tiny, "--trainer.max_epochs", "1"])
    assert code == 0
    run = tmp_path / "runs" / "token_baseline_logic" / "version_0"
    first = json.loads((run / "training_cost.json").read_text())
    code, _ = run_lcm(["fit", *tiny, "--trainer.max_epochs", "2", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert code == 0
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    resumed = json.loads((run / "training_cost.json").read_text())  # the whole run's cost, both segments
    assert resumed["positions"] == 2 * first["positions"] > 0
    assert resumed["fit_seconds"] > first["fit_seconds"] > 0
