"""`lcm fit|validate|test|predict` through LightningCLI.

The model and data classes are chosen in the YAML (`model: {class_path: ..., init_args: ...}`); without a
class_path they default to the concept model (`lcm.module.ConceptLM`) and `lcm.train.ConceptDataModule`,
so `model: {arch: ...}` keeps working. `lcm.decoder.SentenceDecoderLM` with `lcm.train.SentenceDataModule`
trains the sentence decoder.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI

from lcm.errors import LCMError
from lcm.train.callbacks import BankWriter, PredictionWriter

# Lightning's own aliases that are not file paths
_CKPT_ALIASES = {"last", "best", "hpc", "registry"}


class LCMCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"model": {"class_path": "lcm.module.ConceptLM"},
                             "data": {"class_path": "lcm.train.ConceptDataModule"}})
        parser.link_arguments("model.init_args.arch.max_seq_len", "data.init_args.max_seq_len")
        parser.set_defaults({"trainer.precision": "bf16-mixed" if torch.cuda.is_available() else "32-true"})
        # every run writes the retrieval banks of its data (nothing for data without banks)
        parser.add_lightning_class_args(BankWriter, "bank_writer")
        # `lcm predict` writes what the model's predict_step returns (predictions.npz in the run's folder)
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")

    def _parse_ckpt_path(self) -> None:
        """Lightning reads the hyper-parameters of --ckpt_path here (one `torch.load`, weights only); a missing
        or corrupted file becomes one clear line instead of a zip-archive traceback."""
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt or ckpt in _CKPT_ALIASES or str(ckpt).startswith("registry:"):
            return super()._parse_ckpt_path()
        if not Path(ckpt).is_file():
            raise LCMError(f"checkpoint {ckpt} does not exist")
        try:
            super()._parse_ckpt_path()
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - zip/pickle errors of every kind mean the same thing here
            raise LCMError(f"checkpoint {ckpt} is corrupted or not a torch checkpoint ({type(e).__name__})") from e


BASE_CONFIG = Path(__file__).resolve().parent / "configs" / "base.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def make_cli(args: list[str] | None, run: bool = True) -> LCMCLI:
    """The `lcm` LightningCLI; `args=None` reads sys.argv. `configs/base.yaml` is read first, then the -c files."""
    import warnings

    base = {"default_config_files": [str(BASE_CONFIG)]}
    parser_kwargs = {sub: base for sub in SUBCOMMANDS} if run else base

    with warnings.catch_warnings():  # called from a script with its own argv, e.g. `lcm eval compare`
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return LCMCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                      args=args, run=run, save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
                      parser_kwargs=parser_kwargs)


def run(args: list[str]) -> None:
    import sys

    if not args:
        raise LCMError("usage: lcm {fit,validate,test,predict} -c CONFIG.yaml | lcm generate --ckpt PATH PROBLEM | "
                       "lcm eval compare -c CONFIG.yaml")
    # args=None lets LightningCLI read sys.argv itself (it warns when given both)
    make_cli(None if args == sys.argv[1:] else args)
