"""Every shipped YAML config is parsed and instantiated (model + data) by the real CLI."""
import pytest
from conftest import CONFIGS

from lcm.decoder import SentenceDecoderLM
from lcm.diffusion import DiffusionLCM
from lcm.eval.compare import CompareConfig
from lcm.model import LCMConfig
from lcm.module import ConceptLM
from lcm.token_model import TokenLM
from lcm.train import ConceptDataModule, SentenceDataModule, TokenDataModule
from lcm.train.cli import make_cli

SHIPPED = sorted(CONFIGS.glob("*.yaml"))
COMPARE = sorted((CONFIGS.parent.parent / "eval" / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert {p.name for p in SHIPPED} >= {"quickstart.yaml", "jsonl_example.yaml", "decoder_quickstart.yaml",
                                          "quickstart_diffusion.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_config_instantiates(path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent.parent)  # configs use repo-relative data paths
    cli = make_cli(["-c", str(path)], run=False)
    assert isinstance(cli.model.arch, LCMConfig)
    assert cli.datamodule.max_seq_len == cli.model.arch.max_seq_len  # linked
    if path.name.startswith("token"):
        assert isinstance(cli.model, TokenLM) and isinstance(cli.datamodule, TokenDataModule)
        return
    assert isinstance(cli.datamodule, ConceptDataModule)
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


@pytest.mark.parametrize("path", COMPARE, ids=lambda p: p.name)
def test_compare_config_loads(path):
    cfg = CompareConfig.load(path)
    repo = CONFIGS.parent.parent
    for config in [s.config for s in cfg.concept] + [cfg.token.config]:
        assert (repo / config).is_file(), config
    assert cfg.k >= 1 and cfg.problems >= 1 and cfg.concept
