"""`lcm embed`: encoding with several processes gives the one-process vectors and survives kill -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, run_lcm

from lcm.encoders import EmbeddingCache
from lcm.encoders.cache import plan_batches


def _problems(path: Path, n: int) -> Path:
    rows = [{"question": f"Ann has {i} apples and {i % 7} pears. How many fruits has she?",
             "steps": [f"Ann starts with {i} apples.", f"She also has {i % 7} pears{'.' * (i % 3 + 1)}",
                       f"{i} + {i % 7} = {i + i % 7} fruits in all."], "answer": str(i + i % 7)} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _store_table(cache_dir: Path) -> np.ndarray:
    (store,) = (cache_dir / "corpora").iterdir()
    return np.load(store / "table.npy")


def test_two_processes_store_what_one_process_stores(tmp_path, capsys):
    data = _problems(tmp_path / "p.jsonl", 40)
    common = ["-c", str(CONFIGS / "jsonl_example.yaml"), "--data.source.init_args.path", str(data),
              "--data.show_progress", "false", "--data.encode_batch_size", "16"]
    for n in (1, 2):
        code, _ = run_lcm(["embed", *common, "--data.cache_dir", str(tmp_path / f"p{n}"),
                           "--data.encode_processes", str(n)])
        captured = capsys.readouterr()
        assert code == 0, captured.err[-2000:]
        assert f"encoded now with {n} process(es)" in captured.out and "prepared store: " in captured.out
    one, two = _store_table(tmp_path / "p1"), _store_table(tmp_path / "p2")
    assert one.dtype == np.float16 and one.shape == two.shape and one.shape[0] > 100
    # the same batches in both; only the threads per process differ (2 vs 1), which may move a float32 sum by
    # ~1e-7, so a few float16 values round the other way: one float16 step apart (or < 1e-6 near zero)
    gap = np.abs(one.astype(np.float32) - two.astype(np.float32))
    step = np.spacing(np.maximum(np.abs(one), np.abs(two))).astype(np.float32)
    assert np.all(gap <= np.maximum(step, 1e-6)), float(gap.max())


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of /proc/PID/stat: the parent pid
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


TEXTS = [f"Sentence {i} is about {i % 13} cats and {'very ' * (i % 5)}long days." for i in range(240)]

KILLED_RUN = """
import json, sys
from lcm.encoders import EmbeddingCache, SentenceTransformerEncoder
if __name__ == "__main__":
    texts = json.load(open(sys.argv[1]))
    EmbeddingCache(sys.argv[2], SentenceTransformerEncoder(), chunk_size=16, batch_size=16, show_progress=False,
                   processes=2).ensure(texts)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the workers")
def test_kill_9_during_a_two_process_encode_resumes(tmp_path, encoder):
    (tmp_path / "texts.json").write_text(json.dumps(TEXTS))
    (tmp_path / "run.py").write_text(KILLED_RUN)
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.Popen([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "texts.json"), str(cache_dir)],
                           env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while len(list(cache_dir.rglob("*.keys.npy"))) < 2:  # some shards are finished, most work is not
        assert run.poll() is None, run.stderr.read()[-2000:]
        assert time.time() < deadline, "no shard written in 240 s"
        time.sleep(0.2)
    workers = _children(run.pid)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    deadline = time.time() + 60
    while any(_alive(w) for w in workers):  # orphaned workers notice before their next batch and exit
        assert time.time() < deadline, "encoding workers outlived their killed parent"
        time.sleep(0.2)

    cache = EmbeddingCache(cache_dir, encoder, chunk_size=16, batch_size=16, show_progress=False)
    done = len(cache)
    assert 0 < done < len(TEXTS)
    assert cache.ensure(TEXTS) == len(TEXTS) - done  # only the rest is encoded
    fresh = EmbeddingCache(tmp_path / "fresh", encoder, batch_size=16, show_progress=False).get(TEXTS)
    np.testing.assert_allclose(EmbeddingCache(cache_dir, encoder).get(TEXTS), fresh, atol=1e-6)


def test_batches_are_planned_longest_first_and_stable():
    texts = ["bb", "a", "cc", "ddd", "e"]
    assert plan_batches(texts, 2) == [["ddd", "bb"], ["cc", "a"], ["e"]]  # ties keep their first-seen order
    assert plan_batches([], 4) == []


def test_progress_moves_once_per_batch(tmp_path, encoder):
    """The bar used to move once per 4,096-sentence shard (a 3k-sentence corpus sat at 0 until done)."""
    steps = []
    cache = EmbeddingCache(tmp_path, encoder, batch_size=8, show_progress=False, read_shards=False)
    cache.encode_batches(plan_batches(TEXTS[:40], 8), steps.append)
    assert steps == [8] * 5
    assert len(list(tmp_path.rglob("*.keys.npy"))) == 1  # progress is per batch, shards stay per chunk
