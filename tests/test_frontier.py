"""`lcm eval frontier`: accuracy against distinct correct solutions over sampling settings, on tiny real models."""
import json

import numpy as np
import pytest
from conftest import CONFIGS, TINY_FIT, fit_in, run_lcm

from lcm.eval.frontier import aggregate, problem_scores


def test_problem_scores_hand_values():
    texts = ["a\n#### 7", "b\n#### 7", "a\n#### 7", "c\n#### 8", "d"]
    s = problem_scores(texts, "7", "a\n#### 7")
    assert s["accuracy"] == 3 / 5 and s["answered"] == 4 / 5
    assert s["distinct_correct"] == 2 and s["distinct"] == 4  # "a\n#### 7" twice counts once
    assert s["rouge_l"] == pytest.approx(np.mean([1.0, 0.5, 1.0, 0.0, 0.0]))  # ref tokens a, 7: LCS 2, 1, 2, 0, 0


def test_aggregate_over_seeds():
    seed0 = {"accuracy": [1.0, 0.0], "distinct_correct": [2.0, 0.0], "distinct": [2.0, 1.0], "answered": [1.0, 1.0],
             "rouge_l": [0.5, 0.5]}
    seed1 = {**seed0, "accuracy": [0.5, 0.5], "distinct_correct": [1.0, 1.0]}
    out = aggregate([seed0, seed1])
    assert out["accuracy"] == 0.5 and out["accuracy_std"] == 0.0 and out["distinct_correct"] == 1.0
    assert out["accuracy_seeds"] == [0.5, 0.5] and out["distinct"] == 1.5 and out["answered_std"] == 0.0
    lo, hi = out["distinct_correct_ci"]  # problems' seed means: 1.5 and 0.5
    assert 0.5 <= lo <= 1.0 <= hi <= 1.5


@pytest.fixture(scope="module")
def diffusion_ckpt(tmp_path_factory):
    args = [a.replace("--model.", "--model.init_args.") for a in TINY_FIT] + ["--model.init_args.diffusion.ddim_steps", "3"]
    return fit_in(tmp_path_factory.mktemp("frontier_diffusion"), "quickstart_diffusion.yaml", args) / "checkpoints" / "best.ckpt"


def test_frontier_runs_each_kind_at_its_own_settings(trained_run, diffusion_ckpt, tmp_path, capsys):
    base = str(trained_run / "checkpoints" / "best.ckpt")
    code, err = run_lcm(["eval", "frontier", "--config", str(CONFIGS / "quickstart.yaml"), "--problems", "2",
                         "--k", "3", "--max-steps", "3", "--noise", "0", "0.5", "--guidance", "1", "3", "--eta", "0", "1",
                         "--system", "Base-LCM", base, base, "--system", "two-tower", str(diffusion_ckpt),
                         "--out", str(tmp_path), "--overrides", "--data.source.init_args.n", "80"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "frontier.json").read_text())
    base_points, diffusion_points = (report["systems"][n]["points"] for n in ("Base-LCM", "two-tower"))
    assert [q["setting"] for q in base_points] == [{"noise": 0.0}, {"noise": 0.5}]
    assert [q["label"] for q in diffusion_points] == ["guidance 1, eta 0", "guidance 1, eta 1", "guidance 3, eta 0",
                                                      "guidance 3, eta 1"]
    assert base_points[0]["distinct"] == 1.0  # noise 0: Base-LCM is deterministic, its 3 samples are one solution
    assert len(base_points[0]["accuracy_seeds"]) == 2 and base_points[0]["accuracy_std"] == 0.0  # same checkpoint twice
    for q in base_points + diffusion_points:
        assert 0 <= q["accuracy"] <= 1 and 0 <= q["distinct_correct"] <= q["distinct"] <= 3 and 0 <= q["rouge_l"] <= 1
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG" and "| two-tower" in (tmp_path / "frontier.md").read_text()


def test_plan_source_reaches_each_diffusion_setting_only(trained_run, diffusion_ckpt, tmp_path, capsys):
    from lcm.eval.frontier import label, settings_for
    from lcm.generate import ConceptGenerator

    diffusion = ConceptGenerator.from_checkpoint(diffusion_ckpt).model
    base = ConceptGenerator.from_checkpoint(trained_run / "checkpoints" / "best.ckpt").model
    assert settings_for(diffusion, [0.0], [1.0, 3.0], [0.0], "regressed") == [
        {"guidance": 1.0, "eta": 0.0, "plan_source": "regressed"}, {"guidance": 3.0, "eta": 0.0, "plan_source": "regressed"}]
    assert settings_for(base, [0.5], [1.0], [0.0], "regressed") == [{"noise": 0.5}]
    assert label({"guidance": 1.0, "eta": 0.0, "plan_source": "regressed"}) == "guidance 1, eta 0, plan_source regressed"
    code, err = run_lcm(["eval", "frontier", "--config", str(CONFIGS / "quickstart.yaml"), "--problems", "1", "--k", "1",
                         "--guidance", "1", "--eta", "0", "--plan-source", "regressed", "--system", "two-tower",
                         str(diffusion_ckpt), "--out", str(tmp_path), "--overrides", "--data.source.init_args.n", "80"],
                        capsys)
    assert code == 2 and "no plans" in err and len(err.strip().splitlines()) == 1  # this model has no planning


def test_feedback_reaches_generation(trained_run, tmp_path, capsys):
    from lcm.eval.frontier import problem_scores, sample_point
    from lcm.generate import ConceptGenerator

    gen = ConceptGenerator.from_checkpoint(trained_run / "checkpoints" / "best.ckpt")
    prompt, gold, ref = ["Tom has 3 apples.", "He buys 2 more."], "5", "He has 5.\n#### 5"
    direct = gen.generate([prompt], num_samples=2, seed=0, max_steps=3, noise=0.5, feedback="predicted")[0]
    texts = ["\n".join(s.text for s in g.steps if not s.is_plan) for g in direct]
    decoded = gen.generate([prompt], num_samples=2, seed=0, max_steps=3, noise=0.5, feedback="decoded")[0]
    assert texts != ["\n".join(s.text for s in g.steps if not s.is_plan) for g in decoded]  # so the check can fail
    got = sample_point(gen, [prompt], [gold], [ref], {"noise": 0.5}, 2, 3, feedback="predicted")
    assert {k: v[0] for k, v in got.items()} == problem_scores(texts, gold, ref)
    code, err = run_lcm(["eval", "frontier", "--config", str(CONFIGS / "quickstart.yaml"), "--problems", "1", "--k", "1",
                         "--max-steps", "2", "--noise", "0", "--feedback", "predicted", "--system", "Base-LCM",
                         str(trained_run / "checkpoints" / "best.ckpt"), "--out", str(tmp_path), "--overrides",
                         "--data.source.init_args.n", "80"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "frontier.json").read_text())["feedback"] == "predicted"
    assert "predicted concepts fed back" in (tmp_path / "frontier.md").read_text()


def test_checkpoints_trained_on_other_data_are_refused(trained_run, tmp_path, capsys):
    # trained on 80 problems: the held-out problems of 40 are another split of another corpus
    code, err = run_lcm(["eval", "frontier", "--config", str(CONFIGS / "quickstart.yaml"), "--problems", "1", "--k", "1",
                         "--noise", "0", "--system", "Base-LCM", str(trained_run / "checkpoints" / "best.ckpt"),
                         "--out", str(tmp_path), "--overrides", "--data.source.init_args.n", "40"], capsys)
    assert code == 2 and "was trained on corpus" in err and len(err.strip().splitlines()) == 1


def test_frontier_bad_input_is_one_error_line(tmp_path, capsys):
    code, err = run_lcm(["eval", "frontier", "--config", str(CONFIGS / "quickstart.yaml"), "--system", "x",
                         str(tmp_path / "none.ckpt")], capsys)
    assert code == 2 and "no checkpoint at" in err and len(err.strip().splitlines()) == 1
    code, err = run_lcm(["eval", "frontier", "--config", str(CONFIGS / "quickstart.yaml"), "--system", "x"], capsys)
    assert code == 2 and "names no checkpoint" in err
    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"")
    code, err = run_lcm(["eval", "frontier", "--config", str(CONFIGS / "quickstart.yaml"), "--system", "x", str(ckpt),
                         "--system", "x", str(ckpt)], capsys)
    assert code == 2 and "given twice" in err
