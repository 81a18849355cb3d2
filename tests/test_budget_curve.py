"""lcm eval budget (eval/budget_curve.py): what each budget run is told, and how its checkpoints are read back."""
from __future__ import annotations

import pytest
from conftest import CONFIGS

from lcm.errors import LCMError
from lcm.eval.budget_curve import budget_overrides, main, point, step_checkpoints


def test_budget_overrides_replace_the_budget_and_keep_the_rest():
    compare = ["--data.source.init_args.min_hops", "1", "--trainer.max_steps", "400", "--model.arch.d_model", "128",
               "--trainer.max_epochs", "-1"]
    out = budget_overrides(compare, steps=2000, every=250)
    assert out[:4] == ["--data.source.init_args.min_hops", "1", "--model.arch.d_model", "128"]
    assert out.count("--trainer.max_steps") == 1 and out[out.index("--trainer.max_steps") + 1] == "2000"
    assert out[out.index("--model.optim.min_lr_ratio") + 1] == "1.0"  # constant rate: step s is a run of s steps
    assert "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint" in out


def test_the_overrides_arrive_in_a_parsed_config():
    """What the budget run's `lcm fit` would parse: the steps, the rate floor and the appended step checkpoint."""
    from lcm.train.cli import make_cli

    args = budget_overrides(["--data.source.init_args.n", "40"], steps=30, every=10)
    cli = make_cli(["-c", str(CONFIGS / "token_baseline_forks.yaml"), *args], run=False)
    assert cli.trainer.max_steps == 30 and cli.trainer.val_check_interval == 10
    assert cli.model.optim.min_lr_ratio == 1.0
    kept = [c for c in cli.trainer.callbacks if getattr(c, "_every_n_train_steps", 0) == 10]
    assert len(kept) == 1 and kept[0].save_top_k == -1


def test_step_checkpoints_in_step_order(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for name in ("step001000.ckpt", "step000250.ckpt", "last.ckpt", "epoch01.ckpt"):
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    assert [s for s, _ in step_checkpoints(tmp_path)] == [250, 1000]


def test_point_reports_accuracy_per_hop():
    q = point(250, [1.0, 0.0, 1.0, 1.0], 0.75, [1, 1, 2, 2])
    assert q["accuracy"] == 0.75 and q["accuracy_by_hops"] == {"1": 0.5, "2": 1.0}
    assert q["accuracy_ci"][0] <= 0.75 <= q["accuracy_ci"][1]


def test_bad_budget_is_one_error():
    with pytest.raises(LCMError, match="--every"):
        main(["-c", "eval/configs/forks.yaml", "--steps", "100", "--every", "200"])


def test_chance_is_one_over_the_answers_each_task_declares():
    """Forks declares 24 possible answers, logic chains 2 (`meta["answer_options"]`): chance is 1/24 and 1/2, not
    the held-out sample's majority share (compare used to report none for forks)."""
    from lcm.eval.scoring import chance_accuracy
    from lcm.train import Forks, LogicChains

    docs = list(Forks(n=30).documents(256))
    assert chance_accuracy([d.answer for d in docs], docs) == pytest.approx(1 / 24)
    logic = list(LogicChains(n=7).documents(256))  # 7 problems: the majority share is not 1/2
    assert chance_accuracy([d.answer for d in logic], logic) == 0.5
    assert chance_accuracy(["True", "False", "True", "True"]) == 0.75  # a closed answer set: the majority share


def test_report_names_the_first_step_off_the_floor(tmp_path):
    from lcm.eval.budget_curve import first_above_chance, first_off_floor, markdown, plot

    hops = [1, 1, 2, 2]
    report = {"name": "t", "problems": 4, "seed": 0, "chance": 1 / 24, "runs_dir": "runs/x",
              "systems": {"A": [point(250, [0, 0, 0, 0], 0.5, hops), point(500, [1, 0, 0, 0], 1.0, hops)],
                          "token Llama": [point(250, [0, 0, 0, 0], 1.0, hops)]},
              "follower": {"accuracy": 0.25, "accuracy_ci": [0.0, 0.75], "accuracy_by_hops": {"1": 0.5, "2": 0.0}},
              "off_floor": {}}
    report["off_floor"] = {name: first_off_floor(points, report["chance"]) for name, points in report["systems"].items()}
    assert report["off_floor"] == {"A": 500, "token Llama": None}  # 0.5 at 1 hop >= 2/24; 0 never is
    md = markdown(report)
    assert "| A | 500 | 0.250 [" in md and "A: 500; token Llama: not reached" in md
    assert first_above_chance(report["systems"]["A"], report["chance"]) is None  # 1 of 4 right: the CI reaches 0
    assert first_above_chance([point(9, [1, 1, 1, 1], 1.0, hops)], report["chance"]) == 9
    plot(report, tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
