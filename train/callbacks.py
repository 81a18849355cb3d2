"""Callbacks: write the sentence banks, show what the model generates when training ends, log which data each
rank trained on."""
from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from lcm.errors import LCMError
from lcm.generate import format_generation
from lcm.retrieval import SentenceBank
from lcm.train.datamodule import ConceptDataModule
from lcm.train.sentences import SentenceDataModule


def bank_folder(trainer: L.Trainer) -> Path | None:
    """Where banks go: next to the checkpoints, or, under `lcm validate --ckpt_path`, next to the validated
    checkpoint (the repair path for a deleted bank)."""
    if trainer.state.fn == "validate" and trainer.ckpt_path:
        return Path(trainer.ckpt_path).parent
    ckpt = trainer.checkpoint_callback
    return Path(ckpt.dirpath) if ckpt is not None and ckpt.dirpath is not None else None


def write_banks(trainer: L.Trainer, dm: ConceptDataModule) -> None:
    """Persist the data's sentence banks (rank zero). A valid bank built from the same data is kept; a missing,
    broken or stale one (other corpus, other encoder) is rebuilt."""
    dirpath = bank_folder(trainer)
    if not trainer.is_global_zero or dirpath is None:
        return
    for name, make in dm.banks_to_write().items():
        folder = dirpath / name
        try:
            SentenceBank.load(folder, encoder_id=dm.encoder.id, dim=dm.embed_dim, corpus=dm.corpus_key)
            continue  # a valid bank of this data is already there
        except LCMError:
            pass
        bank = make()
        if bank is not None:
            bank.save(folder, corpus=dm.corpus_key)


class BankWriter(L.Callback):
    """Writes the retrieval banks of a concept or sentence DataModule next to the checkpoints when `fit` starts,
    and under `lcm validate --ckpt_path` on the data the checkpoint was trained on (which rebuilds a deleted or
    stale bank). Validating on other data leaves the checkpoint's banks alone: generation reads them. Added to
    every `lcm` run by the CLI; does nothing for data without banks (the token baseline's)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if isinstance(trainer.datamodule, ConceptDataModule):
            write_banks(trainer, trainer.datamodule)

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        dm = trainer.datamodule
        if trainer.sanity_checking or trainer.state.fn != "validate" or not isinstance(dm, ConceptDataModule):
            return
        trained_on = pl_module.meta.get("corpus")  # the corpus the checkpoint records (concept models)
        if trained_on not in (None, dm.corpus_key):
            rank_zero_warn(f"validating on other data (corpus {dm.corpus_key}) than the checkpoint was trained on "
                           f"({trained_on}): its banks are kept as they are")
            return
        write_banks(trainer, dm)


class GenerationPreview(L.Callback):
    """At the end of `fit`: print the last validation metrics (with baselines) and generated reasoning
    for a few held-out test problems next to their reference solutions.

    Args:
        num_problems: held-out problems to generate for.
        max_steps: step cap per problem.
        eot_threshold: None (default): end-of-text when it is the closest kind (`lcm.generation_step.StepRule`);
            a number is also a floor on the cosine to it, as `generate`'s.
    """

    def __init__(self, num_problems: int = 3, max_steps: int = 12, eot_threshold: float | None = None):
        self.num_problems = num_problems
        self.max_steps = max_steps
        self.eot_threshold = eot_threshold

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            table = Table(title="validation (teacher-forced next step)")
            for col in ("metric", "value"):
                table.add_column(col)
            for k in sorted(metrics):
                table.add_row(k, f"{metrics[k]:.4f}")
            console.print(table)
        dm = trainer.datamodule
        if not isinstance(dm, ConceptDataModule) or isinstance(dm, SentenceDataModule):
            return
        if dm.store is not None:
            console.print("generation preview skipped: data.store holds concepts, not the problems' text")
            return
        if not dm.banks:
            console.print("generation preview skipped: data.banks is false (no retrieval bank)")
            return
        docs = dm.corpus.docs["test"][: self.num_problems] or dm.corpus.docs["val"][: self.num_problems]
        if not docs:
            return
        from lcm.generate import ConceptGenerator

        try:
            gen = ConceptGenerator(pl_module, dm.encoder, dm.bank(), eot_text=dm.eot_text, max_chars=dm.max_chars,
                                   device=pl_module.device, plan_bank=dm.plan_bank(),
                                   prompt_format=pl_module.meta.get("prompt_format", "sentences"))
            # each problem's prompt sentences as training split them: a line-structured prompt stays line by line
            outs = gen.generate([d.prompt for d in docs], max_steps=self.max_steps, eot_threshold=self.eot_threshold)
        except LCMError as e:
            console.print(f"[red]generation preview skipped: {e}")
            return
        pl_module.train(True)
        for doc, out in zip(docs, outs):
            console.rule("held-out problem")
            console.print(doc.prompt_text, highlight=False)
            console.print(f"[bold]generated[/bold] (stop: {out.stop_reason})")
            for line in format_generation(out):
                console.print(line, highlight=False, markup=False)
            console.print("[bold]reference[/bold]")
            for i, step in enumerate(doc.steps, 1):
                console.print(f"  {i:2d}. {step}", highlight=False)


class PredictionWriter(BasePredictionWriter):
    """Writes what `lcm predict` returns -- every batch's flat prediction records (the model's `predict_step`:
    e.g. pred (N, D), gold_row (N,), type (N,), cosine (N,)) concatenated -- to one `.npz` file, atomically, on
    each rank (`<path stem>.rank<k>.npz` when there are several). Added to every `lcm` run by the CLI.

    Args:
        path: output file; default `<log dir>/predictions.npz` (the run's logger folder, else the working dir).
    """

    def __init__(self, path: str | None = None):
        super().__init__(write_interval="epoch")
        self.path = path

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module, predictions, batch_indices) -> None:
        import numpy as np

        from lcm.io import atomic_path

        batches = [b for b in (predictions[0] if predictions and isinstance(predictions[0], list) else predictions)
                   if isinstance(b, dict)]
        if not batches:
            return
        arrays = {k: np.concatenate([b[k].detach().cpu().numpy() for b in batches]) for k in batches[0]}
        path = Path(self.path) if self.path else Path(trainer.log_dir or ".") / "predictions.npz"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        rank_zero_info(f"predictions: {len(arrays[next(iter(arrays))])} records -> {path}")


class DataShardLog(L.Callback):
    """Records which training sequences each rank saw and writes `<dirpath>/rank<k>.json` at the end of fit:
    an audit that data-parallel ranks train on disjoint shards that together cover the training split.

    A sequence is identified by a hash of its content (concept ids, or texts for text batches).

    Args:
        dirpath: folder of the per-rank JSON files.
    """

    def __init__(self, dirpath: str = "runs/data_shards"):
        self.dirpath = dirpath
        self.seen: set[str] = set()

    @staticmethod
    def signatures(batch: dict) -> list[str]:
        import hashlib

        if "ids" in batch:  # concept batches: (B, T) table rows, -1 = padding
            rows = [r[r >= 0].tobytes() for r in batch["ids"].cpu().numpy()]
        else:  # text batches: lists of strings per field
            fields = [v for v in batch.values() if isinstance(v, list)]
            rows = ["\x00".join(parts).encode() for parts in zip(*fields)]
        return [hashlib.blake2b(r, digest_size=8).hexdigest() for r in rows]

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        self.seen = set()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        self.seen.update(self.signatures(batch))

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        from pathlib import Path

        from lcm.io import write_json

        write_json(Path(self.dirpath) / f"rank{trainer.global_rank}.json",
                   {"rank": trainer.global_rank, "world_size": trainer.world_size, "sequences": sorted(self.seen)})
