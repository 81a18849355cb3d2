"""Prepared corpus store (memory-mapped float16 table + offsets), long-document wrapping and packing with
document-aware attention."""
import json
import pickle

import lightning as L
import numpy as np
import pytest
import torch

from lcm.concepts import ConceptType
from lcm.diffusion import DiffusionConfig, DiffusionLCM
from lcm.errors import LCMError
from lcm.model import BaseLCM, LCMConfig
from lcm.module import ConceptLM, target_mask
from lcm.optim import OptimConfig
from lcm.planners import Planning
from lcm.train import ConceptDataModule, DatasetSource
from lcm.train.store import Mapped
from lcm.train.windows import PadCollate, Window, cut_segments, pack_segments

P, S, E = int(ConceptType.PROMPT), int(ConceptType.STEP), int(ConceptType.EOT)
ROWS = [{"question": f"Bo has {i} cards. He gets {i + 3} more. How many cards?",
         "steps": [f"He has {i} + {i + 3} = {2 * i + 3} cards.", "That is the total."], "answer": str(2 * i + 3)}
        for i in range(40)]


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return str(path)


def make_dm(data, tmp_path, encoder, **kw):
    return ConceptDataModule(DatasetSource(data) if "store" not in kw else None, encoder=encoder,
                             cache_dir=str(tmp_path / "cache"), show_progress=False, batch_size=4, **kw)


def test_store_is_memory_mapped_float16_and_reusable_without_the_source(data, tmp_path, encoder):
    dm = make_dm(data, tmp_path, encoder)
    c = dm.corpus
    assert isinstance(c.table, Mapped) and c.table.array.dtype == np.float16 and isinstance(c.table.array, np.memmap)
    exact = encoder.encode([c.texts[5]])[0]
    assert np.abs(c.vectors([5])[0] - exact).max() < 1e-3  # float16 keeps MiniLM vectors to ~1e-4
    assert len(pickle.dumps(c.table)) < 500  # a worker reopens the file instead of receiving the data
    # the same corpus lands in the same content-addressed folder
    again = make_dm(data, tmp_path, encoder).corpus
    assert again.folder == c.folder and len(list(c.folder.parent.iterdir())) == 1

    stored = make_dm(None, tmp_path, encoder, store=str(c.folder))
    assert stored.corpus.texts[3] == c.texts[3] and len(stored.corpus.texts) == len(c.texts)
    np.testing.assert_array_equal(stored.target_rows("train"), dm.target_rows("train"))
    np.testing.assert_array_equal(stored.train_targets(), dm.train_targets())
    a, b = next(iter(dm.val_dataloader())), next(iter(stored.val_dataloader()))
    assert all(torch.equal(a[k], b[k]) for k in ("x", "ids", "types"))
    with pytest.raises(LCMError, match="holds concepts, not documents"):
        stored.documents("test")


def test_bad_stores_are_one_clear_error(data, tmp_path, encoder):
    folder = make_dm(data, tmp_path, encoder).corpus.folder
    with pytest.raises(LCMError, match="either a source .* or a prepared store"):
        ConceptDataModule(None, encoder=encoder)
    with pytest.raises(LCMError, match="no prepared corpus"):
        make_dm(None, tmp_path, encoder, store=str(tmp_path / "nowhere")).corpus
    with pytest.raises(LCMError, match="disagree .*planning"):
        make_dm(None, tmp_path, encoder, store=str(folder), planning=Planning()).corpus
    texts = folder / "texts.bin"
    blob = texts.read_bytes()
    texts.write_bytes(blob[:-3])
    with pytest.raises(LCMError, match="texts.bin does not match"):
        make_dm(None, tmp_path, encoder, store=str(folder)).corpus
    texts.write_bytes(blob)
    ids = np.load(folder / "train.ids.npy")
    np.save(folder / "train.ids.npy", ids + 10_000)
    with pytest.raises(LCMError, match="rows outside"):
        make_dm(None, tmp_path, encoder, store=str(folder)).corpus
    np.save(folder / "train.ids.npy", ids)
    meta = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(meta | {"encoder_id": "st:other"}))
    with pytest.raises(LCMError, match="encoded with 'st:other'"):
        make_dm(None, tmp_path, encoder, store=str(folder)).corpus
    (folder / "manifest.json").write_text(json.dumps(meta))
    table = folder / "table.npy"
    table.write_bytes(table.read_bytes()[:1000])  # truncated
    with pytest.raises(LCMError, match="corrupted or truncated"):
        make_dm(None, tmp_path, encoder, store=str(folder)).corpus


def test_content_name_does_not_depend_on_chunking(tmp_path):
    from lcm.train.store import StoreWriter

    vecs = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    texts = ["a", "b\x00c", "ü", ""]
    names = []
    for chunks in ([4], [1, 3], [2, 2]):
        w = StoreWriter(tmp_path / str(len(chunks)) / str(chunks[0]), 4, 8, "enc")
        at = 0
        for n in chunks:
            w.add_rows(texts[at:at + n], vecs[at:at + n])
            at += n
        for split in ("train", "val", "test"):
            w.add_split(split, [(np.array([0, 1, 3]), np.array([P, S, E]))] if split == "train" else [])
        names.append(w.finish(eot_id=3).name)
    assert len(set(names)) == 1
    from lcm.train.store import open_store

    _, _, read, _ = open_store(tmp_path / "1" / "4" / names[0])
    assert list(read) == texts


def test_cut_segments_wrap_and_truncate():
    # three documents: 3, 10 and 1 concepts
    types = np.array([P, S, E] + [P, P, S, S, S, S, S, S, S, E] + [E], dtype=np.int8)
    offsets = np.array([0, 3, 13, 14])
    seg, stats = cut_segments(offsets, types, 4, "wrap")
    # windows overlap by one concept (a window's first concept is context only); the 1-concept document has
    # no target after its first position: dropped
    assert seg.tolist() == [[0, 3], [3, 7], [6, 10], [9, 13]] and stats["no_target"] == 1
    assert stats["wrapped"] == 1
    targets = [i for a, b in seg.tolist() for i in range(a + 1, b) if types[i] != P]
    assert targets == [1, 2] + list(range(5, 13))  # every target of the long document, exactly once
    seg, stats = cut_segments(offsets, types, 4, "truncate")
    assert seg.tolist() == [[0, 3], [3, 7]] and stats["truncated"] == 1


def test_pack_segments_places_every_segment_once_within_the_window():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 20, size=300)
    ends = np.cumsum(lengths)
    seg = np.stack([ends - lengths, ends], axis=1)
    windows = pack_segments(seg, 32, seed=1)
    placed = np.concatenate(windows)
    assert sorted(map(tuple, placed.tolist())) == sorted(map(tuple, seg.tolist()))
    assert all((w[:, 1] - w[:, 0]).sum() <= 32 for w in windows)
    assert len(windows) < len(seg) / 2  # packing actually packs (mean length ~10 in windows of 32)


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_packed_documents_do_not_see_each_other(positions):
    torch.manual_seed(0)
    net = BaseLCM(LCMConfig(embed_dim=12, d_model=16, n_layer=2, n_head=2, max_seq_len=16, positions=positions,
                            dropout=0.0)).eval()
    a, b = torch.randn(1, 5, 12), torch.randn(1, 7, 12)
    x = torch.cat([a, b], dim=1)  # one packed window of two documents (1, 12, 12)
    doc = torch.tensor([[0] * 5 + [1] * 7])
    pos = torch.tensor([list(range(5)) + list(range(7))])
    with torch.no_grad():
        out = net(x, doc=doc, pos=pos)
        torch.testing.assert_close(out[:, :5], net(a), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out[:, 5:], net(b), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(net(x)[:, 5:], net(b), atol=1e-3)  # without the mask b would see a
    types = torch.tensor([[P, S, S, S, E, S, S, S, S, S, S, E]])  # a wrapped continuation starts with a step
    assert target_mask(types)[0, 4] and not target_mask(types, doc)[0, 4]


@pytest.mark.parametrize("tower", ["two", "one"])
def test_packed_diffusion_denoiser_stays_in_its_document(tower):
    torch.manual_seed(0)
    model = DiffusionLCM(LCMConfig(embed_dim=12, d_model=16, n_layer=2, n_head=2, max_seq_len=16, dropout=0.0),
                         DiffusionConfig(denoiser_layers=2, timesteps=20, ddim_steps=4, tower=tower)).eval()
    net = model.net
    for p in net.parameters():  # off AdaLN-Zero's identity start: the denoiser must really read its context
        p.data.add_(0.05 * torch.randn_like(p))
    a, b = torch.randn(1, 4, 12), torch.randn(1, 6, 12)
    doc = torch.tensor([[0] * 4 + [1] * 6])
    pos = torch.tensor([list(range(4)) + list(range(6))])
    x_tau, tau = torch.randn(1, 10, 12), torch.randint(0, 20, (1, 10))
    qpos = torch.arange(10)[None]
    with torch.no_grad():
        packed = net.denoise(net.encode_context(torch.cat([a, b], dim=1), doc, pos), x_tau, tau, qpos, None)
        alone = net.denoise(net.encode_context(b), x_tau[:, 4:], tau[:, 4:], qpos[:, :6], None)
    torch.testing.assert_close(packed[:, 4:], alone, atol=1e-5, rtol=1e-4)


def test_pad_collate_marks_documents_and_positions():
    table = np.arange(40, dtype=np.float16).reshape(10, 4)
    w = Window(np.array([1, 2, 3, 4]), np.array([P, S, P, S]), np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]))
    batch = PadCollate(table)([w, Window(np.array([5]), np.array([P]), np.array([0]), np.array([0]))])
    assert batch["x"].dtype == torch.float32 and batch["x"][0, 2].tolist() == [12, 13, 14, 15]
    assert batch["doc"].tolist() == [[0, 0, 1, 1], [0, -1, -1, -1]] and batch["pos"][0].tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("model_cls", [ConceptLM, DiffusionLCM])
def test_fit_on_packed_windows(data, tmp_path, encoder, model_cls):
    dm = make_dm(data, tmp_path, encoder, pack=True, max_seq_len=32)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape[1] <= 32 and int(batch["doc"].max()) >= 1  # several documents per window
    arch = LCMConfig(embed_dim=384, d_model=32, n_layer=1, n_head=2, max_seq_len=32)
    kw = {"diffusion": DiffusionConfig(denoiser_layers=1, ddim_steps=2)} if model_cls is DiffusionLCM else {}
    model = model_cls(arch, optim=OptimConfig(warmup_steps=1), **kw)
    trainer = L.Trainer(max_steps=3, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, dm)
    assert np.isfinite(trainer.callback_metrics["val/loss"].item())


def small_store(writer, fail_at: str | None = None):
    """Fill a 4-row store; raise RuntimeError just before step `fail_at` (rows, split, finish)."""
    vecs = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    for step in ("rows", "split", "finish"):
        if step == fail_at:
            raise RuntimeError("interrupted")
        if step == "rows":
            writer.add_rows(["a", "b", "c", "d"], vecs)
        elif step == "split":
            for split in ("train", "val", "test"):
                writer.add_split(split, [(np.array([0, 1, 3]), np.array([P, S, E]))])
    return writer.finish(eot_id=3)


@pytest.mark.parametrize("fail_at", ["rows", "split", "finish"])
def test_interrupted_store_write_leaves_nothing_behind(tmp_path, fail_at):
    from lcm.train.store import StoreWriter

    with pytest.raises(RuntimeError, match="interrupted"):
        with StoreWriter(tmp_path, 4, 8, "enc", name="key") as w:
            small_store(w, fail_at)
    assert list(tmp_path.iterdir()) == []  # neither the store nor its temporary folder


def test_interrupted_store_build_leaves_nothing_behind(data, tmp_path, encoder, monkeypatch):
    from lcm.train.store import StoreWriter

    def interrupted(self, split, seqs):
        raise KeyboardInterrupt

    monkeypatch.setattr(StoreWriter, "add_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_dm(data, tmp_path, encoder).corpus
    assert list((tmp_path / "cache" / "corpora").iterdir()) == []


def test_twin_store_of_another_rank_is_kept_and_stale_temp_folders_go(tmp_path):
    import subprocess
    import sys

    from lcm.train.store import StoreWriter, open_store

    first = small_store(StoreWriter(tmp_path, 4, 8, "enc", name="key"))
    twin = StoreWriter(tmp_path, 4, 8, "enc", name="key")  # started before `first` was renamed into place
    assert small_store(twin) == first and open_store(first)[0]["rows"] == 4
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".tmp-{int(gone.stdout)}-abcd"  # a writer killed mid-write (SIGKILL, OOM)
    stale.mkdir()
    w = StoreWriter(tmp_path, 4, 8, "enc")
    assert not stale.exists()
    w.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_atomic_dir_is_whole_or_absent(tmp_path):
    from lcm.io import atomic_dir, write_json

    target = tmp_path / "out"
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            write_json(tmp / "a.json", [1])
            raise ValueError
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        write_json(tmp / "a.json", [1])
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
    assert json.loads((target / "a.json").read_text()) == [1] and (target / "sub" / "b.txt").read_text() == "b"
    with atomic_dir(target, complete="a.json") as tmp:  # a complete twin is already there: kept as it is
        write_json(tmp / "a.json", [2])
    assert json.loads((target / "a.json").read_text()) == [1]
    with pytest.raises(OSError):  # something else is there: a real failure
        with atomic_dir(target, complete="manifest.json") as tmp:
            write_json(tmp / "a.json", [3])
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and json.loads((target / "a.json").read_text()) == [1]
