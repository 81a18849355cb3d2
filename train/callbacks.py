"""Callbacks: show what the model generates when training ends."""
from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from lcm.errors import LCMError
from lcm.generate import format_generation


class GenerationPreview(L.Callback):
    """At the end of `fit`: print the last validation metrics (with baselines) and generated reasoning
    for a few held-out test problems next to their reference solutions.

    Args:
        num_problems: held-out problems to generate for.
        max_steps: step cap per problem.
        eot_threshold: end-of-text cosine threshold.
    """

    def __init__(self, num_problems: int = 3, max_steps: int = 12, eot_threshold: float = 0.9):
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
        if dm is None or not hasattr(dm, "bank"):
            return
        docs = dm.corpus.docs["test"][: self.num_problems] or dm.corpus.docs["val"][: self.num_problems]
        if not docs:
            return
        from lcm.generate import ConceptGenerator

        try:
            gen = ConceptGenerator(pl_module, dm.encoder, dm.bank(), eot_text=dm.eot_text, max_chars=dm.max_chars,
                                   device=pl_module.device, plan_bank=getattr(dm, "plan_bank", lambda: None)())
            outs = gen.generate([d.prompt_text for d in docs], max_steps=self.max_steps, eot_threshold=self.eot_threshold)
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
