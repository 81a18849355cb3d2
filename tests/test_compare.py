"""The whole concept-vs-token comparison on tiny real models: train, generate, score, report, plot."""
import json

import pytest
import yaml
from conftest import REPO, run_lcm

TINY = ["--data.source.init_args.n", "60", "--data.batch_size", "8", "--model.arch.d_model", "32",
        "--model.arch.n_layer", "1", "--model.arch.n_head", "2", "--model.optim.warmup_steps", "2",
        "--trainer.max_epochs", "6", "--trainer.enable_model_summary", "false"]


def tiny_config(work, **extra) -> str:
    cfg = {
        "name": "smoke", "out_dir": str(work / "report"), "runs_dir": str(work / "runs"), "problems": 3, "k": 2,
        "max_steps": 6, "show_progress": False, "train_overrides": TINY, "curve_problems": 2,
        "concept": [{"name": "Base-LCM + planning", "config": str(REPO / "train/configs/logic_planning.yaml"),
                     "sampling": {"noise": 0.5}},
                    {"name": "Diffusion + planning", "config": str(REPO / "train/configs/logic_diffusion.yaml"),
                     "sampling": {"ddim_steps": 4}}],
        "token": {"config": str(REPO / "train/configs/token_baseline_logic.yaml"), "max_new_tokens": 24},
        **extra,
    }
    path = work / "compare.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.timeout(300)
def test_compare_pipeline_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # embedding cache of the training configs lands here
    code, err = run_lcm(["eval", "compare", "-c", tiny_config(tmp_path)], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    res = report["results"]
    assert set(res) == {"Base-LCM + planning", "Diffusion + planning", "token Llama", "Soft Thinking"}
    for name, r in res.items():
        assert 0 <= r["accuracy"] <= r["pass_at_k"] <= 1 and len(r["pass_curve"]) == r["k"]
        assert r["seconds_per_problem"] > 0 and r["forward_passes_per_problem"] > 0
    assert res["Soft Thinking"]["k"] == 1 and "distinct_2" not in res["Soft Thinking"]
    assert 0 <= res["token Llama"]["forking_share"] <= 1 and res["token Llama"]["entropy_mean"] > 0
    assert "forking_share" not in res["Base-LCM + planning"]  # no token softmax in the concept loop
    assert res["token Llama"]["time_per_step_vs_token"] == pytest.approx(1.0)
    assert report["systems"]["Diffusion + planning"]["denoiser_evals_per_call"] == 8  # 4 DDIM steps x CFG
    assert report["chance_accuracy"] is not None  # True / False answers
    assert len(report["entropy_curve"]["points"]) == 3 and "fit" in report["entropy_curve"]  # epochs 2, 4, 6
    assert 0 <= res["Soft Thinking"]["soft_token_share"] <= 1
    assert res["Diffusion + planning"]["denoiser_evals_per_step"] == pytest.approx(
        8 * res["Diffusion + planning"]["forward_passes_per_step"])
    for name, r in res.items():  # a CI over problems around every accuracy; accuracy per hop count (logic chains)
        lo, hi = r["accuracy_ci"]
        assert 0 <= lo <= r["accuracy"] <= hi <= 1 and len(r["per_problem_accuracy"]) == report["problems"]
        assert set(r["accuracy_by_hops"]) <= {"2", "3", "4"}
    for name in ("token Llama", "Base-LCM + planning"):  # entropy per step on matched units, both kinds of model
        assert res[name]["step_entropy"] >= 0 and res[name]["step_states"] >= 1
    assert res["Diffusion + planning"]["step_entropy"] is None  # a sampler has no step policy: n/a
    for png in ("entropy_histogram", "accuracy_vs_samples", "accuracy_vs_hops", "diversity", "entropy_curve"):
        assert (tmp_path / "report" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| token Llama |" in md and "Soft Thinking" in md


def test_compare_config_values_arrive(tmp_path):
    from lcm.eval.compare_config import load_config

    path = tiny_config(tmp_path, k=3, soft_thinking={"top_k": 7, "cold_stop_patience": 2})
    cfg = load_config(["-c", path, "--problems", "5", "--no-progress"])
    assert cfg.k == 3 and cfg.problems == 5 and not cfg.show_progress and cfg.train_overrides == TINY
    assert cfg.soft_thinking.top_k == 7 and cfg.soft_thinking.cold_stop_patience == 2
    assert cfg.soft_thinking.top_p == 0.95 and cfg.token.max_new_tokens == 24  # defaults and written values
    base, diffusion = cfg.concept
    assert base.sampling.kwargs() == {"noise": 0.5} and diffusion.sampling.ddim_steps == 4
    assert diffusion.sampling.kwargs() == {"ddim_steps": 4}


@pytest.mark.parametrize("yaml_text, message", [
    ("problem: 5\n", "'problem'"),  # a typo of `problems`
    ("soft_thinking: {top_kk: 3}\n", "'top_kk'"),
    ("concept: [{name: a, config: b, sampling: {temp: 2}}]\n", "'temp'"),
    ("concept: [{name: a, config: b, sampling: {diffusion_steps: 4}}]\n", "'diffusion_steps'"),  # now ddim_steps
    ("k: 0\n", '"k"'),
    ("concept: []\n", "no concept systems"),
])
def test_compare_config_errors_name_the_key(tmp_path, capsys, yaml_text, message):
    bad = tmp_path / "bad.yaml"
    base = "name: x\nout_dir: y\ntoken: {config: z}\n"
    bad.write_text(base + ("" if yaml_text.startswith("concept") else "concept: [{name: a, config: b}]\n") + yaml_text)
    code, err = run_lcm(["eval", "compare", "-c", str(bad)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: compare config") and message in lines[0], err


def test_compare_cli_errors(tmp_path, capsys):
    code, err = run_lcm(["eval", "nothing"], capsys)
    assert code == 2 and err.startswith("error: usage: lcm eval")
    code, err = run_lcm(["eval", "compare", "-c", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "missing.yaml" in err and "Traceback" not in err


def test_several_seeds_are_averaged_with_their_spread_and_a_ci_over_problems():
    from lcm.eval.compare import aggregate_seeds

    def run(acc, per_problem, h):
        return {"sys": {"accuracy": acc, "per_problem_accuracy": per_problem, "pass_curve": [acc, acc + 0.1],
                        "accuracy_by_hops": {"2": h}, "rouge_l": float("nan"), "k": 2, "top_forking_tokens": [["a", 1]]}}

    out = aggregate_seeds({0: run(0.5, [1.0, 0.0], 0.2), 1: run(0.25, [0.5, 0.0], 0.4), 2: run(0.0, [0.0, 0.0], 0.6)})
    r = out["sys"]
    assert r["accuracy"] == pytest.approx(0.25) and r["accuracy_seeds"] == [0.5, 0.25, 0.0]
    assert r["accuracy_std"] == pytest.approx(0.25)  # sample std over seeds
    assert r["per_problem_accuracy"] == pytest.approx([0.5, 0.0]) and r["pass_curve"] == pytest.approx([0.25, 0.35])
    lo, hi = r["accuracy_ci"]
    assert 0.0 <= lo <= 0.25 <= hi <= 0.5  # bootstrap over the 2 problems' seed-averaged accuracies
    assert r["accuracy_by_hops"] == {"2": pytest.approx(0.4)} and r["top_forking_tokens"] == [["a", 1]]
    assert r["rouge_l"] != r["rouge_l"]  # n/a in every seed stays n/a


def test_seeds_in_the_compare_config(tmp_path, capsys):
    from lcm.eval.compare_config import load_config

    path = tiny_config(tmp_path, seeds=[0, 1, 2])
    assert load_config(["-c", path]).seeds == [0, 1, 2]
    code, err = run_lcm(["eval", "compare", "-c", tiny_config(tmp_path, seeds=[1, 1])], capsys)
    assert code == 2 and "seeds must be distinct" in err
