"""Training throughput: the `lcm` LightningModules under `Trainer.fit` against a plain PyTorch loop.

Models (`--model concept|token|both`):
  concept  Base-LCM (`lcm.module.ConceptLM`) on synthetic documents shaped like gsm ones: `--prompt-len`
           prompt concepts, then steps, then one end-of-text; random unit-norm vectors. `--seq-len` = the
           positions fed to the model per sequence (a batch row holds seq_len + 1 concepts).
  token    the token baseline (`lcm.token_model.TokenLM`) of the same shape on pre-tokenized random
           ids (`--token-seq-len` tokens fed per row, the first `--token-prompt-len` are the prompt).
Presets (`--preset`):
  quickstart  (default; CPU-sized) model.arch / lr / warmup / batch size of train/configs/quickstart.yaml,
              5 prompt concepts + 10 steps + end-of-text; token model as train/configs/token_baseline.yaml.
  100m        d_model 768, 12 layers, 12 heads, SwiGLU (ffn 2048), embed_dim 384, 128 concepts, batch 64,
              dropout 0; token model: same blocks, vocab 8192, 512 tokens, batch 16 (the same 8,192
              positions per step).
The two runs of a model do the same work, on a fresh, identically seeded module each:
  lightning  Trainer(max_steps, precision, gradient_clip_val=1.0, no logger/checkpoints/progress bar).fit
  plain      the module's own configure_optimizers (AdamW, decay on matrices only, fused on CUDA; the same
             warmup/cosine schedule, stepped per step), its training_step under the same autocast, backward,
             clip_grad_norm_(1.0), optimizer and scheduler step; no Lightning
Both read the same batches through a DataLoader with pin_memory on CUDA and copy them with non_blocking=True
(Lightning does that itself); with `--compile` both compile the network the same way (the module's
`compile_net`, which `compile: true` runs in Trainer.fit). Timing starts at step `--warmup` (the batch is
on the device) and stops after the last step; on CUDA with torch.cuda.synchronize() at those two points
only. Lightning and plain alternate for `--repeats` rounds; medians are reported with the ratio
lightning / plain of throughput.

FLOP model (training = forward + backward): per position 6 * N + 6 * n_layer * d_model * (T + 1), where
N = parameters used in matrix products per position (every parameter except lookup embeddings; the
token model's output head, tied to its embedding, counts as V * d_model) and the second term is causal
attention (QK^T and AV over the T(T+1)/2 visible pairs of a length-T sequence, times 3 for the backward).
MFU = achieved FLOP/s / peak dense FLOP/s of the device at the precision (a small table by
torch.cuda.get_device_name, or --peak-tflops); n/a on CPU unless --peak-tflops is given.

Run:
    python benchmarks/train_throughput.py                    # quickstart Base-LCM on the CPU
    python benchmarks/train_throughput.py --preset 100m --model both [--compile]   # GPU
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import torch
import torch.nn.functional as F
import yaml
from rich.console import Console
from rich.table import Table

from lcm.concepts import ConceptType
from lcm.errors import run_command
from lcm.io import write_json
from lcm.model import LCMConfig
from lcm.module import ConceptLM, target_mask
from lcm.optim import OptimConfig
from lcm.token_model import TokenLM

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# Dense peak TFLOP/s per GPU (no sparsity): bf16 tensor cores, fp32 (CUDA cores), tf32 tensor cores.
# First matching name fragment wins (so "H100 PCIe" before "H100").
PEAKS = [
    ("H200", {"bf16": 989.4, "fp32": 66.9, "tf32": 494.7}),
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.2, "tf32": 378.0}),
    ("H100 NVL", {"bf16": 835.0, "fp32": 60.0, "tf32": 417.5}),
    ("H100", {"bf16": 989.4, "fp32": 66.9, "tf32": 494.7}),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("A100", {"bf16": 312.0, "fp32": 19.5, "tf32": 156.0}),
]

PRESETS = {
    "quickstart": {"model": "concept", "batch_size": None, "seq_len": 15, "prompt_len": 5, "dropout": None,
                   "token_vocab": 1024, "token_seq_len": 256, "token_prompt_len": 64, "token_batch_size": None},
    "100m": {"arch": {"embed_dim": 384, "d_model": 768, "n_layer": 12, "n_head": 12, "max_seq_len": 128},
             "model": "both", "batch_size": 64, "seq_len": 128, "prompt_len": 8, "dropout": 0.0,
             "token_vocab": 8192, "token_seq_len": 512, "token_prompt_len": 64, "token_batch_size": 16},
}


# ---- data -------------------------------------------------------------------------------------------
class Batches(torch.utils.data.Dataset):
    """`n` batches cycling over a pool of prebuilt ones (each item already is a batch: DataLoader(batch_size=None))."""

    def __init__(self, pool: list[dict], n: int):
        self.pool, self.n = pool, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return self.pool[i % len(self.pool)]


def concept_pool(k: int, batch_size: int, seq_len: int, prompt_len: int, dim: int, seed: int) -> list[dict]:
    """Documents of seq_len + 1 concepts: prompt_len prompts, steps, one end-of-text; unit-norm x."""
    if not 0 < prompt_len < seq_len:
        raise SystemExit(f"need 0 < --prompt-len ({prompt_len}) < --seq-len ({seq_len})")
    g = torch.Generator().manual_seed(seed)
    types = torch.tensor([ConceptType.PROMPT] * prompt_len + [ConceptType.STEP] * (seq_len - prompt_len)
                         + [ConceptType.EOT])
    T = seq_len + 1
    return [{"x": F.normalize(torch.randn(batch_size, T, dim, generator=g), dim=-1),
             "ids": torch.arange(i * batch_size * T, (i + 1) * batch_size * T).view(batch_size, T),
             "types": types.expand(batch_size, T).clone()} for i in range(k)]


def token_pool(k: int, batch_size: int, seq_len: int, prompt_len: int, vocab: int, seed: int) -> list[dict]:
    """Rows of seq_len + 1 random token ids; the tokens after the first prompt_len are loss targets."""
    if not 0 < prompt_len < seq_len:
        raise SystemExit(f"need 0 < --token-prompt-len ({prompt_len}) < --token-seq-len ({seq_len})")
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(batch_size, seq_len, dtype=torch.bool)
    target[:, prompt_len - 1:] = True  # position t predicts token t+1
    return [{"tokens": torch.randint(3, vocab, (batch_size, seq_len + 1), generator=g), "target": target.clone()}
            for _ in range(k)]


def loader(pool: list[dict], n: int, device: str) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(Batches(pool, n), batch_size=None, shuffle=False, num_workers=0,
                                       pin_memory=device == "cuda")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# ---- models -----------------------------------------------------------------------------------------
class PretokenizedTokenLM(TokenLM):
    """TokenLM fed pre-tokenized batches: no DataModule, so no tokenizer to train in `setup`."""

    def setup(self, stage: str) -> None:
        pass


def new_module(spec: SimpleNamespace, seed: int) -> L.LightningModule:
    torch.manual_seed(seed)  # both runs start from the same weights
    hp = {"optim": OptimConfig(lr=spec.lr, warmup_steps=spec.warmup_steps), "compile": spec.compile}
    if spec.kind == "token":
        return PretokenizedTokenLM(arch=spec.arch, vocab_size=spec.vocab, **hp)
    module = ConceptLM(arch=spec.arch, **hp)
    # fitted on the targets, as the DataModule does on the training split
    module.normalizer.fit(torch.cat([b["x"][:, 1:].reshape(-1, spec.arch.embed_dim) for b in spec.pool[:4]]))
    return module


def param_counts(module: L.LightningModule, spec: SimpleNamespace) -> dict:
    """total, non-embedding (lookup tables left out) and matmul (the FLOP model's N) parameter counts."""
    net = module.net
    total = sum(p.numel() for p in net.parameters())
    if spec.kind == "token":
        emb = net.get_input_embeddings().weight.numel()
        return {"total": total, "non_embedding": total - emb, "matmul": total}  # the tied head is a matmul
    emb = net.pos_emb.weight.numel() if net.pos_emb is not None else 0
    return {"total": total, "non_embedding": total - emb, "matmul": total - emb}


def flops_per_position(n_matmul: int, arch: LCMConfig, seq_len: int) -> float:
    return 6.0 * n_matmul + 6.0 * arch.n_layer * arch.d_model * (seq_len + 1)


# ---- the two runs -----------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class StepTimer(L.Callback):
    """Wall time from the start of batch `warmup` to the end of the last batch (no setup/teardown)."""

    def __init__(self, warmup: int, last: int, device: str):
        self.warmup, self.last, self.device = warmup, last, device
        self.start = self.end = self.loss = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.last:
            sync(self.device)
            self.end = time.perf_counter()
            self.loss = outputs["loss"].detach()


def run_lightning(module: L.LightningModule, spec: SimpleNamespace, args) -> tuple[float, float]:
    n = args.warmup + args.steps
    timer = StepTimer(args.warmup, n - 1, args.device)
    trainer = L.Trainer(accelerator=args.device, devices=1, precision=args.precision, max_steps=n, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, gradient_clip_val=1.0, callbacks=[timer])
    trainer.fit(module, loader(spec.pool, n, args.device))
    return timer.end - timer.start, float(timer.loss)


def run_plain(module: L.LightningModule, spec: SimpleNamespace, args) -> tuple[float, float]:
    n, device = args.warmup + args.steps, torch.device(args.device)
    module.to(device).train()
    if spec.compile:
        module.compile_net()
    # the module's own optimizer and schedule; configure_optimizers reads the device and the step count
    # from the Trainer, so it gets a stand-in with exactly those two
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=device), estimated_stepping_batches=n)
    conf = module.configure_optimizers()
    module._trainer = None
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    params = [p for g in opt.param_groups for p in g["params"]]
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    for i, batch in enumerate(loader(spec.pool, n, args.device)):
        batch = to_device(batch, device)
        if i == args.warmup:
            sync(args.device)
            start = time.perf_counter()
        with autocast:
            loss = module.training_step(batch, i)  # its self.log is a no-op without a Trainer
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    sync(args.device)
    return time.perf_counter() - start, float(loss.detach())


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def bench(spec: SimpleNamespace, args, peak: float | None) -> dict:
    secs: dict[str, list[float]] = {"lightning": [], "plain": []}
    losses: dict[str, list[float]] = {"lightning": [], "plain": []}
    mem: dict[str, list[float]] = {"lightning": [], "plain": []}
    for r in range(args.repeats):
        order = ("lightning", "plain") if r % 2 == 0 else ("plain", "lightning")  # alternate against drift
        for name in order:
            free(args.device)
            module = new_module(spec, args.seed)
            counts = param_counts(module, spec)
            s, loss = (run_lightning if name == "lightning" else run_plain)(module, spec, args)
            secs[name].append(s)
            losses[name].append(loss)
            if args.device == "cuda":
                mem[name].append(torch.cuda.max_memory_allocated() / 2**30)
            del module
    med = {k: statistics.median(v) for k, v in secs.items()}
    positions = args.steps * spec.batch_size * spec.seq_len  # fed to the model in the timed steps
    targets = args.steps * spec.targets_per_batch
    fpp = flops_per_position(counts["matmul"], spec.arch, spec.seq_len)
    tflops = {k: fpp * positions / v / 1e12 for k, v in med.items()}
    return {
        "model": spec.kind,
        "arch": asdict(spec.arch),
        **({"vocab_size": spec.vocab} if spec.kind == "token" else {}),
        "params": counts,
        "batch_size": spec.batch_size,
        "seq_len": spec.seq_len,
        "prompt_len": spec.prompt_len,
        "positions_per_step": spec.batch_size * spec.seq_len,
        "targets_per_step": spec.targets_per_batch,
        "flops_per_position": fpp,
        "seconds": secs,
        "median_seconds": med,
        "steps_per_s": {k: args.steps / v for k, v in med.items()},
        "positions_per_s": {k: positions / v for k, v in med.items()},  # concepts or tokens fed
        "target_positions_per_s": {k: targets / v for k, v in med.items()},  # loss targets
        "tflops": tflops,
        "mfu": {k: v / peak for k, v in tflops.items()} if peak else None,
        "final_loss": losses,
        "max_memory_gib": mem if args.device == "cuda" else None,
        "lightning_over_plain": med["plain"] / med["lightning"],  # throughput ratio
    }


# ---- device / report --------------------------------------------------------------------------------
def device_info(args) -> dict:
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
        kind = "bf16" if args.precision == "bf16-mixed" else (
            "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32")
        table = next((peaks for frag, peaks in PEAKS if frag.lower() in name.lower()), None)
        peak = args.peak_tflops or (table[kind] if table else None)
        source = "--peak-tflops" if args.peak_tflops else (f"table ({kind} dense)" if table else "unknown device")
        return {"name": name, "peak_tflops": peak, "peak_source": source, "cuda": torch.version.cuda,
                "capability": ".".join(map(str, torch.cuda.get_device_capability()))}
    return {"name": cpu_name(), "peak_tflops": args.peak_tflops,
            "peak_source": "--peak-tflops" if args.peak_tflops else "n/a on CPU"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_table(res: dict, args, info: dict) -> None:
    unit = "tokens" if res["model"] == "token" else "concepts"
    p = res["params"]
    title = (f"{res['model']} model: {p['total'] / 1e6:.1f}M params ({p['non_embedding'] / 1e6:.1f}M non-embedding), "
             f"batch {res['batch_size']} x {res['seq_len']} {unit}, {args.steps} steps, {args.precision}"
             f"{', compiled' if args.compile else ''}, {info['name']}, median of {args.repeats}")
    table = Table(title=title)
    cols = ("", "median s", "steps/s", f"{unit}/s (fed)", "targets/s", "TFLOP/s", "MFU")
    for col in cols:
        table.add_column(col, justify="right" if col else "left")
    for k in ("lightning", "plain"):
        mfu = f"{res['mfu'][k]:.1%}" if res["mfu"] else "n/a"
        table.add_row(k, f"{res['median_seconds'][k]:.3f}", f"{res['steps_per_s'][k]:.2f}",
                      f"{res['positions_per_s'][k]:,.0f}", f"{res['target_positions_per_s'][k]:,.0f}",
                      f"{res['tflops'][k]:.2f}", mfu)
    table.add_section()
    table.add_row("lightning / plain throughput", "", "", f"{res['lightning_over_plain']:.3f}", "", "", "")
    Console().print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="quickstart")
    p.add_argument("--model", choices=("concept", "token", "both"), default=None, help="default: the preset's")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("32-true", "bf16-mixed"), default=None,
                   help="default: bf16-mixed on cuda, 32-true on cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (both runs)")
    p.add_argument("--config", type=Path, default=ROOT / "train" / "configs" / "quickstart.yaml",
                   help="quickstart preset: the concept model's config")
    p.add_argument("--token-config", type=Path, default=ROOT / "train" / "configs" / "token_baseline.yaml",
                   help="quickstart preset: the token model's config")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps per run (default 60 cpu, 50 cuda)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before timing starts (compile happens here)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of lightning vs plain (medians reported)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's (both models)")
    p.add_argument("--seq-len", type=int, default=None, help="concept positions fed per row (default: the preset's)")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt concepts per row (not loss targets)")
    p.add_argument("--token-batch-size", type=int, default=None, help="default: --batch-size, else the preset's")
    p.add_argument("--token-seq-len", type=int, default=None, help="tokens fed per row (default: the preset's)")
    p.add_argument("--token-prompt-len", type=int, default=None)
    p.add_argument("--token-vocab", type=int, default=None)
    p.add_argument("--dropout", type=float, default=None, help="default: the preset's (quickstart: its config)")
    p.add_argument("--pool", type=int, default=8, help="distinct batches, cycled")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: table by GPU name)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--out", type=Path, default=RESULTS / "train_throughput.json")
    args = p.parse_args()

    preset = PRESETS[args.preset]
    args.precision = args.precision or ("bf16-mixed" if args.device == "cuda" else "32-true")
    args.steps = args.steps or (50 if args.device == "cuda" else 60)
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0 or args.pool < 1:
        raise SystemExit("need --steps >= 1, --repeats >= 1, --warmup >= 0, --pool >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    # Lightning's info lines and its hints about workers / the unused val loop / pytree / self.log without a
    # Trainer (the plain loop) are noise here
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    for msg in (".*does not have many workers.*", ".*no `val_dataloader`.*", ".*LeafSpec.*", ".*self.log.*"):
        warnings.filterwarnings("ignore", msg)

    which = args.model or preset["model"]
    kinds = ("concept", "token") if which == "both" else (which,)
    batch_size, seq_len = args.batch_size or preset["batch_size"], args.seq_len or preset["seq_len"]
    dropout = preset["dropout"] if args.dropout is None else args.dropout
    specs = []
    if "concept" in kinds:
        if args.preset == "quickstart":
            cfg = yaml.safe_load(args.config.read_text(encoding="utf-8"))
            arch = LCMConfig(**cfg["model"]["arch"])
            optim = cfg["model"].get("optim", {})
            lr, warm = float(optim.get("lr", 1e-3)), int(optim.get("warmup_steps", 100))
            batch_size = batch_size or int(cfg.get("data", {}).get("batch_size", 32))
        else:
            arch, lr, warm = LCMConfig(**preset["arch"]), 1e-3, 100
        arch = replace(arch, max_seq_len=max(arch.max_seq_len, seq_len),
                       dropout=arch.dropout if dropout is None else dropout)
        prompt_len = args.prompt_len or preset["prompt_len"]
        pool = concept_pool(args.pool, batch_size, seq_len, prompt_len, arch.embed_dim, args.seed)
        specs.append(SimpleNamespace(kind="concept", arch=arch, lr=lr, warmup_steps=warm, compile=args.compile,
                                     pool=pool, batch_size=batch_size, seq_len=seq_len, prompt_len=prompt_len,
                                     targets_per_batch=int(target_mask(pool[0]["types"]).sum())))
    if "token" in kinds:
        tseq = args.token_seq_len or preset["token_seq_len"]
        tprompt = args.token_prompt_len or preset["token_prompt_len"]
        vocab = args.token_vocab or preset["token_vocab"]
        if args.preset == "quickstart":
            cfg = yaml.safe_load(args.token_config.read_text(encoding="utf-8"))
            init = cfg["model"]["init_args"]
            arch = LCMConfig(**init["arch"])
            optim = init.get("optim", {})
            lr, warm = float(optim.get("lr", 1e-3)), int(optim.get("warmup_steps", 50))
            tbatch = args.token_batch_size or args.batch_size or int(cfg["data"]["init_args"].get("batch_size", 32))
        else:
            arch, lr, warm = LCMConfig(**preset["arch"]), 1e-3, 100
            tbatch = args.token_batch_size or args.batch_size or preset["token_batch_size"]
        arch = replace(arch, max_seq_len=max(arch.max_seq_len, tseq + 1),
                       dropout=arch.dropout if dropout is None else dropout)
        pool = token_pool(args.pool, tbatch, tseq, tprompt, vocab, args.seed)
        specs.append(SimpleNamespace(kind="token", arch=arch, lr=lr, warmup_steps=warm, compile=args.compile,
                                     vocab=vocab, pool=pool, batch_size=tbatch, seq_len=tseq, prompt_len=tprompt,
                                     targets_per_batch=int(pool[0]["target"].sum())))

    info = device_info(args)
    load_before = os.getloadavg()
    results = {}
    for spec in specs:
        results[spec.kind] = res = bench(spec, args, info["peak_tflops"])
        print_table(res, args, info)
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
        "preset": args.preset,
        "device": args.device,
        "device_info": info,
        "precision": args.precision,
        "compile": args.compile,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg": {"start": load_before, "end": os.getloadavg()},
        "steps_timed": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "flop_model": "per position 6*N_matmul + 6*n_layer*d_model*(T+1) (causal attention), forward + backward; "
                      "N_matmul = parameters except lookup embeddings, the tied token head counted as V*d_model",
        "models": results,
    }
    write_json(args.out, result)  # atomic, creates the folder
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_command(main)
