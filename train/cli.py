"""`lcm fit|validate|test|predict` through LightningCLI."""
from __future__ import annotations

import torch
from lightning.pytorch.cli import LightningCLI

from lcm.errors import LCMError

# Lightning's own aliases that are not file paths
_CKPT_ALIASES = {"last", "best", "hpc", "registry"}


class LCMCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.arch.max_seq_len", "data.max_seq_len")
        parser.set_defaults({"trainer.precision": "bf16-mixed" if torch.cuda.is_available() else "32-true"})

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # Check --ckpt_path before Lightning reads hyper-parameters from it: one clear line for a
        # missing or corrupted file instead of a zip-archive traceback.
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt and ckpt not in _CKPT_ALIASES and not str(ckpt).startswith("registry:"):
            from lcm.generate import load_checkpoint

            load_checkpoint(ckpt)


def run(args: list[str]) -> None:
    from lcm.module import ConceptLM
    from lcm.train.datamodule import ConceptDataModule

    if not args:
        raise LCMError("usage: lcm {fit,validate,test,predict} -c CONFIG.yaml | lcm generate --ckpt PATH PROBLEM")
    import sys

    # args=None lets LightningCLI read sys.argv itself (it warns when given both)
    LCMCLI(ConceptLM, ConceptDataModule, args=None if args == sys.argv[1:] else args, save_config_kwargs={"overwrite": True},
           auto_configure_optimizers=False)
