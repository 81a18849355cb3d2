"""Every shipped YAML config is parsed and instantiated (model + data) by the real CLI."""
import pytest
from conftest import CONFIGS

from lcm.decoder import SentenceDecoderLM
from lcm.diffusion import DiffusionLCM
from lcm.model import LCMConfig
from lcm.module import ConceptLM
from lcm.train import ConceptDataModule, SentenceDataModule
from lcm.train.cli import make_cli

SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def test_configs_are_shipped():
    assert {p.name for p in SHIPPED} >= {"quickstart.yaml", "jsonl_example.yaml", "decoder_quickstart.yaml",
                                          "quickstart_diffusion.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_config_instantiates(path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent.parent)  # configs use repo-relative data paths
    cli = make_cli(["-c", str(path)], run=False)
    assert isinstance(cli.model.arch, LCMConfig) and isinstance(cli.datamodule, ConceptDataModule)
    assert cli.datamodule.max_seq_len == cli.model.arch.max_seq_len  # linked
    if path.name.startswith("decoder"):  # model chosen in the YAML
        assert isinstance(cli.model, SentenceDecoderLM) and isinstance(cli.datamodule, SentenceDataModule)
    else:
        expected = DiffusionLCM if "diffusion" in path.name else ConceptLM
        assert type(cli.model) is expected and type(cli.datamodule) is ConceptDataModule
        assert any(type(c).__name__ == "GenerationPreview" for c in cli.trainer.callbacks)


def test_print_config(capsys):
    from conftest import run_lcm

    code, _ = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), "--print_config"])
    out = capsys.readouterr().out
    assert code == 0 and "GsmSymbolic" in out and "d_model: 256" in out and "lcm.module.ConceptLM" in out
