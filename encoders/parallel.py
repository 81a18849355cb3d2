"""Encoding with several processes: each loads its own copy of the encoder and writes its own cache shards.

Used by `EmbeddingCache` when `processes > 1` (`lcm embed -c CONFIG --data.encode_processes N`, or any run with
`data.encode_processes`). The parent plans the batches (`lcm.encoders.cache.plan_batches`) and worker r takes
batches r, r + N, r + 2N, ... -- neighbouring batches have similar lengths, so the work is balanced -- and the
vectors are those one process would compute from the same batches. Each worker writes shards the way one
process does (atomic, keys last, a name no other process picks), so a kill -9 of anything keeps every finished
shard and the next run encodes only the rest. Workers notice a dead parent before each batch and exit.

Devices: with CUDA, worker r runs on GPU r mod the GPU count; on CPU the cores are shared out (each worker gets
cores / N torch threads), so N processes on one CPU mostly trade threads for processes.
"""
from __future__ import annotations

import os
import queue as queue_lib

from lcm.errors import LCMError


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _place(rank: int, processes: int) -> None:
    """This worker's device (GPU rank mod count) or its share of the CPU threads."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())
    else:
        torch.set_num_threads(max(1, _cores() // processes))


def _worker(rank: int, processes: int, encoder_cfg: dict, root: str, chunk_size: int, batches: list[list[str]],
            messages, parent: int) -> None:
    """Encode `batches` into the cache at `root`; report ("done"|"error", rank, n|message) and progress counts."""
    # joblib (imported by sentence-transformers) probes multiprocessing with a named semaphore at import, which the
    # shared resource tracker then reports as leaked; a worker never needs joblib's multiprocessing
    os.environ.setdefault("JOBLIB_MULTIPROCESSING", "0")
    try:
        from lcm.encoders.base import encoder_from_config
        from lcm.encoders.cache import EmbeddingCache

        _place(rank, processes)
        cache = EmbeddingCache(root, encoder_from_config(encoder_cfg), chunk_size=chunk_size, show_progress=False,
                               read_shards=False)

        def advance(n: int) -> None:
            if os.getppid() != parent:  # the parent died (kill -9): stop now; finished shards stay
                os._exit(1)  # (skips flushing the queue, which nobody reads any more)
            messages.put(("progress", rank, n))

        advance(0)
        cache.encode_batches(batches, advance)
        messages.put(("done", rank, sum(map(len, batches))))
    except BaseException as e:  # noqa: BLE001 - reported to the parent as one line
        why = str(e) if isinstance(e, LCMError) else f"{type(e).__name__}: {e}"
        messages.put(("error", rank, why))


def encode_in_processes(cache, batches: list[list[str]], advance) -> None:
    """Encode `batches` into `cache` with `cache.processes` worker processes (spawned: safe with CUDA and threads)."""
    import multiprocessing as mp

    n = min(cache.processes, len(batches))
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    workers = [ctx.Process(target=_worker, daemon=True,
                           args=(r, n, cache.encoder.config(), str(cache.root), cache.chunk_size, batches[r::n],
                                 messages, os.getpid()))
               for r in range(n)]
    for w in workers:
        w.start()
    try:
        _wait(workers, messages, advance)
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
            w.join()
        messages.close()
        messages.join_thread()


def _wait(workers: list, messages, advance) -> None:
    """Relay progress until every worker is done; a worker's error or death is one clear line."""
    done: set[int] = set()
    while len(done) < len(workers):
        try:
            kind, rank, value = messages.get(timeout=1.0)
        except queue_lib.Empty:
            dead = [r for r, w in enumerate(workers) if r not in done and w.exitcode is not None]
            if dead:
                raise LCMError(f"encoding worker {dead[0]} died (exit code {workers[dead[0]].exitcode}); the shards "
                               "it finished are kept: rerun to encode the rest")
            continue
        if kind == "progress":
            advance(value)
        elif kind == "done":
            done.add(rank)
        else:
            raise LCMError(f"encoding worker {rank}: {value}")
