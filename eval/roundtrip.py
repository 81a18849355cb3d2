"""Round-trip evaluation: sentence -> frozen encoder -> decoder -> text, for retrieval, decoder and hybrid.

Sentences are either the held-out step sentences of the decoder's own data config (steps of validation
and test documents that never occur in training, hence never in the bank), or any UTF-8 text file you
give (`--text`), split into sentences like prose data. Reports exact match, BLEU (sacrebleu), token F1
and the cosine of the re-encoded output to the input embedding, plus time per sentence.

    python -m lcm.eval.roundtrip --decoder runs/decoder_quickstart/version_0/checkpoints/best.ckpt
    python -m lcm.eval.roundtrip --decoder ... --text /usr/share/common-licenses/GPL-3
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from lcm.errors import LCMError


def text_file_sentences(path: Path, max_chars: int) -> list[str]:
    """Unique sentences of a UTF-8 text file, in order (pysbd, then re-split at `max_chars`)."""
    from lcm.text import split_and_cap
    from lcm.train.corpus import check_utf8

    if not path.is_file():
        raise LCMError(f"text file {path} does not exist")
    check_utf8(path)
    text = path.read_text(encoding="utf-8")
    sentences = split_and_cap(text, max_chars)
    if not sentences:
        raise LCMError(f"{path} holds no sentences (empty or blank)")
    return list(dict.fromkeys(sentences))


def heldout_sentences(config: Path) -> list[str]:
    """Held-out step sentences (val + test documents, never in training) of a decoder data config."""
    from lcm.train import SentenceDataModule
    from lcm.train.cli import make_cli

    if not config.is_file():
        raise LCMError(f"config {config} does not exist; pass --config (the decoder's training config) or --text")
    try:
        cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise LCMError(f"cannot read config {config} ({type(e).__name__})") from e
    data = (cfg or {}).get("data") if isinstance(cfg, dict) else None
    if not isinstance(data, dict) or "SentenceDataModule" not in str(data.get("class_path")):
        raise LCMError(f"{config} is not a sentence-decoder config (data must be lcm.train.SentenceDataModule)")
    data.setdefault("init_args", {})["show_progress"] = False
    # only what builds the data: a run's saved fit config also holds ckpt_path, weights_only, ...
    dm = make_cli({k: cfg[k] for k in ("model", "data") if k in cfg}, run=False).datamodule
    if not isinstance(dm, SentenceDataModule):
        raise LCMError(f"{config} is not a sentence-decoder config (data must be lcm.train.SentenceDataModule)")
    texts = dm.decoder_sentences("val", steps_only=True)[0] + dm.decoder_sentences("test", steps_only=True)[0]
    return list(dict.fromkeys(texts))


def evaluate(sentences: list[str], systems: dict, emb: np.ndarray) -> tuple[dict[str, dict], list[dict]]:
    """Decode the sentences' embeddings `emb` (N, D) with each system and score. systems: {name: ConceptDecoder}.
    Returns the scores per
    system and, per sentence, what each system gave back (text, source, cosine of its embedding to the
    sentence's)."""
    from lcm.decoding import cosine_rows
    from lcm.eval.text_metrics import roundtrip_scores

    results, samples = {}, [{"sentence": s, "outputs": {}} for s in sentences]
    for name, system in systems.items():
        start = time.perf_counter()
        out = system.decode(emb)
        seconds = time.perf_counter() - start
        decoded = np.stack([d.embedding for d in out])  # (N, D)
        scores = roundtrip_scores([d.text for d in out], sentences, decoded, emb)
        scores["generated_share"] = float(np.mean([d.source == "generated" for d in out]))
        scores["ms_per_sentence"] = 1000 * seconds / len(sentences)
        results[name] = scores
        cosines = cosine_rows(decoded, emb)  # (N,)
        for sample, d, cos in zip(samples, out, cosines):
            sample["outputs"][name] = {"text": d.text, "source": d.source, "cosine": float(cos)}
    return results, samples


def decoder_and_encoder(decoder_ckpt: Path):
    """(the decoding model, the encoder whose vectors it reads) of a sentence-decoder checkpoint (the frozen encoder
    it was trained on) or of a sentence-autoencoder checkpoint (its own encoding side)."""
    from lcm.autoencoder import SentenceAutoencoderLM, load_sentence_decoder
    from lcm.encoders.base import encoder_from_config

    model = load_sentence_decoder(decoder_ckpt)
    if isinstance(model, SentenceAutoencoderLM):
        from lcm.encoders import AutoencoderEncoder

        return model, AutoencoderEncoder(str(decoder_ckpt))
    try:
        return model, encoder_from_config(model.meta["encoder"])
    except (KeyError, ImportError, AttributeError, TypeError) as e:
        raise LCMError(f"cannot rebuild the encoder recorded in {decoder_ckpt} ({type(e).__name__}: {e})") from e


def bank_in_space(bank_dir: Path, encoder):
    """The run's sentence bank in `encoder`'s space: as stored when it is that space, else its sentences encoded
    again (an autoencoder's run stores its bank in the data encoder's space, which only taught it)."""
    from lcm.retrieval import SentenceBank

    bank = SentenceBank.load(bank_dir)
    if bank.encoder_id == encoder.id:
        return bank
    return SentenceBank(bank.texts, encoder.encode(bank.texts), encoder.id)


def build_systems(decoder_ckpt: Path, bank_dir: Path | None, beam: int, k: int, threshold: float):
    from lcm.decoding import GenerativeDecoder, HybridDecoder, RetrievalDecoder

    model, encoder = decoder_and_encoder(decoder_ckpt)
    bank = bank_in_space(bank_dir or decoder_ckpt.parent / "bank", encoder)
    systems = {"retrieval": RetrievalDecoder(bank), "decoder (greedy)": GenerativeDecoder(model, encoder)}
    if beam > 1:
        systems[f"decoder (beam {beam})"] = GenerativeDecoder(model, encoder, beam=beam)
    systems[f"hybrid (k={k}, threshold {threshold:g}, beam {beam})"] = HybridDecoder(bank, model, encoder, k=k,
                                                                                    threshold=threshold, beam=beam)
    return systems, encoder, bank


def noise_curve(sentences: list[str], emb: np.ndarray, decoder, sigmas: list[float], seed: int = 0) -> dict[str, dict]:
    """Robustness of a decoder to imperfect concepts: each embedding plus Gaussian noise of std sigma x that
    dimension's std over these sentences' embeddings (seeded), decoded and scored against the sentence.
    {str(sigma): scores}."""
    from lcm.eval.text_metrics import roundtrip_scores

    scale = emb.std(axis=0, keepdims=True)  # (1, D) per-dimension scale of the space
    rng = np.random.default_rng(seed)
    out = {}
    for sigma in sigmas:
        noisy = (emb + sigma * scale * rng.standard_normal(emb.shape)).astype(np.float32)
        decoded = decoder.decode(noisy)
        out[f"{sigma:g}"] = roundtrip_scores([d.text for d in decoded], sentences,
                                             np.stack([d.embedding for d in decoded]), emb)
    return out


def format_table(results: dict[str, dict]) -> str:
    cols = ("exact_match", "bleu", "token_f1", "cosine", "generated_share", "ms_per_sentence")
    lines = ["| system | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.3f}" if c != "bleu" and c != "ms_per_sentence"
                                                 else f"{r[c]:.1f}" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decoder", type=Path, required=True, help="sentence-decoder checkpoint (lcm fit -c decoder_*.yaml)")
    p.add_argument("--bank", type=Path, default=None, help="retrieval bank folder (default: <checkpoint folder>/bank)")
    p.add_argument("--text", type=Path, default=None, help="evaluate on the sentences of this UTF-8 text file")
    p.add_argument("--config", type=Path, default=None,
                   help="decoder data config for held-out sentences (default: the run's config.yaml)")
    p.add_argument("--limit", type=int, default=500, help="evaluate the first N sentences")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--max-chars", type=int, default=256)
    p.add_argument("--out", type=Path, default=None, help="JSON results (default: runs/roundtrip/<name>.json)")
    p.add_argument("--noise", type=float, nargs="*", default=None, metavar="SIGMA",
                   help="also a robustness curve of the greedy decoder: Gaussian noise of SIGMA x each dimension's "
                        "std added to the embeddings (e.g. --noise 0 0.05 0.1 0.2 0.3)"),
    ns = p.parse_args(argv)
    try:
        if ns.text is not None:
            sentences, name = text_file_sentences(ns.text, ns.max_chars), ns.text.name
        else:
            sentences, name = heldout_sentences(ns.config or ns.decoder.parent.parent / "config.yaml"), "heldout"
        sentences = sentences[: ns.limit]
        systems, encoder, bank = build_systems(ns.decoder, ns.bank, ns.beam, ns.k, ns.threshold)
        in_bank = set(bank.texts)
        emb = encoder.encode(sentences)  # (N, D) what each decoder must invert
        results, samples = evaluate(sentences, systems, emb)
        curve = noise_curve(sentences, emb, systems["decoder (greedy)"], ns.noise) if ns.noise else None
    except LCMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    from lcm.io import write_json

    report = {"sentences": len(sentences), "in_bank_share": float(np.mean([s in in_bank for s in sentences])),
              "source": str(ns.text) if ns.text else "heldout", "decoder": str(ns.decoder), "bank_size": len(bank),
              "results": results, "samples": samples}  # per sentence: every system's output
    if curve is not None:
        report["noise_curve"] = curve
    out = ns.out or Path("runs/roundtrip") / f"{name}.json"
    write_json(out, report)
    print(f"{len(sentences)} sentences from {report['source']} ({report['in_bank_share']:.1%} of them in the "
          f"{len(bank):,}-sentence bank)")
    print(format_table(results))
    if curve is not None:
        print("greedy decoder under embedding noise (sigma x per-dimension std):")
        print(format_table({f"sigma {k}": {**v, "generated_share": 1.0, "ms_per_sentence": float("nan")}
                            for k, v in curve.items()}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
