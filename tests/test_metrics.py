import faiss
import numpy as np
import torch

from lcm.metrics import context_scores, next_step_scores, retrieval_hits


def test_next_step_scores_hand_values():
    gold = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pred = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    prev = torch.tensor([[0.0, 1.0], [0.0, -3.0]])
    s = next_step_scores(pred, gold, prev, torch.tensor([1.0, 1.0]))
    assert torch.allclose(s["cosine"], torch.tensor([1.0, 2 ** -0.5]))
    assert torch.allclose(s["cosine_copy_last"], torch.tensor([0.0, -1.0]))
    assert torch.allclose(s["cosine_mean"], torch.tensor([2 ** -0.5, 2 ** -0.5]))


def test_context_scores_hand_values():
    gold = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pred = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    swapped = torch.tensor([[0.0, 3.0], [2.0, 2.0]])  # row 2: the same direction from another context
    s = context_scores(pred, swapped, gold)
    assert torch.allclose(s["ctx_shift"], torch.tensor([1.0, 0.0]), atol=1e-6)
    assert torch.allclose(s["ctx_gain"], torch.tensor([1.0, 0.0]), atol=1e-6)


def test_context_metrics_swap_the_context_within_the_batch(trained_run):
    """Validation's ctx_shift / ctx_gain: identical sequences swapped give 0 (up to float noise between the rows of a
    batch), distinct ones do not; every Base-LCM run logs them."""
    from lcm.concepts import ConceptType
    from lcm.generate import ConceptGenerator

    model = ConceptGenerator.from_checkpoint(trained_run / "checkpoints" / "last.ckpt").model.eval()
    types = torch.full((3, 5), int(ConceptType.STEP))
    types[:, 0] = int(ConceptType.PROMPT)
    x = torch.randn(3, 5, 384)
    for same, batch in ((True, {"x": x[:1].expand(3, -1, -1).clone(), "types": types}), (False, {"x": x, "types": types})):
        with torch.no_grad():
            pred, _, mask = model._predict(batch)
            out = model._context_metrics(batch, pred, mask)
        (shift, n), (gain, _) = out["ctx_shift"], out["ctx_gain"]
        unchanged = abs(float(shift)) < 1e-5 and abs(float(gain)) < 1e-5  # rows of one batch: float noise only
        assert n == 12 and unchanged == same and (same or float(shift) > 1e-3), (same, float(shift))
    assert model._context_metrics({"x": x[:1], "types": types[:1]}, pred[:1], mask[:1]) == {}  # nothing to swap with
    header = (trained_run / "metrics.csv").read_text().splitlines()[0]
    assert "val/ctx_shift" in header and "val/ctx_gain" in header


def test_retrieval_hits():
    vecs = np.eye(3, dtype=np.float32)
    index = faiss.IndexFlatIP(3)
    index.add(vecs)
    rows = np.array([10, 20, 30])  # table ids of the indexed sentences
    pred = np.array([[0.9, 0.1, 0], [0, 0, 5.0], [0, 1, 0]], dtype=np.float32)
    assert retrieval_hits(index, rows, pred, np.array([10, 30, 10])).tolist() == [True, True, False]


def test_token_f1_bleu_and_roundtrip_scores_hand_values():
    from lcm.eval.text_metrics import corpus_bleu, roundtrip_scores, token_f1, tokens

    assert tokens("So 36 - 12 = 24 forks.") == ["So", "36", "-", "12", "=", "24", "forks", "."]
    assert token_f1("a b c d", "a b c d") == 1.0 and token_f1("x y", "a b") == 0.0
    assert abs(token_f1("a b c x", "a b c d e") - 2 * 0.75 * 0.6 / (0.75 + 0.6)) < 1e-12  # P 3/4, R 3/5
    assert token_f1("Emma", "emma") == 0.0  # cased: a decoder must get names right
    assert abs(corpus_bleu(["the cat sat on the mat ."], ["the cat sat on the mat ."]) - 100.0) < 1e-9
    emb = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    out = roundtrip_scores(["a b", "c"], ["a b", "d"], np.array([[2.0, 0.0], [1.0, 1.0]]), emb)
    assert out["exact_match"] == 0.5 and abs(out["token_f1"] - 0.5) < 1e-12
    assert abs(out["cosine"] - (1 + 2 ** -0.5) / 2) < 1e-6


def test_pairwise_cosine_distance_hand_values():
    from lcm.eval.diffusion_compare import pairwise_cosine_distance

    assert abs(pairwise_cosine_distance(np.array([[1.0, 0], [2.0, 0]]))) < 1e-7  # same direction
    assert abs(pairwise_cosine_distance(np.array([[1.0, 0], [0, 1.0], [-1.0, 0]])) - 4 / 3) < 1e-6  # 1, 2, 1 over 3 pairs
