"""The InfoNCE objective of concept models: candidates, the loss, and a config value that reaches the model."""
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, TINY_FIT, run_lcm

from lcm.contrastive import Contrastive, candidates, info_nce
from lcm.errors import LCMError


def test_a_sentence_at_several_positions_is_one_candidate_never_its_own_negative():
    vecs = torch.eye(4)
    gold_ids = torch.tensor([7, 3, 7, 9])  # row 7 occurs twice (e.g. the end-of-text sentence)
    gold_vecs = vecs[[0, 1, 0, 2]]
    cand, gold = candidates(gold_ids, gold_vecs, bank_ids=torch.tensor([3, 5]), bank_vecs=vecs[[1, 3]])
    assert len(cand) == 4  # rows 3, 5, 7, 9
    assert torch.equal(cand[gold], gold_vecs)  # each target points at its own sentence
    assert gold[0] == gold[2]


def test_info_nce_is_the_cross_entropy_of_cosines_over_temperature():
    pred = torch.tensor([[1.0, 0.2], [0.1, 1.0]])
    cand = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    gold = torch.tensor([0, 2])
    cos = F.normalize(pred, dim=-1) @ cand.T
    assert info_nce(pred, cand, gold, 0.5) == pytest.approx(float(F.cross_entropy(cos / 0.5, gold)))
    w = torch.tensor([1.0, 0.0])
    assert info_nce(pred, cand, gold, 0.5, w) == pytest.approx(float(F.cross_entropy(cos[:1] / 0.5, gold[:1])))


def test_bad_contrastive_settings_are_one_line():
    with pytest.raises(LCMError, match="not both 0"):
        Contrastive(weight=0, mse_weight=0)
    with pytest.raises(LCMError, match="temperature must be > 0"):
        Contrastive(temperature=0)


def test_contrastive_config_reaches_the_model_and_its_checkpoint(tmp_path, monkeypatch):
    import csv

    from lcm.checkpoint import load_checkpoint

    monkeypatch.chdir(tmp_path)
    code, _ = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT, "--trainer.max_epochs", "1",
                       "--data.source.init_args.n", "40", "--model.contrastive.weight", "1.0",
                       "--model.contrastive.mse_weight", "0.0", "--model.contrastive.temperature", "0.07",
                       "--model.contrastive.bank_negatives", "16"])
    assert code == 0
    run = tmp_path / "runs" / "quickstart" / "version_0"
    hp = load_checkpoint(run / "checkpoints" / "last.ckpt")["hyper_parameters"]
    assert hp["contrastive"] == {"weight": 1.0, "mse_weight": 0.0, "temperature": 0.07, "bank_negatives": 16}
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    val = [r for r in rows if r.get("val/infonce")]
    assert val and float(val[-1]["val/loss"]) == pytest.approx(float(val[-1]["val/infonce"]), rel=1e-5)  # InfoNCE alone
