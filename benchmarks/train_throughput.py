"""Training throughput of the quickstart Base-LCM: Lightning `Trainer.fit` against a plain PyTorch loop.

Both train the quickstart model shape (`model.arch` of train/configs/quickstart.yaml, batch size from
`data.batch_size`) on the same precomputed synthetic batches shaped like gsm documents
(`--prompt-len` prompt concepts, `--step-len` steps, one end-of-text; random unit-norm vectors):
  lightning  Trainer(max_steps, gradient_clip_val=1.0, no logger/checkpoints/progress bar).fit(...)
  plain      AdamW (same parameter groups), the module's MSE loss, backward, clip_grad_norm_(1.0), step
Timing starts at step `--warmup` and ends after the last step. Reported per second:
  concept positions  loss targets (step / end-of-text concepts at positions 1..T-1)
  total positions    non-padding concepts fed in
Lightning and plain alternate for `--repeats` rounds, each on a fresh, identically seeded model; medians
are reported with the ratio lightning / plain.

Run:
    python benchmarks/train_throughput.py [--steps 60] [--warmup 10] [--repeats 3]
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import statistics
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import yaml
from rich.console import Console
from rich.table import Table

from lcm.concepts import PAD, ConceptType
from lcm.io import write_json
from lcm.model import LCMConfig
from lcm.module import ConceptLM, target_mask

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def make_batches(n: int, batch_size: int, prompt_len: int, step_len: int, dim: int, seed: int) -> list[dict]:
    """n batches of documents: prompt_len prompts, step_len steps, one end-of-text; unit-norm x."""
    g = torch.Generator().manual_seed(seed)
    types = torch.tensor([ConceptType.PROMPT] * prompt_len + [ConceptType.STEP] * step_len + [ConceptType.EOT])
    T = len(types)
    batches = []
    for i in range(n):
        x = F.normalize(torch.randn(batch_size, T, dim, generator=g), dim=-1)
        ids = torch.arange(i * batch_size * T, (i + 1) * batch_size * T).view(batch_size, T)
        batches.append({"x": x, "ids": ids, "types": types.expand(batch_size, T).clone()})
    return batches


def count_positions(batches: list[dict]) -> tuple[int, int]:
    """(loss-target positions, non-padding positions) over the batches."""
    return (sum(int(target_mask(b["types"]).sum()) for b in batches),
            sum(int((b["types"] != PAD).sum()) for b in batches))


def new_module(arch: LCMConfig, lr: float, warmup_steps: int, batches: list[dict], seed: int) -> ConceptLM:
    torch.manual_seed(seed)  # both runs start from the same weights
    module = ConceptLM(arch=arch, lr=lr, warmup_steps=warmup_steps)
    # fitted on the targets, as the DataModule does on the training split
    module.normalizer.fit(torch.cat([b["x"][:, 1:].reshape(-1, arch.embed_dim) for b in batches[:4]]))
    return module


class StepTimer(L.Callback):
    """Wall time from the start of batch `warmup` to the end of the last batch (no setup/teardown)."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


def run_lightning(module: ConceptLM, batches: list[dict], warmup: int) -> float:
    timer = StepTimer(warmup)
    trainer = L.Trainer(max_steps=len(batches), logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", gradient_clip_val=1.0, callbacks=[timer])
    # batch_size=None: every item of the list already is a batch
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    return timer.end - timer.start


def run_plain(module: ConceptLM, batches: list[dict], warmup: int) -> float:
    hp = module.hparams
    params = [p for p in module.parameters() if p.requires_grad]
    # the module's configure_optimizers needs a Trainer; same groups and hyperparameters, no LR schedule
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": hp.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
    module.train()
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        # training_step itself calls self.log, which needs a Trainer: same loss, recomputed
        pred, target, mask = module._predict(batch)
        loss = F.mse_loss(pred[mask].float(), target[mask].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "train" / "configs" / "quickstart.yaml")
    p.add_argument("--steps", type=int, default=60, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before timing starts")
    p.add_argument("--repeats", type=int, default=3, help="rounds of lightning vs plain (medians reported)")
    p.add_argument("--batch-size", type=int, default=None, help="default: data.batch_size of the config")
    p.add_argument("--prompt-len", type=int, default=5, help="prompt concepts per document")
    p.add_argument("--step-len", type=int, default=10, help="step concepts per document (+1 end-of-text)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--out", type=Path, default=RESULTS / "train_throughput.json")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    # Lightning's info lines and its hints about workers / the unused val loop / pytree are noise here
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    for msg in (".*does not have many workers.*", ".*no `val_dataloader`.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", msg)

    cfg = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    arch = LCMConfig(**cfg["model"]["arch"])
    lr = float(cfg["model"].get("lr", 1e-3))
    batch_size = args.batch_size or int(cfg.get("data", {}).get("batch_size", 32))
    batches = make_batches(args.warmup + args.steps, batch_size, args.prompt_len, args.step_len, arch.embed_dim,
                           args.seed)
    targets, total = count_positions(batches[args.warmup:])
    warmup_steps = int(cfg["model"].get("warmup_steps", 100))

    load_before = os.getloadavg()[0]
    secs: dict[str, list[float]] = {"lightning": [], "plain": []}
    for r in range(args.repeats):
        order = ("lightning", "plain") if r % 2 == 0 else ("plain", "lightning")  # alternate against drift
        for name in order:
            module = new_module(arch, lr, warmup_steps, batches, args.seed)
            run = run_lightning if name == "lightning" else run_plain
            secs[name].append(run(module, batches, args.warmup))

    med = {k: statistics.median(v) for k, v in secs.items()}
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "config": str(args.config),
        "arch": cfg["model"]["arch"] | {"embed_dim": arch.embed_dim},
        "params": sum(p.numel() for p in module.net.parameters()),
        "batch_size": batch_size,
        "seq_len": args.prompt_len + args.step_len + 1,
        "steps_timed": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "concept_positions_timed": targets,
        "total_positions_timed": total,
        "seconds": secs,
        "median_seconds": med,
        "concept_positions_per_s": {k: targets / v for k, v in med.items()},
        "total_positions_per_s": {k: total / v for k, v in med.items()},
        "steps_per_s": {k: args.steps / v for k, v in med.items()},
        "lightning_over_plain": med["plain"] / med["lightning"],  # throughput ratio
    }

    table = Table(title=f"Training throughput: quickstart Base-LCM ({result['params'] / 1e6:.2f}M params), "
                        f"batch {batch_size} x {result['seq_len']} concepts, {args.steps} steps, "
                        f"{result['torch_threads']} torch threads, median of {args.repeats}")
    for col in ("", "median s", "steps/s", "concept pos/s", "total pos/s"):
        table.add_column(col, justify="right" if col else "left")
    for k in ("lightning", "plain"):
        table.add_row(k, f"{med[k]:.3f}", f"{result['steps_per_s'][k]:.1f}",
                      f"{result['concept_positions_per_s'][k]:,.0f}", f"{result['total_positions_per_s'][k]:,.0f}")
    table.add_section()
    table.add_row("lightning / plain throughput", "", "", f"{result['lightning_over_plain']:.3f}", "")
    Console().print(table)

    write_json(args.out, result)  # atomic, creates the folder
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
