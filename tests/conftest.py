"""Shared fixtures: the real bundled MiniLM encoder and one tiny real training run, built once per session."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import lightning.pytorch  # noqa: E402,F401 - its log handler binds the real stderr, not the first test's capsys
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "train" / "configs"

# Tiny but real: the shipped quickstart config, shrunk from the command line.
TINY_FIT = [
    "--data.source.init_args.n", "80", "--data.batch_size", "8", "--data.show_progress", "false",
    "--model.arch.d_model", "64", "--model.arch.n_layer", "2", "--model.arch.n_head", "2",
    "--model.optim.warmup_steps", "5", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
]


@pytest.fixture(scope="session")
def encoder():
    from lcm.encoders import SentenceTransformerEncoder

    return SentenceTransformerEncoder()


def run_lcm(args: list[str], capsys=None) -> tuple[int, str]:
    """Run the `lcm` entry point in-process; returns (exit code, stderr text if captured)."""
    from lcm.eval.cli import main

    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def fit_in(work: Path, config: str, args: list[str]) -> Path:
    """`lcm fit -c train/configs/<config>` with runs/ and .cache/ inside `work`; returns runs/<name>/version_0."""
    cwd = os.getcwd()
    os.chdir(work)
    try:
        code, _ = run_lcm(["fit", "-c", str(CONFIGS / config), *args])
    finally:
        os.chdir(cwd)
    assert code == 0
    run = work / "runs" / Path(config).stem / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    return run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """`lcm fit` on the quickstart config with a tiny model and 80 problems. Returns the run folder."""
    return fit_in(tmp_path_factory.mktemp("fit"), "quickstart.yaml", TINY_FIT)


TOKEN_SFT = ["--model.init_args.arch.d_model", "64", "--model.init_args.arch.n_layer", "2",
             "--model.init_args.arch.n_head", "2", "--model.init_args.vocab_size", "300",
             "--data.init_args.source.init_args.n", "60", "--trainer.max_epochs", "1",
             "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="session")
def token_sft(tmp_path_factory) -> Path:
    """A tiny real token-baseline checkpoint (`lcm fit -c token_baseline.yaml`, 60 gsm problems, one epoch): the
    SFT model RL tests start from."""
    return fit_in(tmp_path_factory.mktemp("token_sft"), "token_baseline.yaml", TOKEN_SFT) / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def sft(token_sft, trained_run) -> dict[str, Path]:
    """SFT checkpoints per RL policy kind: the tiny token model, and the tiny quickstart Base-LCM for both concept
    policies."""
    concept = trained_run / "checkpoints" / "last.ckpt"
    return {"token": token_sft, "categorical": concept, "gaussian": concept}


def train_tiny_token_model(rows: list[dict[str, str]], arch, steps: int, name: str, callbacks=()):
    """A tiny real TokenLM trained by Lightning for `steps` steps on `rows` ({"prompt", "solution"}), vocabulary
    300, from seed 0 (the token-model and controls tests learn a format this way)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from lcm.handoff import TextData
    from lcm.optim import OptimConfig
    from lcm.token_model import TokenLM

    torch.manual_seed(0)
    model = TokenLM(arch=arch, vocab_size=300, optim=OptimConfig(lr=5e-3, warmup_steps=10, weight_decay=0.0))
    model.attach_data(TextData(name, lambda: [t for r in rows for t in r.values()]))
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", callbacks=list(callbacks))
    collate = lambda batch: {"prompt": [r["prompt"] for r in batch], "solution": [r["solution"] for r in batch]}  # noqa: E731
    trainer.fit(model, DataLoader(rows, batch_size=16, shuffle=True, collate_fn=collate))
    return model, trainer
