"""The sentence autoencoder: trained by `lcm fit`, then the encoder of a concept space and its exact decoder."""
import shutil

import numpy as np
import pytest
import torch
from conftest import CONFIGS, fit_in, run_lcm

from lcm.autoencoder import SentenceAutoencoderLM
from lcm.decoding import GenerativeDecoder
from lcm.encoders import AutoencoderEncoder
from lcm.errors import LCMError

TINY_AE = ["--data.init_args.source.init_args.n", "80", "--data.init_args.batch_size", "16",
           "--data.init_args.show_progress", "false", "--model.init_args.encoder.d_model", "32",
           "--model.init_args.encoder.n_layer", "1", "--model.init_args.encoder.dim", "24",
           "--model.init_args.encoder.n_slots", "4",
           "--model.init_args.arch.d_model", "32", "--model.init_args.arch.n_layer", "1", "--model.init_args.vocab_size", "400",
           "--model.init_args.semantic_weight", "0.5", "--model.init_args.split_digits", "true",
           "--model.init_args.number_resample", "0.5",
           "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"]
TEXTS = ["Tom has 12 apples.", "He gives 5 to Ann.", "So he has 7 apples left."]


@pytest.fixture(scope="module")
def ae_ckpt(tmp_path_factory):
    work = tmp_path_factory.mktemp("autoencoder")
    run = fit_in(work, "autoencoder_quickstart.yaml", TINY_AE)
    assert "train/semantic" in (run / "metrics.csv").read_text().splitlines()[0]  # the semantic term ran
    return run / "checkpoints" / "best.ckpt"


def test_encoder_and_decoder_sides_are_the_same_space(ae_ckpt):
    """Save/load symmetry: the encoding side loaded alone (`AutoencoderEncoder`, weights-only) gives the vectors the
    trained module gives, under the same id; the module reads them back as the concept space's decoder."""
    model = SentenceAutoencoderLM.from_checkpoint(ae_ckpt)
    assert model.hparams["split_digits"] and len(model.tokenizer.encode(["1234"])[0]) == 4  # the CLI's value arrived
    encoder = AutoencoderEncoder(str(ae_ckpt))
    ours, plugged = model.encode_texts(TEXTS), encoder.encode(TEXTS)
    assert ours.shape == plugged.shape == (3, 24) and encoder.dim == 24
    assert np.allclose(ours, plugged, atol=1e-6) and np.allclose(np.linalg.norm(plugged, axis=1), 1, atol=1e-5)
    assert encoder.id == model.meta["encoder_id"] and encoder.id.startswith("autoencoder-")
    empty = encoder.encode(["", "Tom has 12 apples."])  # a decoder can write "": its concept must stay finite
    assert np.isfinite(empty).all() and np.allclose(empty, model.encode_texts(["", "Tom has 12 apples."]), atol=1e-6)
    assert encoder.config() == {"class_path": "lcm.encoders.autoencoder.AutoencoderEncoder",
                                "init_args": {"checkpoint": str(ae_ckpt), "device": "cpu"}}
    decoded = GenerativeDecoder(model, encoder).decode(plugged)  # no bank: the decoder writes the sentence
    assert len(decoded) == 3 and all(d.source == "generated" and -1 <= d.score <= 1 for d in decoded)
    from lcm.encoders import SentenceTransformerEncoder

    with pytest.raises(LCMError, match="trained on encoder"):  # another space's vectors are refused
        GenerativeDecoder(model, SentenceTransformerEncoder())


@pytest.mark.parametrize("pool, size", [("attention", "3"), ("slots", "4")])
def test_pool_arrives_from_the_config_and_ignores_padding(tmp_path, pool, size):
    """`encoder.pool` written on the command line (with its size: n_queries / n_slots) reaches the trained net and the
    plugged-in encoder, and a sentence's vector does not depend on the padding of the batch it is encoded in (the
    queries never attend to it; a slot past the sentence's end is zero)."""
    from lcm.encoders.autoencoder import SentenceEncoderConfig, SentenceEncoderNet

    size_arg = {"attention": "n_queries", "slots": "n_slots"}[pool]
    run = fit_in(tmp_path, "autoencoder_quickstart.yaml",
                 [*TINY_AE, "--trainer.max_epochs", "1", "--model.init_args.encoder.pool", pool,
                  f"--model.init_args.encoder.{size_arg}", size])
    ckpt = run / "checkpoints" / "last.ckpt"
    model, encoder = SentenceAutoencoderLM.from_checkpoint(ckpt), AutoencoderEncoder(str(ckpt))
    net = encoder._loaded[0]
    assert net.cfg.pool == model.encoder.cfg.pool == pool
    if pool == "attention":
        assert net.queries.shape == (3, 32) and net.out.in_features == 3 * 32
    else:  # 4 slots of 24 / 4 = 6 dimensions each
        assert net.cfg.n_slots == 4 and (net.out.in_features, net.out.out_features) == (32, 6)
    alone = [encoder.encode([t])[0] for t in TEXTS]
    assert np.allclose(encoder.encode(TEXTS), alone, atol=1e-5)  # padded beside longer sentences: the same vectors
    assert np.allclose(model.encode_texts(TEXTS), alone, atol=1e-5)
    with pytest.raises(ValueError, match="pool must be"):
        SentenceEncoderConfig(pool="max")
    with pytest.raises(ValueError, match="dim divisible by n_slots"):
        SentenceEncoderConfig(dim=24, pool="slots", n_slots=5)
    mean = SentenceEncoderNet(SentenceEncoderConfig(dim=8, d_model=16, n_head=2, n_layer=1), vocab_size=50)
    assert not hasattr(mean, "queries") and mean.out.in_features == 16  # the default: old checkpoints load as they were


def test_slots_keep_word_order():
    """The slots code tells apart two sentences with the same tokens in another order, and a sentence shorter than
    n_slots leaves the trailing slots at zero (before the norm), so the code is the sentence's alone."""
    from lcm.encoders.autoencoder import SentenceEncoderConfig, SentenceEncoderNet

    torch.manual_seed(0)
    net = SentenceEncoderNet(SentenceEncoderConfig(dim=16, d_model=16, n_head=2, n_layer=1, max_tokens=8,
                                                   pool="slots", n_slots=4, dropout=0.0), vocab_size=20, pad=0).eval()
    with torch.no_grad():
        z = net(torch.tensor([[3, 4, 5, 0, 0], [5, 4, 3, 0, 0]]))  # (2, 16)
    assert z.shape == (2, 16) and float((z[0] - z[1]).abs().max()) > 1e-3
    assert torch.all(z[:, 12:] == 0) and torch.all(z[:, :12].abs().sum(1) > 0)  # slot 4 is past both sentences


def test_the_space_id_changes_with_the_encoding_weights_only(ae_ckpt, tmp_path):
    ckpt = torch.load(ae_ckpt, weights_only=False)
    base = AutoencoderEncoder(str(ae_ckpt)).id
    for prefix, changes in (("encoder.", True), ("net.", False)):  # the encoding side / the decoding side
        edited = {**ckpt, "state_dict": dict(ckpt["state_dict"])}
        name = next(k for k in edited["state_dict"] if k.startswith(prefix) and k.endswith("weight"))
        edited["state_dict"][name] = edited["state_dict"][name] + 0.01
        path = tmp_path / f"{prefix}ckpt"
        torch.save(edited, path)
        assert (AutoencoderEncoder(str(path)).id != base) == changes, prefix


def test_token_dropout_and_the_semantic_term(ae_ckpt):
    model = SentenceAutoencoderLM.from_checkpoint(ae_ckpt)
    model.hparams.token_dropout = 0.5
    clean = model.encoder_tokens(TEXTS)  # eval mode: every token
    model.train()
    np.random.seed(0)
    dropped = model.encoder_tokens(TEXTS)
    assert ((dropped != model.tokenizer.pad_id).sum(1) < (clean != model.tokenizer.pad_id).sum(1)).all()
    z = torch.nn.functional.normalize(torch.randn(4, 24), dim=-1)
    assert float(SentenceAutoencoderLM.semantic_loss(z, 3 * z)) == pytest.approx(0, abs=1e-6)  # same cosines
    assert float(SentenceAutoencoderLM.semantic_loss(z, torch.randn(4, 24))) > 0


def test_number_resampling_rewrites_digits_only_and_reaches_training(ae_ckpt):
    import random
    import re

    from lcm.autoencoder import resample_numbers

    text = "Emma paid $420,000 x 7/100 = $29,400 for 05 rooms and 0 cars."
    out = resample_numbers(text, random.Random(0))
    assert out != text and re.sub(r"\d", "#", out) == re.sub(r"\d", "#", text)  # same frame, same digit counts
    for seed in range(200):  # no new leading zero; a written leading zero ("05") may stay one
        assert re.fullmatch(r"[1-9]\d", resample_numbers("42", random.Random(seed)))
    assert resample_numbers("٤٢ and 7", random.Random(0)).startswith("٤٢ and ")  # ASCII digits only
    assert resample_numbers("No numbers here.", random.Random(0)) == "No numbers here."
    model = SentenceAutoencoderLM.from_checkpoint(ae_ckpt)
    assert model.hparams["number_resample"] == 0.5  # the CLI's value arrived
    batch = {"text": [text] * 40, "emb": torch.zeros(40, 384)}
    random.seed(0)
    changed = [t != text for t in model.resampled(batch)["text"]]
    assert 10 < sum(changed) < 30  # about half of the sentences
    model.hparams.number_resample = 0.0
    assert model.resampled(batch) is batch
    with pytest.raises(LCMError, match="number_resample"):
        SentenceAutoencoderLM(number_resample=1.5)
    model.hparams.split_digits = False  # a resume that changes split_digits would mistokenize: refused
    with pytest.raises(LCMError, match="split_digits"):
        model.on_load_checkpoint(torch.load(ae_ckpt, weights_only=False))


def test_wrong_checkpoints_and_dimensions_are_one_error_line(ae_ckpt, trained_run, tmp_path, capsys):
    with pytest.raises(LCMError, match="not a sentence-autoencoder checkpoint"):
        AutoencoderEncoder(str(trained_run / "checkpoints" / "best.ckpt")).dim
    with pytest.raises(LCMError, match="no autoencoder checkpoint"):
        AutoencoderEncoder(str(tmp_path / "missing.ckpt")).id
    shutil.copy(ae_ckpt, tmp_path / "ae.ckpt")  # a concept config in the autoencoder's space must say its dimension
    code, err = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), "--data.encoder.class_path",
                         "lcm.encoders.AutoencoderEncoder", "--data.encoder.init_args.checkpoint", str(tmp_path / "ae.ckpt"),
                         "--data.source.init_args.n", "40", "--data.show_progress", "false",
                         "--trainer.fast_dev_run", "1", "--data.cache_dir", str(tmp_path / "cache")], capsys)
    assert code == 2 and "has dimension 24 but model.arch.embed_dim is 384" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def ae_space_run(ae_ckpt, tmp_path_factory):
    """A tiny Base-LCM trained in the autoencoder's space (quickstart config, 40 problems). Returns its run folder."""
    return fit_in(tmp_path_factory.mktemp("ae_space"), "quickstart.yaml",
                  ["--data.encoder.class_path", "lcm.encoders.AutoencoderEncoder",
                   "--data.encoder.init_args.checkpoint", str(ae_ckpt), "--model.arch.embed_dim", "24",
                   "--data.source.init_args.n", "40", "--data.show_progress", "false", "--model.arch.d_model", "32",
                   "--model.arch.n_layer", "1", "--model.arch.n_head", "2", "--trainer.max_epochs", "1",
                   "--trainer.enable_progress_bar", "false"])


def test_concept_model_trains_in_the_autoencoder_space_and_reads_out_with_its_decoder(ae_ckpt, ae_space_run):
    from lcm.decoding import HybridDecoder
    from lcm.generate import ConceptGenerator

    ckpt = ae_space_run / "checkpoints" / "last.ckpt"
    decoder = GenerativeDecoder(SentenceAutoencoderLM.from_checkpoint(ae_ckpt), AutoencoderEncoder(str(ae_ckpt)))
    gen = ConceptGenerator.from_checkpoint(ckpt, decoder=decoder)
    out = gen.generate(TEXTS[0], max_steps=2, stop_on_repeat=False, eot_threshold=1.01)
    assert isinstance(gen.encoder, AutoencoderEncoder) and len(out.steps) == 2
    assert all(s.source == "generated" for s in out.steps if not s.is_plan)
    # the checkpoint path works as well (`lcm generate --decoder AE.ckpt`): alone with k=0, else hybrid with the bank
    alone = ConceptGenerator.from_checkpoint(ckpt, decoder=str(ae_ckpt), k=0)
    assert isinstance(alone.decoder, GenerativeDecoder) and isinstance(alone.decoder.model, SentenceAutoencoderLM)
    again = alone.generate(TEXTS[0], max_steps=2, stop_on_repeat=False, eot_threshold=1.01)
    assert [s.text for s in again.steps] == [s.text for s in out.steps]
    assert isinstance(ConceptGenerator.from_checkpoint(ckpt, decoder=str(ae_ckpt), k=2).decoder, HybridDecoder)


def test_content_trace_scores_each_point_of_the_pipe(ae_ckpt, ae_space_run, trained_run, tmp_path, capsys):
    import json

    from lcm.eval.content_trace import numbers, provenance, step_scores

    assert numbers("$1,200 or 1200.0, 0.50 and 12") == ["1200", "1200", "0.5", "12"]  # by value
    assert provenance(["So 12 + 3 = 15.", "#### 99"], "Tom has 12 apples. He buys 3. 12 + 3 = 15") == (3, 4)
    # 12 and 5 are in the context (to carry), 7 is computed; the text carries 12 once
    got = step_scores(["a  b", "12 - 5 = 7, so 12 left"], ["a b", "12 - 4 = 8"], ["", "Tom has 12 apples and gives 5."])
    assert got == {"exact": [1.0, 0.0], "numbers": [1.0, 0.0, 0.0, 0.0], "carried": [1.0, 0.0, 0.0], "new": [0.0]}
    code, err = run_lcm(["eval", "trace", "--config", str(CONFIGS / "quickstart.yaml"), "--problems", "2",
                         "--max-steps", "3", "--system", "MiniLM", str(trained_run / "checkpoints" / "best.ckpt"),
                         "--system", "autoencoder", str(ae_space_run / "checkpoints" / "last.ckpt"), str(ae_ckpt),
                         "--out", str(tmp_path), "--overrides", "--data.source.init_args.n", "40"], capsys)
    assert code == 0, err  # n 40: held out by both runs (trained on 80 and on 40 problems; the split is by problem)
    report = json.loads((tmp_path / "trace.json").read_text())
    minilm, ae = report["systems"]["MiniLM"], report["systems"]["autoencoder"]
    assert minilm["read_out"] == "retrieval from the bank" and ae["read_out"].startswith("decoder ")
    assert ae["encoder_id"].startswith("autoencoder-") and minilm["steps"] == ae["steps"] == report["steps"] > 0
    for s in (minilm, ae):
        for point in ("round_trip", "teacher_forced"):
            assert 0 <= s[point]["exact"] <= 1
        assert 0 <= s["generation"]["accuracy"] <= 1 and 0 <= s["generation"]["step_exact"] <= 1
    assert "| autoencoder | decoder" in (tmp_path / "trace.md").read_text()
    code, err = run_lcm(["eval", "trace", "--config", str(CONFIGS / "quickstart.yaml"), "--system", "x",
                         str(tmp_path / "none.ckpt")], capsys)
    assert code == 2 and "no checkpoint at" in err and len(err.strip().splitlines()) == 1


def test_teacher_forced_rows_predict_each_step_from_the_steps_before_it(trained_run):
    import torch

    from lcm.eval.compare import test_documents
    from lcm.eval.content_trace import step_predictions
    from lcm.generate import ConceptGenerator

    gen = ConceptGenerator.from_checkpoint(trained_run / "checkpoints" / "best.ckpt")
    doc = test_documents(str(CONFIGS / "quickstart.yaml"), ["--data.source.init_args.n", "80"], 1)[0]
    preds, steps, skipped = step_predictions(gen, doc, torch.Generator().manual_seed(0))
    emb = torch.as_tensor(gen.encoder.encode(list(doc.prompt) + doc.steps), dtype=torch.float32)  # (N, D)
    p = len(doc.prompt)
    assert skipped == 0 and preds.shape == steps.shape == (len(doc.steps), emb.shape[1])
    for j in range(len(doc.steps)):  # one sequence at a time: the prompt and the j steps before step j
        one = gen.model.next_concept(emb[None, :p + j], torch.tensor([p + j])).detach().numpy()[0]
        assert np.allclose(preds[j], one, atol=1e-5) and np.allclose(steps[j], emb[p + j].numpy())
    # a context the model cannot read is skipped and counted: a prompt of max_seq_len concepts leaves one step
    from lcm.train.documents import Document

    n = gen.model.arch.max_seq_len
    long_doc = Document([f"Tom has {i} apples." for i in range(n)], [["He eats one.", "#### 1"]], "1")
    preds, steps, skipped = step_predictions(gen, long_doc, torch.Generator().manual_seed(0))
    assert len(preds) == len(steps) == 1 and skipped == 1
    longer = Document(long_doc.prompt + ["One more."], long_doc.paragraphs, "1")
    assert len(step_predictions(gen, longer, torch.Generator().manual_seed(0))[0]) == 0


def test_shipped_config_fast_dev_run(tmp_path, capsys, monkeypatch):
    work = tmp_path
    monkeypatch.chdir(tmp_path)  # fast_dev_run has no run folder: Lightning writes its checkpoint under the cwd
    code, err = run_lcm(["fit", "-c", str(CONFIGS / "autoencoder_quickstart.yaml"), "--trainer.fast_dev_run", "1",
                         "--data.init_args.source.init_args.n", "40", "--data.init_args.show_progress", "false",
                         "--data.init_args.cache_dir", str(work / "cache"), "--trainer.logger.init_args.save_dir",
                         str(work / "runs")], capsys)
    assert code == 0, err


def test_roundtrip_reads_an_autoencoder_with_its_own_bank_space_and_a_noise_curve(ae_ckpt, tmp_path, capsys):
    """`lcm eval roundtrip --decoder AE.ckpt`: the autoencoder's own encoder, the run's bank re-encoded into its
    space, and the greedy decoder's robustness to embedding noise (sigma 0 equals the clean greedy row)."""
    import json

    from lcm.eval.roundtrip import main

    text = tmp_path / "prose.txt"
    text.write_text("Tom has 12 apples. He gives 5 to Ann.\n\nSo he has 7 apples left.\n")
    out = tmp_path / "rt.json"
    main(["--decoder", str(ae_ckpt), "--text", str(text), "--beam", "1", "--noise", "0", "0.3", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["sentences"] == 3 and set(report["noise_curve"]) == {"0", "0.3"}
    clean, zero = report["results"]["decoder (greedy)"], report["noise_curve"]["0"]
    assert zero["exact_match"] == clean["exact_match"] and zero["token_f1"] == pytest.approx(clean["token_f1"])
    from lcm.eval.roundtrip import bank_in_space

    encoder = AutoencoderEncoder(str(ae_ckpt))
    bank = bank_in_space(ae_ckpt.parent / "bank", encoder)  # stored in MiniLM's space (the teacher): re-encoded
    assert bank.encoder_id == encoder.id and np.allclose(bank.vectors[:5], encoder.encode(bank.texts[:5]), atol=1e-6)
    assert "sigma 0.3" in capsys.readouterr().out


def test_slot_decoder_reads_each_slot_where_it_writes_its_token():
    """With n_slots the decoder adds slot j at the input position that predicts token j: with the prefix vectors
    silenced (they read the whole embedding), changing slot 1 changes the logits at positions >= 1 and not at 0,
    the KV cache decodes exactly as a full re-run (greedy and beam),
    and slot counts that do not divide the dimension, or token dropout (which would shift tokens out of their slots),
    are refused."""
    from lcm.decoder import PrefixDecoder, beam_decode, greedy_decode
    from lcm.model import LCMConfig

    torch.manual_seed(0)
    cfg = LCMConfig(d_model=32, n_layer=2, n_head=4, max_seq_len=40, embed_dim=24, dropout=0.0)
    net = PrefixDecoder(cfg, vocab_size=50, n_prefix=2, n_slots=6).eval()
    emb = torch.nn.functional.normalize(torch.randn(3, 24), dim=-1)
    tokens = torch.randint(3, 50, (3, 9))
    other = emb.clone()
    other[:, 4:8] += 1.0  # slot 1 (dimensions 4-7)
    with torch.no_grad():
        net.prefix.weight.zero_()
        a, b = net(emb, tokens), net(other, tokens)  # (3, 9, 50)
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-6) and not torch.allclose(a[:, 1], b[:, 1], atol=1e-3)
    assert greedy_decode(net, emb, 1, 2, 20) == greedy_decode(net, emb, 1, 2, 20, use_cache=False)
    assert beam_decode(net, emb, 1, 2, 20, 3) == beam_decode(net, emb, 1, 2, 20, 3, use_cache=False)
    with pytest.raises(LCMError, match="divide the embedding dimension"):
        PrefixDecoder(cfg, vocab_size=50, n_prefix=2, n_slots=5)
    from lcm.encoders.autoencoder import SentenceEncoderConfig

    with pytest.raises(LCMError, match="token_dropout shifts"):
        SentenceAutoencoderLM(encoder=SentenceEncoderConfig(dim=24, pool="slots", n_slots=6), token_dropout=0.1)
