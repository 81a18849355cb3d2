"""Where do a diffusion model's plans go wrong? Teacher-forced plan and step predictions, read several ways.

For a planning checkpoint and its training config, on the first `--batches` validation batches (gold context,
every target position), the prediction of each plan and each step is scored by its cosine to the gold concept and
by retrieval top-1 among that type's distinct gold concepts in those batches:
  sampled         the model's own prediction (diffusion: the DDIM sampler at the checkpoint's settings, seeded;
                  Base-LCM: its regression)
  posterior mean  diffusion only: one denoiser pass from pure noise at the top level -- E[x0 | context] as the
                  denoiser learned it, with no sampling error
  context head    diffusion with `context_loss` > 0 only: the contextualizer's own regression of the next concept
  linear probe    ridge regression (lambda 0.1) from the context states at each position to the gold next concept,
                  fitted on `--fit-batches` training batches per type: does the context hold the answer at all?
A plan the probe cannot find is not computed by the context; a plan the probe finds but the sampler misses is lost
in the denoiser.

    HF_HUB_OFFLINE=1 python benchmarks/plan_diagnostic.py --ckpt runs/logic_diffusion/version_0/checkpoints/best.ckpt \
        --config train/configs/logic_diffusion.yaml
"""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from lcm.concepts import ConceptType
from lcm.errors import run_command
from lcm.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"
TYPES = {"plan": ConceptType.PLAN, "step": ConceptType.STEP}


def load(config: str, ckpt: Path):
    """The checkpoint's model as it was trained (eval mode) and the config's data module, set up."""
    from lcm.checkpoint import load_checkpoint, model_from_checkpoint
    from lcm.generate import concept_model_class
    from lcm.train.cli import make_cli

    state = load_checkpoint(ckpt)
    model = model_from_checkpoint(concept_model_class(state.get("lcm") or {}), state, ckpt)
    dm = make_cli(["-c", config, "--data.init_args.show_progress", "false"], run=False).datamodule
    dm.setup("fit")  # no trainer: the data is not handed to any model
    return model.eval(), dm


@torch.no_grad()
def readouts(model, xn: torch.Tensor, states_only: bool = False) -> dict[str, torch.Tensor]:
    """Normalized context (B, T, D) -> {way: normalized prediction after every position (B, T, D)}, plus "states"
    (only those with states_only: the probe's training data needs no sampling)."""
    if not hasattr(model.net, "sample"):  # Base-LCM
        return {"states": model.net.hidden_states(xn)} | ({} if states_only else {"sampled": model.net(xn)})
    ctx = model.net.encode_context(xn)
    if states_only:
        return {"states": model.net.context_states(ctx)}
    B, T = xn.shape[:2]
    qpos = torch.arange(T).expand(B, T)
    top = torch.full((B, T), model.diffusion.timesteps - 1)
    noise = torch.randn(xn.shape, generator=torch.Generator().manual_seed(model.eval_seed))
    out = {"sampled": model.net.sample(ctx, qpos, torch.Generator().manual_seed(model.eval_seed)),
           "posterior mean": model.net.denoise(ctx, noise, top, qpos, None), "states": model.net.context_states(ctx)}
    if model.diffusion.context_loss > 0:
        out["context head"] = model.net.context_prediction(ctx)
    return out


def collect(model, loader, n: int, states_only: bool = False) -> dict[str, torch.Tensor]:
    """Flattened target positions of n batches: each way's prediction, the gold next concept, its type."""
    parts: dict[str, list] = {}
    for _, batch in zip(range(n), loader):
        xn = model.normalizer.normalize(batch["x"])
        ways = readouts(model, xn[:, :-1], states_only) | {"gold": xn[:, 1:], "type": batch["types"][:, 1:]}
        for k, v in ways.items():
            parts.setdefault(k, []).append(v.reshape(-1, *v.shape[2:]))
    return {k: torch.cat(v) for k, v in parts.items()}


def score(model, pred: torch.Tensor, gold: torch.Tensor) -> dict:
    """Cosine to the gold concept and retrieval top-1 among the distinct gold concepts (raw space)."""
    p, g = F.normalize(model.normalizer.denormalize(pred), dim=-1), F.normalize(model.normalizer.denormalize(gold), dim=-1)
    distinct, which = torch.unique(g, dim=0, return_inverse=True)
    return {"cosine": float((p * g).sum(-1).mean()), "retrieval": float(((p @ distinct.T).argmax(1) == which).float().mean()),
            "positions": len(g), "candidates": len(distinct)}


def probe(train: dict, val: dict, sel_train: torch.Tensor, sel_val: torch.Tensor) -> torch.Tensor:
    """Ridge regression from context states to the gold next concept, fitted on train, applied to val."""
    X = torch.cat([train["states"][sel_train], torch.ones(int(sel_train.sum()), 1)], 1).double()
    W = torch.linalg.solve(X.T @ X + 0.1 * torch.eye(X.shape[1], dtype=X.dtype), X.T @ train["gold"][sel_train].double())
    return (torch.cat([val["states"][sel_val], torch.ones(int(sel_val.sum()), 1)], 1).double() @ W).float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--config", required=True, help="the checkpoint's training config")
    p.add_argument("--batches", type=int, default=4, help="validation batches scored")
    p.add_argument("--fit-batches", type=int, default=40, help="training batches the linear probe is fitted on")
    p.add_argument("--out", type=Path, default=RESULTS / "plan_diagnostic.json")
    args = p.parse_args()
    model, dm = load(args.config, args.ckpt)
    val = collect(model, dm.val_dataloader(), args.batches)
    train = collect(model, dm.train_dataloader(), args.fit_batches, states_only=True)
    rows = []
    for name, t in TYPES.items():
        sel, sel_train = val["type"] == int(t), train["type"] == int(t)
        ways = {k: v[sel] for k, v in val.items() if k not in ("gold", "type", "states")}
        ways["linear probe"] = probe(train, val, sel_train, sel)
        rows += [{"type": name, "readout": way, **score(model, pred, val["gold"][sel])} for way, pred in ways.items()]
    table = Table(title=f"{args.ckpt}: teacher-forced, {args.batches} validation batches")
    for c in ("type", "readout", "cosine", "retrieval", "positions", "candidates"):
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(r["type"], r["readout"], f"{r['cosine']:.3f}", f"{r['retrieval']:.3f}", str(r["positions"]),
                      str(r["candidates"]))
    Console().print(table)
    write_json(args.out, {"ckpt": str(args.ckpt), "config": args.config, "batches": args.batches,
                          "fit_batches": args.fit_batches, "rows": rows,
                          "date": dt.datetime.now().isoformat(timespec="seconds")})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_command(main)
