import numpy as np
import pytest

from lcm.errors import LCMError
from lcm.retrieval import SentenceBank


def bank_data(n=2000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    return [f"sentence {i}" for i in range(n)], rng.standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_search_save_load_round_trip(tmp_path, kind):
    texts, emb = bank_data()
    bank = SentenceBank(texts, emb, "enc", index=kind)
    assert bank.kind == kind
    queries = emb[:200] + 0.05 * np.random.default_rng(1).standard_normal((200, 32)).astype(np.float32)
    scores, ids = bank.search(queries, k=1)
    assert (ids[:, 0] == np.arange(200)).mean() >= 0.95 and scores.max() <= 1.0001
    loaded = SentenceBank.load(bank.save(tmp_path / "bank"), encoder_id="enc", dim=32)
    assert loaded.kind == kind and loaded.texts == texts
    assert np.array_equal(loaded.search(queries)[1], ids)
    np.testing.assert_array_equal(loaded.embeddings([3, 5]), emb[[3, 5]])  # raw vectors, not unit ones
    assert not list((tmp_path / "bank").glob("*.tmp"))


def test_auto_switches_to_hnsw_above_threshold():
    texts, emb = bank_data(300)
    assert SentenceBank(texts, emb, "enc", hnsw_above=1000).kind == "flat"
    assert SentenceBank(texts, emb, "enc", hnsw_above=100).kind == "hnsw"


def test_load_verifies_manifest(tmp_path):
    texts, emb = bank_data(50)
    folder = SentenceBank(texts, emb, "enc").save(tmp_path / "b")
    with pytest.raises(LCMError, match="built with encoder 'enc'"):
        SentenceBank.load(folder, encoder_id="other")
    with pytest.raises(LCMError, match="has dimension 32"):
        SentenceBank.load(folder, dim=384)
    with pytest.raises(LCMError, match="no sentence bank"):
        SentenceBank.load(tmp_path / "nowhere")
    (folder / "embeddings.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(LCMError, match="corrupted or truncated"):
        SentenceBank.load(folder)


def test_bad_queries_and_inputs():
    texts, emb = bank_data(20)
    bank = SentenceBank(texts, emb, "enc")
    with pytest.raises(LCMError, match="dimension 8"):
        bank.search(np.zeros((1, 8), np.float32))
    with pytest.raises(LCMError, match="NaN"):
        bank.search(np.full((1, 32), np.nan, np.float32))
    with pytest.raises(LCMError, match="one embedding per text"):
        SentenceBank(texts[:3], emb, "enc")
