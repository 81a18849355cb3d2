"""Memory of training on a large prepared corpus: peak resident memory of `lcm fit` on a store of millions of
sentences (memory-mapped float16 table + offsets), with DataLoader workers.

1. Writes a synthetic store of `--sentences` unique concepts (default 2M) with `lcm.train.store.StoreWriter`,
   chunk by chunk: real MiniLM vectors of the quickstart gsm sentences (from the embedding cache), each
   jittered by Gaussian noise and renormalized, so every row is a distinct unit vector. Documents of
   8-24 concepts (1-4 prompt, steps, end-of-text), split 90 / 5 / 5.
2. Runs `lcm fit -c train/configs/quickstart.yaml --data.store STORE` (the real CLI, in a subprocess) for
   `--steps` optimizer steps with `--workers` DataLoader workers and `data.banks false` (a 1.8M-sentence
   HNSW bank is built separately), sampling /proc every 0.2 s for the process tree.
Reported: store build time and size, training steps/s, and peaks of
  rss main        resident set of the trainer process (anonymous + file-backed pages)
  rss anon main   its anonymous memory only (what cannot be dropped: model, optimizer, batches, indexes)
  rss tree        sum over the trainer and its workers (counts shared mapped pages once per process)
  pss             proportional set size (shared pages split between the processes that map them), of the
                  trainer, of the largest worker, and summed over the tree: the honest total

Run:
    HF_HUB_OFFLINE=1 python benchmarks/data_scale.py [--sentences 2000000] [--steps 300] [--workers 2]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from lcm.concepts import DEFAULT_EOT_TEXT, ConceptType
from lcm.errors import run_command
from lcm.io import write_json
from lcm.train.store import CHUNK_ROWS, StoreWriter

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def base_vectors(cache_dir: str) -> np.ndarray:
    """Real MiniLM vectors: row 0 end-of-text, then the quickstart gsm sentences (encoded once, then read
    from the cache). (N, 384)"""
    from lcm.encoders import SentenceTransformerEncoder
    from lcm.encoders.cache import EmbeddingCache
    from lcm.train.corpus import GsmSymbolic

    texts = sorted({s for d in GsmSymbolic(n=1500, seed=0).documents(256) for s in d.prompt + d.steps})
    return EmbeddingCache(cache_dir, SentenceTransformerEncoder(), show_progress=True).get([DEFAULT_EOT_TEXT] + texts)


def write_synthetic_store(root: Path, n: int, base: np.ndarray, encoder_id: str, seed: int) -> tuple[Path, dict]:
    """A store of n unique concepts in documents of 8-24 concepts. Row 0 is end-of-text."""
    rng = np.random.default_rng(seed)
    writer = StoreWriter(root, n, base.shape[1], encoder_id)
    writer.add_rows([DEFAULT_EOT_TEXT], base[:1])
    for a in range(1, n, CHUNK_ROWS):
        m = min(CHUNK_ROWS, n - a)
        v = base[rng.integers(1, len(base), m)] + 0.03 * rng.standard_normal((m, base.shape[1]), dtype=np.float32)
        writer.add_rows([f"synthetic sentence {i}" for i in range(a, a + m)], v / np.linalg.norm(v, axis=1, keepdims=True))
    docs = {"train": [], "val": [], "test": []}
    row, count = 1, 0
    while row < n:
        length = min(int(rng.integers(7, 24)), n - row)  # + end-of-text
        n_prompt = min(int(rng.integers(1, 5)), length)
        ids = np.append(np.arange(row, row + length), 0).astype(np.int32)
        types = np.array([ConceptType.PROMPT] * n_prompt + [ConceptType.STEP] * (length - n_prompt) + [ConceptType.EOT],
                         dtype=np.int8)
        u = rng.random()
        docs["test" if u < 0.05 else "val" if u < 0.10 else "train"].append((ids, types))
        row += length
        count += 1
    for split, seqs in docs.items():
        writer.add_split(split, seqs)
    folder = writer.finish(eot_id=0, break_id=-1, planning=False, eot_text=DEFAULT_EOT_TEXT, break_text=None,
                           source=f"synthetic ({n} sentences, seed {seed})", stats={})
    return folder, {s: len(v) for s, v in docs.items()} | {"documents": count}


def proc_memory(pid: int) -> dict[str, int]:
    """Bytes of rss, anonymous rss and pss of one process (0s if it is gone)."""
    out = {"rss": 0, "anon": 0, "pss": 0}
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            out["rss"] = int(line.split()[1]) * 1024
        elif line.startswith("RssAnon:"):
            out["anon"] = int(line.split()[1]) * 1024
    for line in rollup.splitlines():
        if line.startswith("Pss:"):
            out["pss"] = int(line.split()[1]) * 1024
    return out


def children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(k) for k in kids] + [g for k in kids for g in children(int(k))]


class PeakSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.every, self.stop = pid, every, threading.Event()
        self.peak = {"rss_main": 0, "anon_main": 0, "pss_main": 0, "rss_tree": 0, "pss_tree": 0, "pss_worker": 0,
                     "processes": 0}

    def run(self) -> None:
        while not self.stop.is_set():
            pids = [self.pid] + children(self.pid)
            mem = [proc_memory(p) for p in pids]
            now = {"rss_main": mem[0]["rss"], "anon_main": mem[0]["anon"], "pss_main": mem[0]["pss"],
                   "rss_tree": sum(m["rss"] for m in mem), "pss_tree": sum(m["pss"] for m in mem),
                   "pss_worker": max([m["pss"] for m in mem[1:]], default=0), "processes": len(pids)}
            self.peak = {k: max(self.peak[k], now[k]) for k in now}
            time.sleep(self.every)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=2_000_000)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("runs/data_scale"), help="store and run folder (deleted after)")
    p.add_argument("--cache", default=".cache/lcm", help="embedding cache with the gsm sentences")
    p.add_argument("--keep", action="store_true", help="keep the store and the run")
    p.add_argument("--out", type=Path, default=RESULTS / "data_scale.json")
    args = p.parse_args()

    from lcm.encoders import SentenceTransformerEncoder

    base = base_vectors(args.cache)
    shutil.rmtree(args.work, ignore_errors=True)
    t0 = time.perf_counter()
    store, docs = write_synthetic_store(args.work / "stores", args.sentences, base, SentenceTransformerEncoder().id,
                                        args.seed)
    build_s = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in store.iterdir())

    cmd = [str(Path(sys.executable).parent / "lcm"), "fit", "-c", str(ROOT / "train/configs/quickstart.yaml"),
           "--data.source", "null", "--data.store", str(store), "--data.banks", "false",
           "--data.num_workers", str(args.workers), "--data.batch_size", str(args.batch_size),
           "--data.show_progress", "false", "--trainer.max_steps", str(args.steps), "--trainer.max_epochs", "1",
           "--trainer.limit_val_batches", "20", "--trainer.val_check_interval", str(args.steps),
           "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(args.work / "run"),
           "--trainer.logger.init_args.save_dir", str(args.work / "run")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = PeakSampler(proc.pid)
    sampler.start()
    log = proc.communicate()[0]
    fit_s = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        print(log[-4000:])
        raise SystemExit(f"lcm fit failed with exit code {proc.returncode}")
    data_line = next((ln for ln in log.splitlines() if "data: prepared store" in ln), "")

    gb = 1024 ** 3
    peak = sampler.peak
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "sentences": args.sentences, "documents": docs,
        "store_bytes": size, "store_build_s": build_s, "fit_s": fit_s, "steps": args.steps, "workers": args.workers,
        "batch_size": args.batch_size, "peak_bytes": peak, "load_avg_1min": os.getloadavg()[0], "data_line": data_line,
        "command": " ".join(cmd),
    }
    table = Table(title=f"lcm fit on a {args.sentences:,}-sentence store ({size / gb:.2f} GB on disk), "
                        f"{args.steps} steps, {args.workers} workers")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("store build (s)", f"{build_s:.1f}")
    table.add_row("lcm fit wall (s, incl. startup + 1 validation)", f"{fit_s:.1f}")
    for k, label in (("rss_main", "peak rss, trainer"), ("anon_main", "peak anonymous rss, trainer"),
                     ("pss_main", "peak pss, trainer"), ("pss_worker", "peak pss, largest worker"),
                     ("rss_tree", f"peak rss, trainer + workers ({peak['processes']} processes)"),
                     ("pss_tree", "peak pss, trainer + workers")):
        table.add_row(label + " (GB)", f"{peak[k] / gb:.2f}")
    Console().print(table)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    run_command(main)
