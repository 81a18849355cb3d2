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

SHIPPED = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "base.yaml")
COMPARE = sorted((CONFIGS.parent.parent / "eval" / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert {p.name for p in SHIPPED} >= {"quickstart.yaml", "jsonl_example.yaml", "decoder_quickstart.yaml",
                                          "quickstart_diffusion.yaml"}


def sft_override(path, request) -> list[str]:
    """RL configs start from an SFT checkpoint a fresh clone does not have: the tiny real ones of the test session."""
    if not path.name.startswith("rl_"):
        return []
    kind = "token" if "token" in path.name else "categorical"
    return ["--model.init_args.policy.init_args.ckpt", str(request.getfixturevalue("sft")[kind])]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_config_instantiates(path, monkeypatch, request):
    monkeypatch.chdir(CONFIGS.parent.parent)  # configs use repo-relative data paths
    cli = make_cli(["-c", str(path), *sft_override(path, request)], run=False)
    if path.name.startswith("rl_"):  # GRPO on a policy loaded from its SFT checkpoint, problems with answers
        from lcm.train.rl import GRPO, PromptDataModule

        assert isinstance(cli.model, GRPO) and isinstance(cli.datamodule, PromptDataModule)
        assert type(cli.model.policy).__name__ == ("TokenPolicy" if "token" in path.name else "ConceptCategoricalPolicy")
        return
    assert isinstance(cli.model.arch, LCMConfig)
    if type(cli.datamodule) is ConceptDataModule:  # concept windows follow the model's context (linked)
        assert cli.datamodule.max_seq_len == cli.model.arch.max_seq_len
    elif isinstance(cli.datamodule, TokenDataModule):  # no windows: no flag that would do nothing
        assert not hasattr(cli.datamodule, "max_seq_len")
    if path.name.startswith("token"):
        assert isinstance(cli.model, TokenLM) and isinstance(cli.datamodule, TokenDataModule)
        net = cli.model.net  # a Hugging Face Llama with the arch's shape
        assert type(net).__name__ == "LlamaForCausalLM" and net.config.hidden_size == cli.model.arch.d_model
        assert net.config.max_position_embeddings == cli.model.arch.max_seq_len
        return
    assert isinstance(cli.datamodule, ConceptDataModule)
    if path.name.startswith(("decoder", "autoencoder")):  # model chosen in the YAML
        assert isinstance(cli.model, SentenceDecoderLM) and isinstance(cli.datamodule, SentenceDataModule)
        if path.name.startswith("autoencoder"):  # the decoding side reads the bottleneck
            assert type(cli.model).__name__ == "SentenceAutoencoderLM"
            assert cli.model.arch.embed_dim == cli.model.encoder_config.dim
    else:
        expected = DiffusionLCM if "diffusion" in path.name else ConceptLM
        assert type(cli.model) is expected and type(cli.datamodule) is ConceptDataModule
        assert any(type(c).__name__ == "GenerationPreview" for c in cli.trainer.callbacks)


def _arrived(where: str, written, actual) -> list[str]:
    """Paths under `where` whose value written in the YAML differs from what the object received."""
    if isinstance(written, dict) and "class_path" in written:
        if type(actual).__name__ != written["class_path"].rpartition(".")[2]:
            return [f"{where}: {type(actual).__name__} is not {written['class_path']}"]
        return [m for k, v in (written.get("init_args") or {}).items()
                for m in _arrived(f"{where}.{k}", v, getattr(actual, k, "<missing>"))]
    if isinstance(written, dict):
        get = actual.get if isinstance(actual, dict) else lambda k, d: getattr(actual, k, d)
        return [m for k, v in written.items() for m in _arrived(f"{where}.{k}", v, get(k, "<missing>"))]
    if isinstance(written, list) and isinstance(actual, (list, tuple)):
        return [] if list(written) == list(actual) else [f"{where}: {actual!r} != {written!r}"]
    return [] if written == actual else [f"{where}: got {actual!r}, the YAML says {written!r}"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_yaml_value_arrives_where_it_is_meant_to(path, monkeypatch, request):
    """Each value the YAML (and the base YAML under it) writes is the value the trainer, the model's
    hyper-parameters, the DataModule and its source hold -- not only that the file parses."""
    import yaml

    monkeypatch.chdir(CONFIGS.parent.parent)
    raw = yaml.safe_load(path.read_text())
    base = yaml.safe_load((CONFIGS / "base.yaml").read_text())
    override = sft_override(path, request)
    cli = make_cli(["-c", str(path), *override], run=False)
    model_args = raw["model"].get("init_args", raw["model"]) if "class_path" in raw["model"] else raw["model"]
    data_args = raw["data"].get("init_args", raw["data"]) if "class_path" in raw["data"] else raw["data"]
    hparams = dict(cli.model.hparams)
    if override:  # the RL policy is an object, not a hyper-parameter; its checkpoint is the test's own
        model_args["policy"]["init_args"]["ckpt"] = override[1]
        hparams["policy"] = cli.model.policy
    wrong = _arrived("model", model_args, hparams)
    wrong += _arrived("data", data_args, cli.datamodule)
    trainer = {**base["trainer"], **raw.get("trainer", {})}
    for key in ("max_epochs", "log_every_n_steps", "gradient_clip_val"):
        wrong += _arrived(f"trainer.{key}", trainer[key], getattr(cli.trainer, key))
    wrong += _arrived("trainer.logger.name", raw["trainer"]["logger"]["init_args"]["name"], cli.trainer.logger.name)
    for i, cb in enumerate(trainer["callbacks"]):
        same = [c for c in cli.trainer.callbacks if type(c).__name__ == cb["class_path"].rpartition(".")[2]]
        assert same, f"callback {cb['class_path']} missing"
        for c in same:
            if hasattr(c, "_kwargs") and "avg_fn" in c._kwargs and not hasattr(c, "decay"):
                c.decay = ema_decay(c._kwargs["avg_fn"])  # EMAWeightAveraging keeps its decay only in avg_fn
        wrong += min((_arrived(f"trainer.callbacks[{i}]", {"class_path": cb["class_path"], **cb}, c) for c in same),
                     key=len)
    assert not wrong, wrong


def ema_decay(avg_fn) -> float:
    """The decay an EMA update function applies, measured: one update of 0 towards 1 moves it by 1 - decay."""
    import torch

    return round(1 - float(avg_fn(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), 1)), 12)


def test_print_config(capsys):
    from conftest import run_lcm

    code, _ = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), "--print_config"])
    out = capsys.readouterr().out
    assert code == 0 and "GsmSymbolic" in out and "d_model: 256" in out and "lcm.module.ConceptLM" in out


@pytest.mark.parametrize("args", [["-c", "quickstart.yaml", "--data.planning.group_size", "3"],
                                  ["-c", "quickstart_planning.yaml"], ["-c", "decoder_quickstart.yaml"]])
def test_the_printed_config_can_be_read_back(args, capsys, tmp_path):
    """What --print_config shows (and every run saves as config.yaml) parses again: no default object that
    LightningCLI cannot write out (a planner instance used to print as "Unable to serialize")."""
    from conftest import run_lcm

    args = [str(CONFIGS / a) if a.endswith(".yaml") else a for a in args]
    code, _ = run_lcm(["fit", *args, "--print_config"])
    out = capsys.readouterr().out
    assert code == 0 and "Unable to serialize" not in out
    (tmp_path / "config.yaml").write_text(out)
    code, _ = run_lcm(["fit", "--config", str(tmp_path / "config.yaml"), "--print_config"])
    assert code == 0 and capsys.readouterr().out == out


@pytest.mark.parametrize("path", COMPARE, ids=lambda p: p.name)
def test_compare_config_loads(path):
    cfg = CompareConfig.load(path)
    repo = CONFIGS.parent.parent
    for config in [s.config for s in cfg.concept] + [cfg.token.config]:
        assert (repo / config).is_file(), config
    assert cfg.k >= 1 and cfg.problems >= 1 and cfg.concept
    if cfg.controls.decoder:
        assert (repo / cfg.controls.decoder).is_file()


@pytest.mark.parametrize("path", COMPARE, ids=lambda p: p.name)
def test_compare_overrides_arrive_in_every_system(path, monkeypatch):
    """Each `--key value` of a compare config's train_overrides (and the sweep's learning rate; the decoder's
    overrides in its config) is the value the parsed training config of every system holds."""
    from lcm.eval.lr_sweep import lr_override

    monkeypatch.chdir(CONFIGS.parent.parent)
    cfg = CompareConfig.load(path)
    runs = [(c, [*cfg.train_overrides, *(lr_override(cfg.lr_sweep[0]) if cfg.lr_sweep else [])])
            for c in [s.config for s in cfg.concept] + [cfg.token.config]]
    if cfg.controls.decoder:
        runs.append((cfg.controls.decoder, cfg.controls.decoder_overrides))
    on_cpu = {"--trainer.accelerator": "cpu", "--trainer.devices": "1", "--trainer.precision": "32-true"}  # GPU configs
    for config, overrides in runs:
        parsed = make_cli(["-c", config, *overrides, *[x for kv in on_cpu.items() for x in kv]], run=False).config
        for key, value in zip(overrides[::2], overrides[1::2]):
            if key in on_cpu:
                continue
            held = _lookup(parsed, key.lstrip("-"))
            assert str(held) == value or held == type(held)(value), (config, key, held, value)


def _lookup(ns, key: str):
    """A parsed value by its command-line key, which may omit `init_args` after a class's key."""
    parts, node = key.split("."), ns
    for part in parts:
        if part not in node and "init_args" in node:
            node = node["init_args"]
        node = node[part]
    return node


@pytest.mark.parametrize("option", ["pack", "planning", "long_documents", "max_seq_len"])
def test_sentence_data_refuses_sequence_options(option, capsys):
    """The sentence decoder's data serves single sentences: window, packing and planning options are errors."""
    from conftest import run_lcm

    value = "wrap" if option == "long_documents" else "8" if option == "max_seq_len" else "true"
    code, err = run_lcm(["fit", "-c", str(CONFIGS / "decoder_quickstart.yaml"), f"--data.init_args.{option}", value],
                        capsys)
    assert code == 2 and option in err
