"""Shared fixtures: the real bundled MiniLM encoder and one tiny real training run, built once per session."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "train" / "configs"

# Tiny but real: the shipped quickstart config, shrunk from the command line.
TINY_FIT = [
    "--data.source.init_args.n", "80", "--data.batch_size", "8", "--data.show_progress", "false",
    "--model.arch.d_model", "64", "--model.arch.n_layer", "2", "--model.arch.n_head", "2",
    "--model.warmup_steps", "5", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
]


@pytest.fixture(scope="session")
def encoder():
    from lcm.encoders import SentenceTransformerEncoder

    return SentenceTransformerEncoder()


def run_lcm(args: list[str], capsys=None) -> tuple[int, str]:
    """Run the `lcm` entry point in-process; returns (exit code, stderr text if captured)."""
    from lcm.cli import main

    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """`lcm fit` on the quickstart config with a tiny model and 80 problems. Returns the run folder."""
    work = tmp_path_factory.mktemp("fit")
    cwd = os.getcwd()
    os.chdir(work)  # runs/ and .cache/ land in the temp folder
    try:
        code, _ = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT])
    finally:
        os.chdir(cwd)
    assert code == 0
    run = work / "runs" / "quickstart" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    return run
