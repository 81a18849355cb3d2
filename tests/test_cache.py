"""The embedding cache with the real MiniLM encoder."""
import numpy as np
import pytest

from lcm.encoders import EmbeddingCache
from lcm.encoders.base import Encoder
from lcm.errors import LCMError

SENTENCES = [f"Tom buys {i} apples for ${i * 3}." for i in range(40)]


class Counting(Encoder):
    """Wraps the real encoder; counts what it is asked to encode and can fail on demand."""

    def __init__(self, inner, fail_after: int | None = None, nan_text: str | None = None):
        self.inner, self.fail_after, self.nan_text, self.calls = inner, fail_after, nan_text, []

    id = property(lambda self: self.inner.id)
    dim = property(lambda self: self.inner.dim)

    def init_args(self):
        return self.inner.init_args()

    def encode(self, texts, batch_size=64):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt  # the user pressed Ctrl-C mid-encode
        self.calls.append(list(texts))
        out = self.inner.encode(texts, batch_size)
        if self.nan_text in texts:
            out[texts.index(self.nan_text)] = np.nan
        return out


def test_encodes_once_across_runs_and_matches_raw(tmp_path, encoder):
    enc = Counting(encoder)
    first = EmbeddingCache(tmp_path, enc, show_progress=False).get(SENTENCES + SENTENCES[:5])
    assert sum(len(c) for c in enc.calls) == 40  # duplicates encoded once
    assert first.shape == (45, 384) and first.dtype == np.float32
    np.testing.assert_allclose(first[:40], encoder.encode(SENTENCES), atol=1e-5)
    enc2 = Counting(encoder)
    again = EmbeddingCache(tmp_path, enc2, show_progress=False).get(SENTENCES)  # a new process, same folder
    assert enc2.calls == [] and np.array_equal(again, first[:40])
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temp files


def test_interrupted_encode_resumes(tmp_path, encoder):
    enc = Counting(encoder, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        EmbeddingCache(tmp_path, enc, chunk_size=10, batch_size=10, show_progress=False).get(SENTENCES)
    assert len(enc.calls) == 2  # two batches = two shards of 10 finished before the interrupt
    enc2 = Counting(encoder)
    cache = EmbeddingCache(tmp_path, enc2, chunk_size=10, batch_size=10, show_progress=False)
    assert len(cache) == 20
    out = cache.get(SENTENCES)
    assert sum(len(c) for c in enc2.calls) == 20  # only the rest is encoded
    np.testing.assert_allclose(out, encoder.encode(SENTENCES), atol=1e-5)


def test_nan_embeddings_are_refused_and_good_rows_kept(tmp_path, encoder):
    enc = Counting(encoder, nan_text=SENTENCES[3])
    with pytest.raises(LCMError, match="NaN/inf"):
        EmbeddingCache(tmp_path, enc, show_progress=False).get(SENTENCES[:10])
    cache = EmbeddingCache(tmp_path, Counting(encoder), show_progress=False)
    assert len(cache) == 9 and SENTENCES[3] not in cache


def test_truncated_shard_is_one_clear_error(tmp_path, encoder):
    EmbeddingCache(tmp_path, encoder, show_progress=False).get(SENTENCES[:10])
    shard = next(tmp_path.rglob("*.emb.npy"))
    shard.write_bytes(shard.read_bytes()[:300])
    with pytest.raises(LCMError, match="corrupted or truncated"):
        EmbeddingCache(tmp_path, encoder, show_progress=False)


def test_cache_of_another_encoder_is_refused(tmp_path, encoder):
    EmbeddingCache(tmp_path, encoder, show_progress=False).get(SENTENCES[:3])
    folder = next(tmp_path.iterdir())
    manifest = folder / "manifest.json"
    manifest.write_text(manifest.read_text().replace(encoder.id, "st:other-model"))
    with pytest.raises(LCMError, match="belongs to encoder"):
        EmbeddingCache(tmp_path, encoder, show_progress=False)
    manifest.write_text("{not json")
    with pytest.raises(LCMError, match="corrupted"):
        EmbeddingCache(tmp_path, encoder, show_progress=False)


def test_sonar_missing_extra_is_one_line():
    from lcm.encoders import SonarEncoder

    try:
        import sonar  # noqa: F401
        pytest.skip("sonar-space is installed here")
    except ImportError:
        pass
    with pytest.raises(LCMError, match=r"pip install 'lcm-trainer\[sonar\]'"):
        SonarEncoder().encode(["hello"])


def test_local_encoder_folders_get_content_ids(tmp_path):
    from lcm.encoders import SentenceTransformerEncoder

    for name, dim in (("a", 384), ("b", 768)):
        folder = tmp_path / name / "model"  # same folder name, different models
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(f'{{"hidden_size": {dim}}}')
    a, b = (SentenceTransformerEncoder(str(tmp_path / n / "model")) for n in ("a", "b"))
    assert a.id != b.id and a.id.startswith("st:model-")
    assert a.model == str((tmp_path / "a" / "model").resolve())  # absolute: checkpoints work from anywhere


def test_encoder_config_rebuilds_the_encoder_and_bad_paths_raise_what_generation_catches():
    from lcm.encoders import SentenceTransformerEncoder, encoder_from_config

    enc = SentenceTransformerEncoder(normalize=False, max_seq_length=32)
    again = encoder_from_config(enc.config())
    assert type(again) is SentenceTransformerEncoder and again.id == enc.id and again.init_args() == enc.init_args()
    with pytest.raises(ImportError):
        encoder_from_config({"class_path": "lcm.encoders.nowhere.Encoder"})
    for not_an_encoder in ("lcm.encoders.NoSuchEncoder", "os.system", "builtins.print"):
        with pytest.raises(TypeError, match="is not an lcm encoder class"):
            encoder_from_config({"class_path": not_an_encoder, "init_args": {"command": "true"}})
    with pytest.raises(TypeError):
        encoder_from_config({"class_path": "lcm.encoders.SentenceTransformerEncoder", "init_args": {"retired": 1}})


def test_two_processes_on_one_cache_encode_each_sentence_once(tmp_path):
    """Two runs started together on one cache used to both encode everything; now the second waits for the
    first's shards and encodes only what is still missing (here: nothing)."""
    import subprocess
    import sys

    texts = [f"Sentence number {i} about {i % 7} apples." for i in range(300)]
    (tmp_path / "texts.json").write_text(__import__("json").dumps(texts))
    script = ("import json, sys\n"
              "from lcm.encoders import SentenceTransformerEncoder\n"
              "from lcm.encoders.cache import EmbeddingCache\n"
              f"texts = json.load(open({str(tmp_path / 'texts.json')!r}))\n"
              f"cache = EmbeddingCache({str(tmp_path / 'cache')!r}, SentenceTransformerEncoder(), show_progress=False)\n"
              "print(cache.ensure(texts))\n")
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env) for _ in range(2)]
    outs = [r.communicate(timeout=300) for r in runs]
    assert all(r.returncode == 0 for r in runs), [o[1][-2000:] for o in outs]
    encoded = sorted(int(o[0].strip().splitlines()[-1]) for o in outs)
    assert encoded == [0, len(texts)]
