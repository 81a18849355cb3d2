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
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lcm.checkpoint import load_checkpoint, upgrade_hparams
from lcm.errors import LCMError
from lcm.train.callbacks import BankWriter, PredictionWriter
from lcm.train.cost import TrainingCost
from lcm.train.run_folder import keep_metrics, resumed_version

# Lightning's own aliases that are not file paths
_CKPT_ALIASES = {"last", "best", "hpc", "registry"}


# jsonargparse's wrapping around the line that names the bad key (Union-of-classes validation)
_ERROR_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
                "Given value:", "Expected a <class 'NoneType'>")


def one_line_error(message: str, limit: int = 400) -> str:
    """A jsonargparse error message -> one line: its meaningful lines joined (the bad key and why), capped."""
    lines = (line.strip().lstrip("-").strip() for line in str(message).splitlines())
    text = " ".join(line for line in lines if line and not line.startswith(_ERROR_NOISE))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class LCMArgumentParser(LightningArgumentParser):
    """Parse errors are one `error: ...` line (an `LCMError`) instead of the ~50-line usage block before it."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # nested parsing that expects ArgumentError
            return super().error(message, ex)
        raise LCMError(one_line_error(message)) from ex


def _trains_nothing(trainer_cfg) -> str | None:
    """The option of a `fit` config that makes it train nothing (max_epochs 0 or max_steps 0), else None."""
    for key in ("max_epochs", "max_steps"):
        if trainer_cfg.get(key) == 0:
            return key
    return None


def wrapped_lcm_error(e: BaseException | None, depth: int = 10) -> LCMError | None:
    """The `LCMError` inside an exception's cause / context chain (jsonargparse wraps a class's own error in a
    multi-line "Does not validate against any of the Union subtypes" ValueError), or None."""
    while e is not None and depth:
        if isinstance(e, LCMError):
            return e
        e, depth = e.__cause__ or e.__context__, depth - 1
    return None


class LCMCLI(LightningCLI):
    def instantiate_classes(self) -> None:
        """As Lightning's; a model's or data's own one-line error (`LCMError` in its `__init__`) reaches the user
        as that line, not as jsonargparse's wrapping of it."""
        try:
            super().instantiate_classes()
        except Exception as e:  # noqa: BLE001 - re-raised unchanged unless it carries one of our errors
            inner = wrapped_lcm_error(e)
            if inner is None:
                raise
            raise inner from None

    def parse_arguments(self, parser, args) -> None:
        """As Lightning's, plus: a `fit` that would train nothing is refused before anything is built or seeded
        (it used to exit 0 with no checkpoint and preview an untrained model)."""
        super().parse_arguments(parser, args)
        if self.config.get("subcommand") == "fit":
            key = _trains_nothing(self.config["fit"].get("trainer") or {})
            if key:
                raise LCMError(f"--trainer.{key} 0 trains nothing (no checkpoint would be written); "
                               f"use a positive value, or -1 for no limit")

    def before_instantiate_classes(self) -> None:
        """A resumed fit continues in the folder of its checkpoint's run (`lcm.train.run_folder`)."""
        self._resumed = None
        if self.config.get("subcommand") == "fit":
            cfg = self.config["fit"]
            logger = cfg["trainer"].get("logger")
            self._resumed = resumed_version(cfg.get("ckpt_path"), logger)
            if self._resumed is not None:
                logger.init_args.version = self._resumed

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        """As Lightning's, plus TensorBoard beside the CSV log: event files in the same run folder
        (`runs/<name>/version_N/`), so `tensorboard --logdir runs` shows every run's curves."""
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

        trainer = super().instantiate_trainer(**kwargs)
        if getattr(self, "_resumed", None) is not None:
            keep_metrics(trainer)
        csv = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if csv is not None and not any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
            tensorboard = TensorBoardLogger(csv.save_dir, name=csv.name, version=csv.version, default_hp_metric=False)
            trainer.loggers = [*trainer.loggers, tensorboard]
        return trainer

    def after_fit(self) -> None:
        """Say where the checkpoints are and what to run next."""
        if self.trainer.is_global_zero:
            print(next_steps(self.trainer, self.model, self.datamodule))

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"model": {"class_path": "lcm.module.ConceptLM"},
                             "data": {"class_path": "lcm.train.ConceptDataModule"}})
        parser.link_arguments("model.init_args.arch.max_seq_len", "data.init_args.max_seq_len")
        parser.set_defaults({"trainer.precision": "bf16-mixed" if torch.cuda.is_available() else "32-true"})
        # every run writes the retrieval banks of its data (nothing for data without banks)
        parser.add_lightning_class_args(BankWriter, "bank_writer")
        # `lcm predict` writes what the model's predict_step returns (predictions.npz in the run's folder)
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        # every fit writes what it cost in FLOPs, the frozen encoder included (training_cost.json in the run folder)
        parser.add_lightning_class_args(TrainingCost, "training_cost")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        """As Lightning's, with `weights_only: true` by default: the trainer restores --ckpt_path without
        unpickling code (Lightning leaves it null, which torch reads as true for local files, false for URLs)."""
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if "weights_only" in self._subcommand_method_arguments.get(subcommand, ()):
            parser.set_defaults({"weights_only": True})
        return parser

    def _parse_ckpt_path(self) -> None:
        """As Lightning's own (one `torch.load`, weights only; the checkpoint's hyper-parameters override the model
        config), plus: a missing or corrupted file is one clear line instead of a zip-archive traceback, and
        hyper-parameters written by earlier versions are renamed first (`lcm.checkpoint.upgrade_hparams`)."""
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt or ckpt in _CKPT_ALIASES or str(ckpt).startswith("registry:") or "://" in str(ckpt):
            return super()._parse_ckpt_path()  # aliases and remote (fsspec) paths: Lightning's to read
        if not Path(ckpt).is_file():
            raise LCMError(f"checkpoint {ckpt} does not exist")
        hparams = upgrade_hparams(load_checkpoint(ckpt)["hyper_parameters"])  # weights only: one clear line
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        else:  # the model class of the config (parsed against ConceptLM otherwise: a token model could not resume)
            hparams = {"class_path": self.config[subcommand]["model"]["class_path"], "init_args": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except (SystemExit, LCMError) as e:  # jsonargparse said why; say which file it was
            raise LCMError(f"checkpoint {ckpt}: its hyper-parameters do not fit this version's model options") from e


BASE_CONFIG = Path(__file__).resolve().parent / "configs" / "base.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def next_steps(trainer: L.Trainer, model, datamodule) -> str:
    """The end of `lcm fit`: the best / last checkpoint and, for concept models, the `lcm generate` command."""
    import shlex

    from lcm.module import ConceptLM
    from lcm.train.datamodule import ConceptDataModule

    ckpt = trainer.checkpoint_callback
    best = (ckpt.best_model_path if ckpt is not None else "") or ""
    last = (ckpt.last_model_path if ckpt is not None else "") or ""
    if not (best or last):
        return "no checkpoint was written (no ModelCheckpoint callback in trainer.callbacks)"
    lines = [f"checkpoint: {path} ({what})" for what, path in (("best", best), ("last", last)) if path]
    if isinstance(model, ConceptLM) and isinstance(datamodule, ConceptDataModule) and datamodule.banks:
        docs = datamodule.corpus.docs  # empty lists when trained from a store
        held_out = docs["test"] or docs["val"]
        problem = held_out[0].prompt_text if held_out else "YOUR PROBLEM"
        lines.append(f"next: lcm generate --ckpt {shlex.quote(best or last)} {shlex.quote(problem)}")
    return "\n".join(lines)


def make_cli(args: list[str] | None, run: bool = True) -> LCMCLI:
    """The `lcm` LightningCLI; `args=None` reads sys.argv. `configs/base.yaml` is read first, then the -c files."""
    import warnings

    base = {"default_config_files": [str(BASE_CONFIG)]}
    parser_kwargs = {sub: base for sub in SUBCOMMANDS} if run else base

    with warnings.catch_warnings():  # called from a script with its own argv, e.g. `lcm eval compare`
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        # EMAWeightAveraging warns about any `configure_model` (it cannot average sharded layers); ours only compiles
        warnings.filterwarnings("ignore", message="You're using the WeightAveraging callback with a model that overrides")
        return LCMCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                      args=args, run=run, save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
                      parser_kwargs=parser_kwargs, parser_class=LCMArgumentParser)


def run(args: list[str]) -> None:
    import sys

    if not args:
        raise LCMError("usage: lcm {fit,validate,test,predict} -c CONFIG.yaml | lcm generate --ckpt PATH PROBLEM | "
                       "lcm eval compare -c CONFIG.yaml")
    # args=None lets LightningCLI read sys.argv itself (it warns when given both)
    make_cli(None if args == sys.argv[1:] else args)
