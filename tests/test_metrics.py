import faiss
import numpy as np
import torch

from lcm.eval.metrics import next_step_scores, retrieval_hits


def test_next_step_scores_hand_values():
    gold = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pred = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    prev = torch.tensor([[0.0, 1.0], [0.0, -3.0]])
    s = next_step_scores(pred, gold, prev, torch.tensor([1.0, 1.0]))
    assert torch.allclose(s["cosine"], torch.tensor([1.0, 2 ** -0.5]))
    assert torch.allclose(s["cosine_copy_last"], torch.tensor([0.0, -1.0]))
    assert torch.allclose(s["cosine_mean"], torch.tensor([2 ** -0.5, 2 ** -0.5]))


def test_retrieval_hits():
    vecs = np.eye(3, dtype=np.float32)
    index = faiss.IndexFlatIP(3)
    index.add(vecs)
    rows = np.array([10, 20, 30])  # table ids of the indexed sentences
    pred = np.array([[0.9, 0.1, 0], [0, 0, 5.0], [0, 1, 0]], dtype=np.float32)
    assert retrieval_hits(index, rows, pred, np.array([10, 30, 10])).tolist() == [True, True, False]
