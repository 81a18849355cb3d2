"""Embedding-cache throughput against raw `SentenceTransformer.encode`, on the same sentences, in one run.

Measured (sentences/s on unique gsm_symbolic sentences, bundled MiniLM, batch size 64):
  raw         enc.st_model.encode(texts, normalize_embeddings=True)
  first pass  EmbeddingCache(fresh dir).get(texts): hashing + encoding + atomic shard writes + lookup
  rerun       a NEW EmbeddingCache on the same dir (re-opened from disk) .get(texts): no encoding at all

Raw and first pass alternate for `--repeats` rounds (each with a fresh cache dir, order swapped every
round) so that load from other processes hits both alike; medians are reported. Targets:
first_pass / raw throughput >= 0.95, first_pass_time / rerun_time >= 50. The cache's vectors are
compared with the raw ones (max abs diff).

Run:
    HF_HUB_OFFLINE=1 python benchmarks/encode_throughput.py [--sentences 2000] [--repeats 2]
(defaults take ~3 min on 2 busy cores: about 45 s per raw or first pass of 2000 sentences)
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
import transformers
from rich.console import Console
from rich.table import Table

from lcm.encoders import EmbeddingCache, SentenceTransformerEncoder
from lcm.errors import run_command
from lcm.io import write_json
from lcm.train.corpus import GsmSymbolic

RESULTS = Path(__file__).resolve().parent / "results"


def unique_sentences(count: int, seed: int, max_chars: int = 256) -> list[str]:
    """First `count` unique prompt/step sentences of gsm_symbolic (generates more problems until enough)."""
    n = max(50, count // 5)  # ~7 unique sentences per problem; doubling covers the rest
    while True:
        seen: dict[str, None] = {}
        for doc in GsmSymbolic(n=n, seed=seed).documents(max_chars=max_chars):
            for s in doc.prompt + doc.steps:
                seen.setdefault(s, None)
        if len(seen) >= count:
            return list(seen)[:count]
        n *= 2


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=2000, help="unique sentences encoded")
    p.add_argument("--repeats", type=int, default=2, help="rounds of raw vs first pass (medians reported)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="gsm_symbolic seed")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--out", type=Path, default=RESULTS / "encode_throughput.json")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar in the output
    load_before = os.getloadavg()[0]  # other processes share the cores: keep it with the numbers
    texts = unique_sentences(args.sentences, args.seed)
    enc = SentenceTransformerEncoder()
    st = enc.st_model
    st.encode(texts[:32], batch_size=args.batch_size, show_progress_bar=False)  # warm-up: load + first-call costs

    def raw():
        return st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=True,
                         show_progress_bar=False)

    raw_s, first_s, rerun_s, max_diff = [], [], [], 0.0
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="lcm-bench-cache-") as root:
            def first():
                return EmbeddingCache(root, enc, batch_size=args.batch_size, show_progress=False).get(texts)

            # swap the order every round so a slow period does not always land on the same side
            if r % 2 == 0:
                t_raw, ref = timed(raw)
                t_first, got = timed(first)
            else:
                t_first, got = timed(first)
                t_raw, ref = timed(raw)
            t_rerun, again = timed(lambda: EmbeddingCache(root, enc, batch_size=args.batch_size,
                                                          show_progress=False).get(texts))
        assert np.array_equal(got, again), "rerun returned different vectors than the first pass"
        max_diff = max(max_diff, float(np.abs(got - ref).max()))
        raw_s.append(t_raw)
        first_s.append(t_first)
        rerun_s.append(t_rerun)

    n = len(texts)
    med = {k: statistics.median(v) for k, v in (("raw", raw_s), ("first_pass", first_s), ("rerun", rerun_s))}
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "sentences": n,
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "encoder_id": enc.id,
        "seconds": {"raw": raw_s, "first_pass": first_s, "rerun": rerun_s},
        "median_seconds": med,
        "sentences_per_s": {k: n / v for k, v in med.items()},
        "first_pass_over_raw": med["raw"] / med["first_pass"],  # throughput ratio, target >= 0.95
        "rerun_speedup": med["first_pass"] / med["rerun"],  # target >= 50
        "max_abs_diff_vs_raw": max_diff,
    }

    table = Table(title=f"Encode throughput: {n} unique gsm_symbolic sentences, "
                        f"{result['torch_threads']} torch threads, median of {args.repeats}")
    for col in ("", "median s", "sentences/s"):
        table.add_column(col, justify="right" if col else "left")
    for k, label in (("raw", "raw SentenceTransformer.encode"), ("first_pass", "cache first pass"),
                     ("rerun", "cache rerun (re-opened)")):
        table.add_row(label, f"{med[k]:.3f}", f"{result['sentences_per_s'][k]:,.0f}")
    table.add_section()
    table.add_row("first pass / raw throughput (target >= 0.95)", "", f"{result['first_pass_over_raw']:.3f}")
    table.add_row("rerun speedup over first pass (target >= 50)", "", f"{result['rerun_speedup']:,.0f}x")
    table.add_row("max |cache - raw|", "", f"{max_diff:.2e}")
    Console().print(table)

    write_json(args.out, result)  # atomic, creates the folder
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_command(main)
