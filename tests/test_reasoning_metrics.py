"""Comparison metrics against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from lcm.eval.reasoning_metrics import (
    answers_match,
    distinct_n,
    effective_rank,
    entropy_threshold,
    fit_entropy_performance,
    forking_tokens,
    parse_answer,
    pass_at_k,
    rouge_l,
    self_bleu,
    vendi_score,
)
from lcm.metrics import token_entropy


def test_token_entropy_known_distributions():
    uniform = torch.zeros(4)
    assert token_entropy(uniform).item() == pytest.approx(math.log(4))
    two = torch.log(torch.tensor([0.5, 0.25, 0.25]))  # H = 1.5 log 2
    assert token_entropy(two).item() == pytest.approx(1.5 * math.log(2))
    certain = torch.tensor([0.0, float("-inf"), float("-inf")])
    assert token_entropy(certain).item() == pytest.approx(0.0)
    assert token_entropy(torch.zeros(2, 3, 8)).shape == (2, 3)


def test_forking_share_at_the_80th_percentile():
    h = np.arange(10, dtype=float)  # 0..9: the 0.8 quantile is 7.2 -> tokens 8 and 9 fork
    t = entropy_threshold(h, rho=0.2)
    assert t == pytest.approx(7.2)
    share, top = forking_tokens(h, list("aabbccddxx"), t)
    assert share == pytest.approx(0.2) and top == [("x", 2)]
    # another system's entropies against this threshold
    assert forking_tokens(np.array([0.0, 8.0]), ["p", "q"], t)[0] == pytest.approx(0.5)


def test_effective_rank_of_a_known_spectrum():
    # centred rows with singular values sqrt(8) and sqrt(2): p = (2/3, 1/3)
    h = np.array([[0.0, 1.0], [0.0, -1.0], [2.0, 0.0], [-2.0, 0.0]])
    p = np.array([2 / 3, 1 / 3])
    assert effective_rank(h) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert effective_rank(np.outer(np.arange(5.0), [1.0, 2.0, 3.0])) == pytest.approx(1.0)  # a line
    assert effective_rank(np.ones((4, 3))) == 1.0  # all identical: VERL's exp(0)
    assert effective_rank(np.eye(4) * 3) == pytest.approx(3.0, rel=1e-6)  # 4 points of a simplex: rank 3, equal s


def test_pass_at_k_closed_forms():
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # fewer than k wrong samples
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_distinct_n_divides_by_generated_tokens_as_li_et_al():
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 4)  # ab, ba over 4 words (not over 3 bigrams)
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 4)  # one bigram, 4 generated words
    assert distinct_n(["a"], 2) == 0.0 and distinct_n([], 1) == 0.0


def test_self_bleu_and_vendi():
    assert self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(100.0)
    assert self_bleu(["the cat sat on the mat", "zebra quantum violin xylophone"]) < 5


def test_vendi_on_centred_unit_embeddings():
    assert vendi_score(np.ones((4, 3))) == pytest.approx(1.0)  # all the same
    # k orthonormal rows, centred: Gram = I - J/k, eigenvalues 1 (k - 1 times) and 0 -> Vendi k - 1
    assert vendi_score(np.eye(3)) == pytest.approx(2.0)
    assert vendi_score(np.eye(4)) == pytest.approx(3.0)
    # a direction shared by every row (anisotropic embeddings) is removed by the centring
    assert vendi_score(np.eye(3) + 5.0) == pytest.approx(2.0)
    assert vendi_score(np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])) == pytest.approx(1.0)  # one axis of variation
    # unit-normalize first, then centre: rows 1 and 2 are one direction (centring raw rows would give rank 2)
    assert vendi_score(np.array([[1.0, 0], [3.0, 0], [0, 2.0]])) == pytest.approx(1.0)
    # mean 0 already; X^T X = diag(4, 2): eigenvalue shares (2/3, 1/3)
    x = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1], [1, 0], [-1, 0]])
    p = np.array([2 / 3, 1 / 3])
    assert vendi_score(x) == pytest.approx(math.exp(-(p * np.log(p)).sum()))


def test_rouge_l_hand_values():
    # rouge-score's rougeL: LCS F1 over lowercased [a-z0-9]+ tokens (punctuation dropped)
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)  # LCS a c d: P = R = 3/4
    assert rouge_l("x y", "a b") == 0.0
    assert rouge_l("The cat, sat.", "the cat sat") == pytest.approx(1.0)  # case and punctuation do not count
    assert rouge_l("x = 3.5", "3 5") == pytest.approx(0.8)  # [x, 3, 5] vs [3, 5]: P = 2/3, R = 1, F = 0.8
    assert rouge_l("a b\nc d", "a b c d") == pytest.approx(1.0)  # one sequence over the whole text
    assert rouge_l("b a c", "a b c") == pytest.approx(2 / 3)  # LCS 2 of 3 both ways
    assert rouge_l("", "") == 1.0 and rouge_l("...", "") == 1.0  # no tokens on either side
    assert rouge_l("", "a b") == 0.0


def test_answer_parsing():
    assert parse_answer("So 3 + 4 = 7.\n#### 7") == "7"
    assert parse_answer("#### 1\n#### 2") == "2"
    assert parse_answer("no answer") is None
    assert answers_match("1,200", "1200.0") and answers_match("true", "True")
    assert not answers_match("7", "8") and not answers_match(None, "8")


def test_entropy_performance_fit_recovers_known_curve():
    h = np.array([0.2, 0.5, 0.9, 1.3])
    fit = fit_entropy_performance(h, -2.0 * np.exp(h) + 5.0)
    assert fit["a"] == pytest.approx(2.0) and fit["b"] == pytest.approx(5.0) and fit["r2"] == pytest.approx(1.0)
    assert fit["a_at_bound"] is False
    with pytest.raises(ValueError):
        fit_entropy_performance([1.0], [0.5])


def test_entropy_performance_fit_keeps_a_non_negative():
    h = np.array([0.2, 0.5, 0.9, 1.3])
    fit = fit_entropy_performance(h, 2.0 * np.exp(h) + 1.0)  # performance *rising* with entropy
    assert fit["a"] == 0.0 and fit["a_at_bound"] is True
    assert fit["b"] == pytest.approx(float(np.mean(2.0 * np.exp(h) + 1.0))) and fit["r2"] == pytest.approx(0.0)


def test_effective_rank_dynamics_by_verl_definition():
    from lcm.eval.reasoning_metrics import effective_rank_dynamics

    h = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ranks = [1.0, effective_rank(h[:2]), effective_rank(h[:3]), effective_rank(h[:4])]
    diffs = [ranks[i] - np.mean(ranks[:i]) for i in range(1, 4)]
    erv, era = effective_rank_dynamics(h)
    assert erv == pytest.approx(np.mean(diffs)) and era == pytest.approx(np.mean(np.diff(diffs)))
    assert ranks[1] == pytest.approx(1.0) and ranks[3] == pytest.approx(2.0)  # a square: two equal directions
    assert np.isnan(effective_rank_dynamics(h[:1])[0])


def test_matched_units_for_token_models():
    from lcm.eval.reasoning_metrics import line_entropies, step_boundary_states

    toks = ["So", " 3", ".\n", "####", " 7", "<eos>"]
    hidden = np.arange(12.0).reshape(6, 2)
    assert step_boundary_states(hidden, toks).tolist() == [[4.0, 5.0], [10.0, 11.0]]  # ends of the two lines
    ent = np.array([0.5, 1.0, 0.25, 0.1, 2.0, 0.0])
    assert line_entropies(ent, toks) == pytest.approx([1.75, 2.1])
    with pytest.raises(ValueError):
        line_entropies(ent[:2], toks)
