"""Sentence decoder: tokenizer, `lcm fit` of a tiny real decoder, save/load symmetry, greedy/beam search,
hybrid read-out, round-trip eval script, bad inputs."""
import json

import lightning as L
import numpy as np
import pytest
import torch
from conftest import fit_in, run_lcm

from lcm.decoder import SentenceDecoderLM, beam_decode, greedy_decode, unit
from lcm.decoding import GenerativeDecoder, HybridDecoder, RetrievalDecoder, SonarDecoder
from lcm.errors import LCMError
from lcm.generate import ConceptGenerator
from lcm.retrieval import SentenceBank
from lcm.tokenizer import SentenceTokenizer

TINY_DECODER = [
    "--data.init_args.source.init_args.n", "80", "--data.init_args.batch_size", "16",
    "--data.init_args.show_progress", "false", "--model.init_args.arch.d_model", "64",
    "--model.init_args.arch.n_layer", "2", "--model.init_args.arch.n_head", "2", "--model.init_args.vocab_size", "512",
    "--model.init_args.optim.warmup_steps", "5", "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false",
]
SENTENCES = ["Emma bought 3 packs of 12 forks for $4.50 each.", "So 36 - 12 = 24 forks are left.", "#### 24"]


@pytest.fixture(scope="session")
def decoder_run(tmp_path_factory):
    return fit_in(tmp_path_factory.mktemp("decoder"), "decoder_quickstart.yaml", TINY_DECODER)


@pytest.fixture(scope="session")
def decoder(decoder_run):
    return SentenceDecoderLM.from_checkpoint(decoder_run / "checkpoints" / "last.ckpt")


def test_tokenizer_round_trip_and_serialization():
    tok = SentenceTokenizer.train(SENTENCES * 3, vocab_size=300)
    texts = SENTENCES + ["Ünïcödé — naïve café 😀 never seen in training", "  two  spaces ", ""]
    ids = tok.encode(texts)
    assert tok.decode(ids) == texts  # byte-level: any text round-trips exactly, case and spaces kept
    assert all(i not in (tok.pad_id, tok.bos_id, tok.eos_id) for x in ids for i in x)
    again = SentenceTokenizer.from_str(tok.to_str())
    assert again.encode(texts) == ids and again.vocab_size == tok.vocab_size
    with pytest.raises(LCMError, match="corrupted"):
        SentenceTokenizer.from_str("{not json")
    with pytest.raises(LCMError):
        SentenceTokenizer.train([])


def test_split_digits_spells_numbers_digit_by_digit_and_still_round_trips():
    corpus = [f"Tom has {n} apples and {n * 7} pears." for n in range(100, 400)] * 2
    merged, split = SentenceTokenizer.train(corpus, vocab_size=400), SentenceTokenizer.train(corpus, 400, split_digits=True)
    unseen = "A farm sold 98765 eggs for $4321.05 today."
    ids = split.encode([unseen])[0]
    assert [split.decode([[i]])[0] for i in ids if split.decode([[i]])[0].strip().isdigit()] == list("98765432105")
    assert any(len(merged.decode([[i]])[0].strip()) > 1 and merged.decode([[i]])[0].strip().isdigit()
               for i in merged.encode(["Tom has 150 apples."])[0])  # without it BPE merges digits
    texts = [unseen, "Ünïcödé 12 — 3.5 😀", "  7  spaces 0 ", ""]
    assert split.decode(split.encode(texts)) == texts
    assert SentenceTokenizer.from_str(split.to_str()).encode(texts) == split.encode(texts)  # kept in checkpoints


def test_decoder_fit_logs_heldout_metrics_and_writes_bank(decoder_run):
    metrics = (decoder_run / "metrics.csv").read_text()
    for key in ("val/loss", "val/token_acc", "val/exact_match"):
        assert key in metrics
    ckpt = torch.load(decoder_run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["lcm"]["kind"] == "decoder" and ckpt["lcm"]["encoder_id"] == "st:all-MiniLM-L6-v2"
    assert SentenceTokenizer.from_str(ckpt["lcm"]["tokenizer"]).vocab_size <= 512
    bank = SentenceBank.load(decoder_run / "checkpoints" / "bank", encoder_id="st:all-MiniLM-L6-v2", dim=384)
    assert "End of text." in bank.texts


def test_save_load_symmetry(decoder, tmp_path, encoder):
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.strategy.connect(decoder)
    trainer.save_checkpoint(tmp_path / "again.ckpt")
    again = SentenceDecoderLM.from_checkpoint(tmp_path / "again.ckpt")
    assert again.tokenizer.to_str() == decoder.tokenizer.to_str() and again.meta == decoder.meta
    for k, v in decoder.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    emb = encoder.encode(SENTENCES)
    assert again.decode_texts(emb) == decoder.decode_texts(emb)
    assert again.decode_texts(emb, beam=3) == decoder.decode_texts(emb, beam=3)


def test_kv_cache_exact_beam_of_one_is_greedy_beams_distinct(decoder, encoder):
    x = unit(torch.from_numpy(encoder.encode(SENTENCES)))
    tok = decoder.tokenizer
    greedy = greedy_decode(decoder.net, x, tok.bos_id, tok.eos_id, 20)
    assert greedy_decode(decoder.net, x, tok.bos_id, tok.eos_id, 20, use_cache=False) == greedy  # KV cache is exact
    assert (beam_decode(decoder.net, x, tok.bos_id, tok.eos_id, 20, beam=3, use_cache=False)
            == beam_decode(decoder.net, x, tok.bos_id, tok.eos_id, 20, beam=3))
    assert [h[0] for h in beam_decode(decoder.net, x, tok.bos_id, tok.eos_id, 20, beam=1)] == greedy
    hyps = decoder.decode_texts(encoder.encode(SENTENCES), beam=4, max_new_tokens=20)
    assert all(1 <= len(h) <= 4 and len(set(h)) == len(h) for h in hyps)  # distinct hypotheses per row


def test_decoder_bad_inputs(decoder, trained_run):
    with pytest.raises(LCMError, match="shape"):
        decoder.decode_texts(np.zeros((2, 100), np.float32))
    bad = np.zeros((1, 384), np.float32)
    bad[0, 3] = np.nan
    with pytest.raises(LCMError, match="NaN"):
        decoder.decode_texts(bad)
    with pytest.raises(LCMError, match="not a sentence-decoder checkpoint"):
        SentenceDecoderLM.from_checkpoint(trained_run / "checkpoints" / "last.ckpt")  # a concept model
    with pytest.raises(LCMError, match="vocab_size=100"):
        SentenceDecoderLM(vocab_size=100)  # byte-level BPE cannot be that small


def test_decoder_checkpoint_in_the_wrong_place(decoder_run, trained_run, encoder, capsys):
    code, err = run_lcm(["generate", "--ckpt", str(decoder_run / "checkpoints" / "last.ckpt"), "Tom has 3 eggs."], capsys)
    assert code == 2 and "sentence-decoder checkpoint" in err and "Traceback" not in err
    code, err = run_lcm(["generate", "--ckpt", str(trained_run / "checkpoints" / "last.ckpt"), "--decoder",
                         str(decoder_run / "checkpoints" / "last.ckpt"), "--k", "-1", "Tom has 3 eggs."], capsys)
    assert code == 2 and "k >= 1" in err and len(err.strip().splitlines()) == 1


def test_k_zero_reads_out_with_the_decoder_alone(decoder_run, trained_run, capsys):
    gen = ConceptGenerator.from_checkpoint(trained_run / "checkpoints" / "last.ckpt",
                                           decoder=str(decoder_run / "checkpoints" / "last.ckpt"), k=0)
    assert isinstance(gen.decoder, GenerativeDecoder)
    out = gen.generate("Tom has 3 eggs. He buys 2 more.", max_steps=2, stop_on_repeat=False, eot_threshold=1.01)
    assert len(out.steps) == 2 and all(s.source == "generated" for s in out.steps)  # never a bank sentence
    code, err = run_lcm(["generate", "--ckpt", str(trained_run / "checkpoints" / "last.ckpt"), "--decoder",
                         str(decoder_run / "checkpoints" / "last.ckpt"), "--k", "0", "Tom has 3 eggs."], capsys)
    assert code == 0, err


def test_hybrid_keeps_the_closest_candidate(decoder, decoder_run, encoder):
    bank = SentenceBank.load(decoder_run / "checkpoints" / "bank")
    preds = encoder.encode(["Liam has 17 marbles and wins 5 more.", "He now has 17 + 5 = 22 marbles."])
    retrieved = RetrievalDecoder(bank).decode(preds)
    always_bank = HybridDecoder(bank, decoder, encoder, threshold=0.0).decode(preds)
    assert [d.text for d in always_bank] == [d.text for d in retrieved]
    compared = HybridDecoder(bank, decoder, encoder, k=3, threshold=1.01, beam=2).decode(preds)
    for h, r, q in zip(compared, retrieved, preds):
        assert h.score >= r.score - 1e-6  # the top-1 bank sentence is always a candidate
        emb = encoder.encode([h.text])[0]
        assert abs(float(emb @ q / np.linalg.norm(emb) / np.linalg.norm(q)) - h.score) < 1e-4  # round-trip cosine
    generated = GenerativeDecoder(decoder, encoder).decode(preds)
    assert all(d.source == "generated" for d in generated)


def test_decoder_checks_its_encoder(decoder, encoder):
    other = SentenceBank(["a b c."], np.ones((1, 384), np.float32), "st:some-other-encoder")
    with pytest.raises(LCMError, match="differs"):
        HybridDecoder(other, decoder, encoder)


def test_generate_with_hybrid_decoder(trained_run, decoder_run, capsys):
    ckpt, dec = trained_run / "checkpoints" / "last.ckpt", decoder_run / "checkpoints" / "last.ckpt"
    gen = ConceptGenerator.from_checkpoint(ckpt, decoder=dec, threshold=1.01, k=2)
    out = gen.generate("Tom has 12 apples. He gives 5 to Ann. How many apples does Tom have left?", max_steps=4,
                       stop_on_repeat=False, eot_threshold=1.01)
    assert out.steps and all(s.source in ("retrieved", "generated") for s in out.steps)
    code, _ = run_lcm(["generate", "--ckpt", str(ckpt), "--decoder", str(dec), "--threshold", "1.01", "--max-steps", "2",
                       "Kim has 3 boxes of 4 eggs. How many eggs?"])
    assert code == 0 and "[stop: " in capsys.readouterr().out


def test_roundtrip_script(decoder_run, tmp_path, capsys):
    from lcm.eval.roundtrip import main

    text = tmp_path / "prose.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. It was not amused.\n\nA third sentence here.\n")
    out = tmp_path / "rt.json"
    main(["--decoder", str(decoder_run / "checkpoints" / "last.ckpt"), "--text", str(text), "--beam", "2",
          "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["sentences"] == 3 and set(report["results"]) == {
        "retrieval", "decoder (greedy)", "decoder (beam 2)", "hybrid (k=4, threshold 0.95, beam 2)"}
    for r in report["results"].values():
        assert 0 <= r["exact_match"] <= 1 and 0 <= r["bleu"] <= 100 and -1 <= r["cosine"] <= 1
    assert report["results"]["retrieval"]["generated_share"] == 0
    first = report["samples"][0]  # per-sentence outputs are kept, not only the averages
    assert first["sentence"] == "The quick brown fox jumps over the lazy dog." and set(first["outputs"]) == set(
        report["results"]) and first["outputs"]["retrieval"]["source"] == "retrieved"
    mean_cos = np.mean([s["outputs"]["retrieval"]["cosine"] for s in report["samples"]])
    assert mean_cos == pytest.approx(report["results"]["retrieval"]["cosine"], abs=1e-5)
    assert "| retrieval |" in capsys.readouterr().out
    main(["--decoder", str(decoder_run / "checkpoints" / "last.ckpt"), "--limit", "20", "--out", str(out)])  # held-out
    report = json.loads(out.read_text())
    assert report["sentences"] == 20 and report["in_bank_share"] == 0  # held-out steps are never bank sentences


@pytest.mark.parametrize("content, message", [(b"", "no sentences"), (b"  \n\n \t\n", "no sentences"),
                                              (b"caf\xe9 au lait", "not valid UTF-8")])
def test_roundtrip_bad_text_file(decoder_run, tmp_path, capsys, content, message):
    from lcm.eval.roundtrip import main

    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(SystemExit) as e:
        main(["--decoder", str(decoder_run / "checkpoints" / "last.ckpt"), "--text", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_sonar_decoder_without_the_extra_is_one_clear_error():
    try:
        import sonar  # noqa: F401
        pytest.skip("sonar-space is installed")
    except ImportError:
        pass
    with pytest.raises(LCMError, match="lcm-trainer\\[sonar\\]"):
        SonarDecoder().decode(np.zeros((1, 1024), np.float32))
    with pytest.raises(LCMError, match="dimension 1024"):
        SonarDecoder().decode(np.zeros((1, 384), np.float32))


def test_the_decoder_exports_and_loads_from_a_folder(decoder_run, decoder, tmp_path, encoder):
    code, _ = run_lcm(["export", "--ckpt", str(decoder_run / "checkpoints" / "last.ckpt"), str(tmp_path / "dec")])
    assert code == 0 and (tmp_path / "dec" / "bank" / "manifest.json").is_file()
    again = SentenceDecoderLM.from_pretrained(tmp_path / "dec")
    emb = encoder.encode(SENTENCES)
    assert again.decode_texts(emb) == decoder.decode_texts(emb) and again.meta == decoder.meta
