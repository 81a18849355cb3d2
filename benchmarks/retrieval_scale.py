"""Retrieval decoding at scale: faiss flat vs HNSW vs IVF on a synthetic-but-realistic bank of MiniLM vectors.

The bank. Real MiniLM (all-MiniLM-L6-v2, 384-d) vectors of every unique sentence of the quickstart
gsm_symbolic problems and the logic chains (read from the embedding cache `--cache`; encoded once if
missing) are the base. Each of the `--size` bank vectors is one of them, or (with probability `--mix`) a
convex mix (1-w) a + w b of one and one of its 10 real nearest neighbours (w ~ U(0, 0.5)), jittered to a
cosine ~ U(`--jitter`) from that anchor. The jitter direction is Gaussian with the real vectors'
covariance (anisotropic, like real embedding differences), made orthogonal to the anchor, so every
cosine is exact. Generated in chunks, float32, seeded. The default jitter U(0.95, 1) is calibrated, not
tuned for speed: a synthetic bank of the real sentences' count has the real bank's neighbour statistics
(both are printed, "synthetic, real size"); a larger bank is denser, hence harder, as a real one would be.
The queries. `--queries` model-prediction-like vectors: a random bank vector moved to a cosine
~ U(`--query-cos`) from it the same way (a trained Base-LCM's prediction has cosine ~0.9 to the gold).
Ground truth is exact inner-product top-1 on unit vectors (IndexFlatIP). The median top-1 / top-2 cosine
gap of the queries and the bank's nearest-neighbour cosines are printed, next to the same numbers for
the real sentences alone, so a reader can judge how hard the synthetic bank is (the smaller the gap, the
easier an approximate index returns the runner-up).

Measured per index configuration:
  build          train + add seconds (one build per index; efSearch / nprobe only change the search)
  memory         index size (vectors + graph links / lists / centroids), and peak RSS of the whole run
  single         mean ms/query, the first `--single` queries searched one call each (`--flat-single` on flat)
  batched        ms/query of one search call over all queries (median of `--repeats`)
  recall@1       top-1 id == the exact top-1 id
Configurations (`--indexes`): flat (IndexFlatIP, exact); hnsw (IndexHNSWFlat, inner product, M=32,
efConstruction=80 as in lcm/retrieval.py) with efSearch in `--ef`; ivf (IndexIVFFlat over an IndexFlatIP
quantizer, nlist ~ 4 sqrt(N), k-means on a sample of max(100k, 39 nlist) vectors) with nprobe in `--nprobe`.
The summary lists the configurations that meet batched <= 1 ms/query with recall@1 >= 0.95.

Run (1M on 2 CPU cores: ~15-25 min, ~4.5 GB peak; mostly HNSW build, IVF k-means and exact flat search):
    HF_HUB_OFFLINE=1 python benchmarks/retrieval_scale.py [--size 1000000] [--queries 1000]
        [--indexes flat hnsw ivf] [--threads N] [--seed 0]
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import math
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from lcm.errors import run_command
from lcm.io import write_json
from lcm.retrieval import unit_rows

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 65_536
TARGET_MS, TARGET_RECALL = 1.0, 0.95


def real_sentences(gsm_n: int, logic_n: int, max_chars: int = 256) -> list[str]:
    """Unique prompt and step sentences of the quickstart gsm_symbolic and logic-chain problems."""
    from lcm.train.corpus import GsmSymbolic
    from lcm.train.logic import LogicChains

    seen: dict[str, None] = {}
    for source in (GsmSymbolic(n=gsm_n, seed=0), LogicChains(n=logic_n, seed=0)):
        for doc in source.documents(max_chars):
            if doc.is_blank():
                continue
            for s in [*doc.prompt, *doc.steps]:
                seen.setdefault(s)
    return list(seen)


def rss_peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Jitter:
    """Unit vectors at an exact cosine from given anchors, in a direction drawn from the data covariance."""

    def __init__(self, base: np.ndarray):
        centred = base - base.mean(axis=0)
        cov = centred.T @ centred / len(base)
        eigval, eigvec = np.linalg.eigh(cov.astype(np.float64))
        self.mix = (eigvec * np.sqrt(np.clip(eigval, 0, None))).T.astype(np.float32)  # z @ mix ~ N(0, cov)

    def __call__(self, anchors: np.ndarray, cos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        u = rng.standard_normal(anchors.shape, dtype=np.float32) @ self.mix
        u -= np.sum(u * anchors, axis=1, keepdims=True) * anchors  # orthogonal to the (unit) anchor
        u = unit_rows(u)
        cos = cos.astype(np.float32)[:, None]
        return unit_rows(cos * anchors + np.sqrt(1 - cos * cos) * u)


def make_bank(base: np.ndarray, size: int, args, jitter: Jitter, rng: np.random.Generator) -> np.ndarray:
    """(size, D) float32 unit vectors: jittered real vectors and jittered mixes of real neighbours."""
    import faiss

    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    _, nbrs = flat.search(base, 11)  # column 0 is (nearly always) the vector itself
    nbrs = nbrs[:, 1:]
    bank = np.empty((size, base.shape[1]), dtype=np.float32)
    for start in range(0, size, CHUNK):
        n = min(CHUNK, size - start)
        i = rng.integers(0, len(base), n)
        j = nbrs[i, rng.integers(0, nbrs.shape[1], n)]
        w = (rng.random(n, dtype=np.float32) * 0.5) * (rng.random(n) < args.mix)
        anchors = unit_rows((1 - w)[:, None] * base[i] + w[:, None] * base[j])
        bank[start:start + n] = jitter(anchors, rng.uniform(*args.jitter, n), rng)
    return bank


def make_queries(bank: np.ndarray, count: int, cos_range, jitter: Jitter, rng: np.random.Generator):
    targets = rng.integers(0, len(bank), count)
    return jitter(bank[targets], rng.uniform(*cos_range, count), rng), targets


def neighbour_stats(bank: np.ndarray, s_q: np.ndarray, exact, rng: np.random.Generator, sample: int = 1000) -> dict:
    """Nearest-neighbour cosines of `sample` bank vectors (exact index `exact`), and the queries' top-1 / top-2
    cosines and gap from their exact top-2 scores `s_q` (Q, 2)."""
    rows = rng.choice(len(bank), min(sample, len(bank)), replace=False)
    s_bank, i_bank = exact.search(bank[rows], 2)
    nn = np.where(i_bank[:, 0] == rows, s_bank[:, 1], s_bank[:, 0])  # the nearest other vector
    return {"bank_nn_cos_median": float(np.median(nn)), "bank_nn_cos_p10": float(np.percentile(nn, 10)),
            "bank_nn_cos_p90": float(np.percentile(nn, 90)), "query_top1_cos_median": float(np.median(s_q[:, 0])),
            "query_top2_cos_median": float(np.median(s_q[:, 1])),
            "query_top1_top2_gap_median": float(np.median(s_q[:, 0] - s_q[:, 1]))}


def time_search(index, queries: np.ndarray, gt: np.ndarray, single: int, repeats: int) -> dict:
    index.search(queries[:8], 1)  # warm-up
    t0 = time.perf_counter()
    for q in queries[:single]:
        index.search(q[None], 1)
    single_ms = (time.perf_counter() - t0) * 1e3 / len(queries[:single])
    batch_s, ids = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, ids = index.search(queries, 1)
        batch_s.append(time.perf_counter() - t0)
    batched_ms = statistics.median(batch_s) * 1e3 / len(queries)
    return {"single_ms": single_ms, "single_queries": len(queries[:single]), "batched_ms": batched_ms, "batched_seconds": batch_s,
            "recall_at_1": float(np.mean(ids[:, 0] == gt))}


def flat_bytes(index) -> int:
    return index.ntotal * index.d * 4


def bench_flat(bank, queries, gt, args) -> list[dict]:
    import faiss

    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank)
    build = time.perf_counter() - t0
    out = [{"index": "flat", "setting": "exact", "build_s": build, "index_gb": flat_bytes(index) / 1e9,
            **time_search(index, queries, gt, min(args.single, args.flat_single), args.repeats)}]
    del index
    return out


def bench_hnsw(bank, queries, gt, args) -> list[dict]:
    import faiss

    t0 = time.perf_counter()
    index = faiss.IndexHNSWFlat(bank.shape[1], args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = args.ef_construction
    index.add(bank)
    build = time.perf_counter() - t0
    h = index.hnsw
    size = flat_bytes(index) + 4 * h.neighbors.size() + 4 * h.levels.size() + 8 * h.offsets.size()
    out = []
    for ef in args.ef:
        h.efSearch = ef
        out.append({"index": f"hnsw{args.hnsw_m}", "setting": f"ef={ef}", "m": args.hnsw_m,
                    "ef_construction": args.ef_construction,
                    "ef_search": ef, "build_s": build, "index_gb": size / 1e9,
                    **time_search(index, queries, gt, args.single, args.repeats)})
    del index
    return out


def bench_ivf(bank, queries, gt, args) -> list[dict]:
    import faiss

    n, d = bank.shape
    nlist = args.nlist or max(1, int(round(4 * math.sqrt(n))))
    train_n = min(n, args.ivf_train or max(100_000, 39 * nlist))
    sample = bank[np.sort(np.random.default_rng(args.seed + 1).choice(n, train_n, replace=False))]
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    train_s = time.perf_counter() - t0
    index.add(bank)
    build = time.perf_counter() - t0
    del sample
    size = flat_bytes(index) + 8 * index.ntotal + nlist * d * 4
    out = []
    for nprobe in args.nprobe:
        index.nprobe = min(nprobe, nlist)
        out.append({"index": f"ivf{nlist}", "setting": f"nprobe={index.nprobe}", "nprobe": index.nprobe,
                    "nlist": nlist, "train_vectors": train_n, "train_s": train_s, "build_s": build,
                    "index_gb": size / 1e9, **time_search(index, queries, gt, args.single, args.repeats)})
    del index, quantizer
    return out


BENCHES = {"flat": bench_flat, "hnsw": bench_hnsw, "ivf": bench_ivf}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1_000_000, help="bank vectors")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--single", type=int, default=200, help="queries timed one search call at a time")
    p.add_argument("--flat-single", type=int, default=50,
                   help="queries timed one at a time on the exact index (each scans the whole bank)")
    p.add_argument("--repeats", type=int, default=3, help="batched search repeats (median)")
    p.add_argument("--indexes", nargs="+", choices=list(BENCHES), default=list(BENCHES))
    p.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 128], help="HNSW efSearch values")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="IVF nprobe values")
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (0: 4 sqrt(size))")
    p.add_argument("--ivf-train", type=int, default=0, help="IVF k-means sample (0: max(100k, 39 nlist))")
    p.add_argument("--jitter", type=float, nargs=2, default=[0.95, 1.0], metavar=("LO", "HI"),
                   help="cosine of a bank vector to its real (or mixed) anchor, uniform in [LO, HI]")
    p.add_argument("--mix", type=float, default=0.5, help="fraction of bank vectors anchored on a mix of two")
    p.add_argument("--query-cos", type=float, nargs=2, default=[0.85, 0.95], metavar=("LO", "HI"),
                   help="cosine of a query to the bank vector it was made from, uniform in [LO, HI]")
    p.add_argument("--gsm", type=int, default=1500, help="gsm_symbolic problems for the real base vectors")
    p.add_argument("--logic", type=int, default=2000, help="logic-chain problems for the real base vectors")
    p.add_argument("--cache", type=Path, default=Path(".cache/lcm"), help="embedding cache folder")
    p.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads (default: faiss's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "retrieval_scale.json")
    args = p.parse_args()
    import faiss

    from lcm.encoders.cache import EmbeddingCache
    from lcm.encoders.sentence_transformer import SentenceTransformerEncoder

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    args.single = min(args.single, args.queries)
    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    console = Console()
    encoder = SentenceTransformerEncoder()
    texts = real_sentences(args.gsm, args.logic)
    base = unit_rows(EmbeddingCache(args.cache, encoder).get(texts))
    rng = np.random.default_rng(args.seed)

    # the real sentences as a bank of their own, with queries made the same way: the reference difficulty
    jitter = Jitter(base)
    real_index = faiss.IndexFlatIP(base.shape[1])
    real_index.add(base)
    real_q, _ = make_queries(base, args.queries, args.query_cos, jitter, np.random.default_rng(args.seed + 2))
    real_stats = neighbour_stats(base, real_index.search(real_q, 2)[0], real_index, np.random.default_rng(args.seed + 3))
    del real_index
    calib = make_bank(base, len(base), args, jitter, np.random.default_rng(args.seed + 4))
    calib_index = faiss.IndexFlatIP(calib.shape[1])
    calib_index.add(calib)
    calib_q, _ = make_queries(calib, args.queries, args.query_cos, jitter, np.random.default_rng(args.seed + 2))
    calib_stats = neighbour_stats(calib, calib_index.search(calib_q, 2)[0], calib_index,
                                  np.random.default_rng(args.seed + 3))
    del calib, calib_index, calib_q, real_q

    t0 = time.perf_counter()
    bank = make_bank(base, args.size, args, jitter, rng)
    gen_s = time.perf_counter() - t0
    queries, targets = make_queries(bank, args.queries, args.query_cos, jitter, rng)
    t0 = time.perf_counter()
    gt_index = faiss.IndexFlatIP(bank.shape[1])
    gt_index.add(bank)
    gt_scores, gt_ids = gt_index.search(queries, 2)
    gt_s = time.perf_counter() - t0
    gt = gt_ids[:, 0]
    synth_stats = neighbour_stats(bank, gt_scores, gt_index, np.random.default_rng(args.seed + 3))
    synth_stats["query_target_is_top1"] = float(np.mean(gt == targets))
    del gt_index
    gc.collect()
    console.print(f"bank: {args.size:,} vectors from {len(base):,} real MiniLM sentence vectors "
                  f"(generated in {gen_s:.1f} s; exact top-2 of the queries in {gt_s:.1f} s)")
    for name, s in (("real sentences", real_stats), ("synthetic, real size", calib_stats),
                    (f"synthetic, {args.size:,}", synth_stats)):
        console.print(f"  {name}: nearest-neighbour cosine median {s['bank_nn_cos_median']:.3f} "
                      f"(p10 {s['bank_nn_cos_p10']:.3f}, p90 {s['bank_nn_cos_p90']:.3f}); queries: top-1 cosine "
                      f"{s['query_top1_cos_median']:.3f}, top-2 {s['query_top2_cos_median']:.3f}, "
                      f"median top-1 - top-2 gap {s['query_top1_top2_gap_median']:.4f}")
    console.print(f"  the query's source vector is its exact top-1 for {synth_stats['query_target_is_top1']:.1%} "
                  "of queries")

    rows: list[dict] = []
    for name in args.indexes:
        t0 = time.perf_counter()
        rows += BENCHES[name](bank, queries, gt, args)
        gc.collect()
        console.print(f"{name}: built and searched in {time.perf_counter() - t0:.0f} s")
    for r in rows:
        r["meets_target"] = bool(r["batched_ms"] <= TARGET_MS and r["recall_at_1"] >= TARGET_RECALL)

    threads = faiss.omp_get_max_threads()
    table = Table(title=f"Retrieval at scale: {args.size:,} x {bank.shape[1]} bank, {args.queries} queries, "
                        f"faiss {faiss.__version__}, {threads} threads, CPU (HNSW efConstruction "
                        f"{args.ef_construction}; ms per query; target: batched <= {TARGET_MS:g} ms, "
                        f"recall@1 >= {TARGET_RECALL:g})")
    for col in ("index", "setting", "build s", "GB", "single", "batched", "recall@1", "target"):
        table.add_column(col, justify="left" if col in ("index", "setting") else "right", no_wrap=True)
    last = None
    for r in rows:
        if last is not None and r["index"] != last:
            table.add_section()
        last = r["index"]
        table.add_row(r["index"], r["setting"], f"{r['build_s']:.1f}", f"{r['index_gb']:.2f}",
                      f"{r['single_ms']:.3f}", f"{r['batched_ms']:.3f}", f"{r['recall_at_1']:.3f}",
                      "yes" if r["meets_target"] else "")
    console.print(table)
    met = [f"{r['index']} {r['setting']}" for r in rows if r["meets_target"]]
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "faiss_version": faiss.__version__,
        "threads": threads, "cpu_count": os.cpu_count(),
        "load_avg_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "encoder": encoder.id, "real_sentences": len(base), "dim": int(bank.shape[1]),
        "generate_s": gen_s, "ground_truth_s": gt_s, "real_stats": real_stats,
        "synthetic_real_size_stats": calib_stats, "synthetic_stats": synth_stats,
        "target": {"batched_ms_per_query": TARGET_MS, "recall_at_1": TARGET_RECALL}, "meets_target": met,
        "results": rows, "peak_rss_gb": rss_peak_gb(), "total_s": time.perf_counter() - t_start,
    }
    write_json(args.out, result)
    console.print(f"peak RSS {result['peak_rss_gb']:.2f} GB, {result['total_s']:.0f} s in all; wrote {args.out}")
    console.print(f"meets batched <= {TARGET_MS:g} ms/query and recall@1 >= {TARGET_RECALL:g} at {args.size:,} "
                  f"vectors ({threads} threads): " + ("; ".join(met) if met else "no configuration"))


if __name__ == "__main__":
    run_command(main)
