"""Encoding into the embedding cache with 1 and with N processes (`data.encode_processes`), in one run.

Measured on unique gsm_symbolic sentences with the bundled MiniLM: wall time of `EmbeddingCache(fresh dir,
processes=p).ensure(texts)` from the call to the last shard, worker start-up (spawn, import torch, load the
encoder) included -- what `lcm embed` pays. One process uses torch's default threads (all cores); N processes
get cores / N threads each. The rows alternate over `--repeats` rounds (order swapped every round) so load
from other processes hits both alike; medians are reported, with the vectors' max |difference| (threads change
float32 sums in the last bits; the batches are the same).

Run:
    HF_HUB_OFFLINE=1 python benchmarks/embed_processes.py [--sentences 4000] [--processes 2] [--repeats 2]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from lcm.encoders import EmbeddingCache, SentenceTransformerEncoder
from lcm.errors import run_command
from lcm.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"
# joblib (imported with sentence-transformers) probes multiprocessing with a semaphore that the resource tracker
# of the spawned workers then reports as leaked at exit: noise, not a leak of ours
os.environ.setdefault("JOBLIB_MULTIPROCESSING", "0")


def encode(texts: list[str], processes: int, batch_size: int) -> tuple[float, np.ndarray]:
    """(seconds, vectors) of a first encode into a fresh cache with `processes` processes."""
    enc = SentenceTransformerEncoder()
    with tempfile.TemporaryDirectory(prefix="lcm-bench-embed-") as root:
        cache = EmbeddingCache(root, enc, batch_size=batch_size, show_progress=False, processes=processes)
        start = time.perf_counter()
        cache.ensure(texts)
        seconds = time.perf_counter() - start
        return seconds, cache.get(texts)


def main() -> None:
    from encode_throughput import unique_sentences  # the same sentences as the throughput benchmark

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=4000)
    p.add_argument("--processes", type=int, default=2, help="N, compared with 1")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=RESULTS / "embed_processes.json")
    args = p.parse_args()

    load_before = os.getloadavg()[0]
    texts = unique_sentences(args.sentences, seed=0)
    SentenceTransformerEncoder().encode(texts[:16])  # warm the file cache for both sides alike
    seconds: dict[int, list[float]] = {1: [], args.processes: []}
    max_diff = 0.0
    for r in range(args.repeats):
        order = (1, args.processes) if r % 2 == 0 else (args.processes, 1)
        out = {n: encode(texts, n, args.batch_size) for n in order}
        for n, (s, _) in out.items():
            seconds[n].append(s)
        max_diff = max(max_diff, float(np.abs(out[1][1] - out[args.processes][1]).max()))

    med = {n: statistics.median(v) for n, v in seconds.items()}
    rate = {n: len(texts) / med[n] for n in med}
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "sentences": len(texts),
              "cores": len(os.sched_getaffinity(0)), "torch_threads_one_process": torch.get_num_threads(),
              "batch_size": args.batch_size, "repeats": args.repeats, "seconds": seconds, "median_seconds": med,
              "sentences_per_s": rate, "speedup": med[1] / med[args.processes], "max_abs_diff": max_diff,
              "load_avg_1min": {"start": load_before, "end": os.getloadavg()[0]}}
    table = Table(title=f"lcm embed: {len(texts)} unique sentences, {result['cores']} cores, median of {args.repeats}")
    for col in ("processes", "median s", "sentences/s"):
        table.add_column(col, justify="right")
    for n in sorted(med):
        table.add_row(str(n), f"{med[n]:.1f}", f"{rate[n]:,.0f}")
    table.add_section()
    table.add_row(f"{args.processes} vs 1", "", f"{result['speedup']:.2f}x")
    table.add_row("max |difference|", "", f"{max_diff:.1e}")
    Console().print(table)
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_command(main)
