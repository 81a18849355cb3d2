"""Sentences per second: the bundled MiniLM against a sentence autoencoder's encoding side, on the same sentences.

Both encode the same unique gsm_symbolic sentences at the same batch size, alternating for `--repeats` rounds (order
swapped every round) so that load from other processes hits both alike; medians are reported, with the ratio
autoencoder / MiniLM measured in this one run (issue 18 asks for >= 1 on this CPU).

    HF_HUB_OFFLINE=1 python benchmarks/encoder_speed.py --autoencoder runs/autoencoder_quickstart/version_0/checkpoints/best.ckpt
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lcm.encoders import AutoencoderEncoder, SentenceTransformerEncoder
from lcm.errors import run_command
from lcm.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_throughput import unique_sentences  # noqa: E402 - a sibling script, not a package

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--autoencoder", type=Path, required=True, help="sentence-autoencoder checkpoint")
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "encoder_speed.json")
    args = p.parse_args()
    texts = unique_sentences(args.sentences, seed=0)
    encoders = {"MiniLM (sentence-transformers)": SentenceTransformerEncoder(),
                "autoencoder": AutoencoderEncoder(str(args.autoencoder))}
    for enc in encoders.values():
        enc.encode(texts[:64], batch_size=args.batch_size)  # load and warm up, untimed
    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    load = os.getloadavg()[0]
    for r in range(args.repeats):
        for name in (list(encoders) if r % 2 == 0 else list(reversed(encoders))):
            start = time.perf_counter()
            encoders[name].encode(texts, batch_size=args.batch_size)
            seconds[name].append(time.perf_counter() - start)
    per_s = {name: len(texts) / statistics.median(v) for name, v in seconds.items()}
    names = list(encoders)
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "sentences": len(texts),
              "batch_size": args.batch_size, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
              "load_avg_1min": {"start": load, "end": os.getloadavg()[0]}, "seconds": seconds,
              "sentences_per_s": per_s, "dims": {n: e.dim for n, e in encoders.items()},
              "ratio_autoencoder_to_minilm": per_s[names[1]] / per_s[names[0]]}
    table = Table(title=f"{len(texts)} unique gsm sentences, batch {args.batch_size}, {result['torch_threads']} "
                        f"threads, median of {args.repeats}")
    for col in ("encoder", "dim", "sentences/s"):
        table.add_column(col, justify="left" if col == "encoder" else "right")
    for name in names:
        table.add_row(name, str(result["dims"][name]), f"{per_s[name]:.0f}")
    Console().print(table)
    print(f"autoencoder / MiniLM: {result['ratio_autoencoder_to_minilm']:.2f}x")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_command(main)
