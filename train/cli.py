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

    def _check_ckpt(self) -> None:
        ckpt = self.config[self.subcommand].get("ckpt_path")
        if ckpt and ckpt not in _CKPT_ALIASES and not str(ckpt).startswith("registry:"):
            from lcm.generate import load_checkpoint

            load_checkpoint(ckpt)  # one clear line for a missing or corrupted file

    before_fit = before_validate = before_test = before_predict = _check_ckpt


def run(args: list[str]) -> None:
    from lcm.module import ConceptLM
    from lcm.train.datamodule import ConceptDataModule

    if not args:
        raise LCMError("usage: lcm {fit,validate,test,predict} -c CONFIG.yaml | lcm generate --ckpt PATH PROBLEM")
    import sys

    # args=None lets LightningCLI read sys.argv itself (it warns when given both)
    LCMCLI(ConceptLM, ConceptDataModule, args=None if args == sys.argv[1:] else args, save_config_kwargs={"overwrite": True},
           auto_configure_optimizers=False)
