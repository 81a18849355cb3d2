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
