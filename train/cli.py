"""`lcm fit|validate|test|predict` through LightningCLI.

The model and data classes are chosen in the YAML (`model: {class_path: ..., init_args: ...}`); without a
class_path they default to the concept model (`lcm.module.ConceptLM`) and `lcm.train.ConceptDataModule`,
so `model: {arch: ...}` keeps working. `lcm.decoder.SentenceDecoderLM` with `lcm.train.SentenceDataModule`
trains the sentence decoder.
"""
from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI

from lcm.errors import LCMError

# Lightning's own aliases that are not file paths
_CKPT_ALIASES = {"last", "best", "hpc", "registry"}


class LCMCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"model": {"class_path": "lcm.module.ConceptLM"},
                             "data": {"class_path": "lcm.train.ConceptDataModule"}})
        parser.link_arguments("model.init_args.arch.max_seq_len", "data.init_args.max_seq_len")
        parser.set_defaults({"trainer.precision": "bf16-mixed" if torch.cuda.is_available() else "32-true"})

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # Check --ckpt_path before Lightning reads hyper-parameters from it: one clear line for a
        # missing or corrupted file instead of a zip-archive traceback.
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt and ckpt not in _CKPT_ALIASES and not str(ckpt).startswith("registry:"):
            from lcm.checkpoint import load_checkpoint

            load_checkpoint(ckpt)


def make_cli(args: list[str] | None, run: bool = True) -> LCMCLI:
    """The `lcm` LightningCLI; `args=None` reads sys.argv."""
    import warnings

    with warnings.catch_warnings():  # called from a script with its own argv, e.g. `lcm eval compare`
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return LCMCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                      args=args, run=run, save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)


def run(args: list[str]) -> None:
    import sys

    if not args:
        raise LCMError("usage: lcm {fit,validate,test,predict} -c CONFIG.yaml | lcm generate --ckpt PATH PROBLEM | "
                       "lcm eval compare -c CONFIG.yaml")
    # args=None lets LightningCLI read sys.argv itself (it warns when given both)
    make_cli(None if args == sys.argv[1:] else args)
