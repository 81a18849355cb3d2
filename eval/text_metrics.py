"""Round-trip text metrics (the set vec2text reports): exact match, BLEU, token F1, re-encode cosine."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> list[str]:
    """Words, numbers and single punctuation marks; case kept (a decoder must get "Emma" right)."""
    return _TOKEN.findall(text)


def token_f1(pred: str, ref: str) -> float:
    """Harmonic mean of token precision and recall over the multiset of tokens (SQuAD-style, cased)."""
    p, r = tokens(pred), tokens(ref)
    if not p and not r:
        return 1.0
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def corpus_bleu(preds: list[str], refs: list[str]) -> float:
    """sacrebleu corpus BLEU (0-100, default 13a tokenization), one reference per sentence."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(preds, [refs]).score)


def roundtrip_scores(preds: list[str], refs: list[str], pred_emb: np.ndarray, ref_emb: np.ndarray) -> dict[str, float]:
    """Scores of decoded `preds` against the original `refs`. pred_emb: encoder embeddings of the decoded
    text (N, D); ref_emb: the embeddings that were decoded (N, D)."""
    from lcm.decoding import cosine_rows

    if len(preds) != len(refs) or not refs:
        raise ValueError(f"need one prediction per reference and at least one ({len(preds)} vs {len(refs)})")
    return {
        "exact_match": float(np.mean([p == r for p, r in zip(preds, refs)])),
        "bleu": corpus_bleu(preds, refs),
        "token_f1": float(np.mean([token_f1(p, r) for p, r in zip(preds, refs)])),
        "cosine": float(np.mean(cosine_rows(pred_emb, ref_emb))),
    }
