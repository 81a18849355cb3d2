"""`compile: true` for every lcm LightningModule: torch.compile the network in place when `fit` starts."""
from __future__ import annotations


class CompileOnFit:
    """Mixin for a LightningModule with `self.net` and a `compile` hyperparameter. In-place
    `nn.Module.compile` keeps parameter names, so checkpoints are the same compiled or not."""

    def configure_model(self) -> None:
        """Lightning hook (after `setup`, before the model moves to its device): `compile` for `fit` only."""
        trainer = self._trainer
        if self.hparams.get("compile") and trainer is not None and trainer.state.fn == "fit":
            self.compile_net()

    def compile_targets(self) -> list:
        """The modules whose forward the training step runs: the whole network by default."""
        return [self.net]

    def compile_net(self) -> None:
        """`torch.compile` the `compile_targets`, in place (idempotent)."""
        if not getattr(self, "_net_compiled", False):
            for module in self.compile_targets():
                module.compile()
            self._net_compiled = True
