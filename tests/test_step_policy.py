"""The concept model's categorical step policy: log-probs, entropy in nats, τ fitted by NLL."""
import math

import pytest
import torch

from lcm.step_policy import MIN_TAU, cosines, fit_temperature, step_entropy, step_log_probs, step_nll


def test_policy_is_a_softmax_of_cosines_over_tau():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    pred = torch.tensor([[2.0, 0.0]])  # scale does not matter: cosines
    logp = step_log_probs(pred, bank, tau=0.5)
    expected = torch.log_softmax(torch.tensor([[1.0, 0.0, -1.0]]) / 0.5, -1)
    assert torch.allclose(logp, expected)
    ent = step_entropy(pred, bank, tau=1e6)  # tau -> infinity: uniform over 3 sentences
    assert float(ent) == pytest.approx(math.log(3), rel=1e-4)
    assert float(step_entropy(pred, bank, tau=1e-3)) == pytest.approx(0.0, abs=1e-6)  # tau -> 0: argmax


def test_fitted_tau_recovers_the_temperature_that_generated_the_data():
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 16, generator=gen)
    pred = torch.randn(4000, 16, generator=gen)
    true_tau = 0.2
    gold = torch.multinomial(torch.softmax(cosines(pred, bank) / true_tau, -1), 1, generator=gen).squeeze(1)
    tau = fit_temperature(pred, bank, gold)
    assert tau == pytest.approx(true_tau, rel=0.1)
    assert step_nll(pred, bank, gold, tau) <= min(step_nll(pred, bank, gold, t) for t in (tau * 0.7, tau * 1.4))
    cos = cosines(pred, bank) / tau  # chunked NLL = the NLL of the whole matrix
    whole = float((torch.logsumexp(cos, -1) - cos.gather(1, gold[:, None]).squeeze(1)).mean())
    assert step_nll(pred, bank, gold, tau, chunk=7) == pytest.approx(whole, rel=1e-5)


def test_a_gold_that_is_always_nearest_pushes_tau_to_its_floor():
    bank = torch.eye(4)
    pred = torch.eye(4) + 0.01
    assert fit_temperature(pred, bank, torch.arange(4)) == MIN_TAU


def test_validation_fits_tau_logs_step_entropy_and_checkpoints_keep_tau(trained_run):
    import csv

    from lcm.checkpoint import load_checkpoint

    rows = [r for r in csv.DictReader((trained_run / "metrics.csv").open()) if r.get("val/step_entropy")]
    assert rows, "no val/step_entropy logged"
    last = rows[-1]
    tau, entropy, nll = float(last["val/step_tau"]), float(last["val/step_entropy"]), float(last["val/step_nll"])
    assert MIN_TAU < tau < 1.0 and 0.0 < entropy and nll > 0.0
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    assert load_checkpoint(ckpt)["lcm"]["step_tau"] == pytest.approx(tau, rel=1e-5)


def test_generation_reports_the_step_policy_entropy_of_every_prediction(trained_run):
    from lcm.generate import ConceptGenerator

    ckpt = trained_run / "checkpoints" / "last.ckpt"
    gen = ConceptGenerator.from_checkpoint(str(ckpt))
    assert math.isfinite(float(gen.model.step_tau))  # the tau fitted at validation came with the checkpoint
    out = gen.generate("Kim has 3 boxes of 4 eggs. How many eggs?", max_steps=4)
    assert len(out.entropies) == out.calls > 0
    assert all(0.0 <= h <= math.log(len(gen.bank.texts)) + 1e-6 for h in out.entropies)


def test_validation_boundaries_are_the_closest_kind_as_in_generation():
    from lcm.concepts import ConceptType
    from lcm.model import LCMConfig
    from lcm.module import ConceptLM

    model = ConceptLM(LCMConfig(embed_dim=4, d_model=8, n_layer=1, n_head=2))
    model.eot_embedding.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    pred = torch.tensor([[0.6, 0.8, 0.0, 0.0], [-0.6, 0.8, 0.0, 0.0]])  # cos to end-of-text 0.6 and -0.6
    gold = torch.tensor([int(ConceptType.EOT), int(ConceptType.STEP)])
    out = model._boundary_metrics(pred, gold, model._best_step_cos(pred, None, None))  # no data: best other cosine 0
    assert float(out["boundary_acc"][0]) == 1.0 and float(out["eot_recall"][0]) == 1.0  # 0.6 < 0.9 used to miss it


def test_validation_reads_a_break_at_a_paragraph_start_as_the_plan():
    """Generation reads a break predicted at a paragraph start as the plan (StepRule.classify); validation's
    boundary accuracy counts it the same way: right where the gold is a plan, a missed end where the gold is one."""
    from lcm.concepts import ConceptType
    from lcm.model import LCMConfig
    from lcm.module import ConceptLM

    model = ConceptLM(LCMConfig(embed_dim=4, d_model=8, n_layer=1, n_head=2))
    model.meta["planning"] = True
    model.eot_embedding.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    model.break_embedding.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))
    pred = torch.tensor([[0.0, 1.0, 0.0, 0.0]] * 3)  # all three predict the break
    gold = torch.tensor([int(ConceptType.PLAN), int(ConceptType.BREAK), int(ConceptType.STEP)])
    out = model._boundary_metrics(pred, gold, model._best_step_cos(pred, None, None))
    assert float(out["boundary_acc"][0]) == pytest.approx(2 / 3)  # the plan position and the break: right
    assert float(out["break_recall"][0]) == 1.0


def test_nll_and_entropy_in_one_pass_equal_the_separate_ones():
    from lcm.step_policy import step_nll_entropy

    gen = torch.Generator().manual_seed(1)
    pred, bank = torch.randn(50, 8, generator=gen), torch.randn(20, 8, generator=gen)
    gold = torch.randint(20, (50,), generator=gen)
    nll, entropy = step_nll_entropy(pred, bank, gold, 0.3, chunk=7)
    logp = step_log_probs(pred, bank, 0.3)
    assert nll == pytest.approx(float(-logp.gather(1, gold[:, None]).mean()), rel=1e-5)
    assert entropy == pytest.approx(float(step_entropy(pred, bank, 0.3).mean()), rel=1e-5)
