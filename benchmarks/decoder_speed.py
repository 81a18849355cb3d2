"""Sentence-decoder inference speed on CPU (or any device): sentences/s and tokens/s, in one run.

Decodes the embeddings of held-out-like gsm_symbolic sentences with a trained decoder checkpoint:
  greedy, no cache   every step re-runs the whole sequence (the reference)
  greedy, KV cache   every step runs one new position (what the library uses)
  beam 4, KV cache   four hypotheses per sentence
  retrieval          faiss top-1 over the decoder run's bank (what the decoder is meant to complement)
at batch sizes 1 and 64. Methods alternate for `--repeats` rounds; medians are reported, and the
cache / no-cache speed ratio is measured in the same run. Outputs with and without the cache must match.

Run (after `lcm fit -c train/configs/decoder_quickstart.yaml`):
    HF_HUB_OFFLINE=1 python benchmarks/decoder_speed.py [--decoder CKPT] [--sentences 256] [--repeats 3]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lcm.decoder import SentenceDecoderLM, beam_decode, greedy_decode, unit
from lcm.encoders.base import encoder_from_config
from lcm.errors import run_command
from lcm.io import write_json
from lcm.retrieval import SentenceBank

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CKPT = Path("runs/decoder_quickstart/version_0/checkpoints/best.ckpt")


def bench_sentences(count: int) -> list[str]:
    """gsm_symbolic step sentences from a seed the quickstart never trains on."""
    from lcm.train.corpus import GsmSymbolic

    seen: dict[str, None] = {}
    for doc in GsmSymbolic(n=max(50, count // 3), seed=12345).documents(max_chars=256):
        for s in doc.steps:
            seen.setdefault(s)
    return list(seen)[:count]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decoder", type=Path, default=DEFAULT_CKPT)
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS / "decoder_speed.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    model = SentenceDecoderLM.from_checkpoint(args.decoder, device=args.device)
    encoder = encoder_from_config(model.meta["encoder"])
    bank = SentenceBank.load(args.decoder.parent / "bank", encoder_id=encoder.id, dim=encoder.dim)
    texts = bench_sentences(args.sentences)
    emb_np = encoder.encode(texts)
    emb = unit(torch.from_numpy(emb_np).to(args.device))
    tok, net = model.tokenizer, model.net

    def batched(fn, bs):
        def run():
            out = []
            for i in range(0, len(texts), bs):
                out += fn(emb[i:i + bs])
            return out
        return run

    def greedy(cache):
        return lambda x: greedy_decode(net, x, tok.bos_id, tok.eos_id, args.max_new_tokens, use_cache=cache)

    def beam4(x):
        return [h[0] for h in beam_decode(net, x, tok.bos_id, tok.eos_id, args.max_new_tokens, beam=4)]

    def retrieval(x):
        return bank.search(x.cpu().numpy(), k=1)[1][:, 0].tolist()

    methods = {}
    for bs in (1, 64):
        methods |= {f"greedy, no cache, batch {bs}": batched(greedy(False), bs),
                    f"greedy, KV cache, batch {bs}": batched(greedy(True), bs)}
    methods["beam 4, KV cache, batch 64"] = batched(beam4, 64)
    methods["retrieval (faiss flat), batch 64"] = batched(retrieval, 64)
    with torch.no_grad():
        greedy(True)(emb[:4])  # warm-up
        seconds: dict[str, list[float]] = {m: [] for m in methods}
        outputs = {}
        for r in range(args.repeats):
            order = list(methods) if r % 2 == 0 else list(reversed(methods))  # slow periods hit all alike
            for m in order:
                t0 = time.perf_counter()
                outputs[m] = methods[m]()
                seconds[m].append(time.perf_counter() - t0)
    for bs in (1, 64):
        assert outputs[f"greedy, no cache, batch {bs}"] == outputs[f"greedy, KV cache, batch {bs}"], "cache changed outputs"
    n = len(texts)
    tokens = sum(len(x) + 1 for x in outputs["greedy, KV cache, batch 64"])  # + <eos>
    med = {m: statistics.median(v) for m, v in seconds.items()}
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "device": args.device, "sentences": n,
        "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "decoder": str(args.decoder),
        "decoder_params": sum(p.numel() for p in net.parameters()), "greedy_tokens": tokens,
        "load_avg_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "seconds": seconds, "median_seconds": med, "sentences_per_s": {m: n / v for m, v in med.items()},
        "kv_cache_speedup": {bs: med[f"greedy, no cache, batch {bs}"] / med[f"greedy, KV cache, batch {bs}"]
                             for bs in (1, 64)},
    }
    table = Table(title=f"Sentence decoding: {n} gsm sentences ({tokens / n:.1f} tokens each), "
                        f"{result['decoder_params'] / 1e6:.1f}M-param decoder, {args.device}, "
                        f"{result['torch_threads']} threads, median of {args.repeats}")
    for col in ("method", "sentences/s", "tokens/s (greedy)"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for m in methods:
        rate = result["sentences_per_s"][m]
        table.add_row(m, f"{rate:,.1f}", f"{rate * tokens / n:,.0f}" if m.startswith("greedy") else "")
    table.add_section()
    for bs, x in result["kv_cache_speedup"].items():
        table.add_row(f"KV cache speedup, batch {bs}", f"{x:.2f}x", "")
    Console().print(table)
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_command(main)
