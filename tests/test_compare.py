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


@pytest.mark.timeout(600)
def test_compare_pipeline_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # embedding cache of the training configs lands here
    decoder = ["--data.init_args.source.class_path", "lcm.train.LogicChains", "--data.init_args.source.init_args.n", "60",
               "--model.init_args.arch.d_model", "32", "--model.init_args.arch.n_layer", "1",
               "--model.init_args.vocab_size", "300", "--trainer.max_epochs", "1"]
    config = tiny_config(tmp_path, controls={"bank_restricted": True, "bank_problems": 2,
                                             "decoder": str(REPO / "train/configs/decoder_quickstart.yaml"),
                                             "decoder_overrides": decoder})
    code, err = run_lcm(["eval", "compare", "-c", config], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    res = report["results"]
    controls = {"encoder follower (0 parameters)", "token Llama restricted to the bank",
                "Base-LCM + planning, read out by the decoder"}
    assert set(res) == {"Base-LCM + planning", "Base-LCM + planning (greedy)", "Diffusion + planning", "token Llama",
                        "token Llama (greedy)", "Soft Thinking", "Soft Thinking + noise"} | controls
    greedy, sampled = res["Base-LCM + planning (greedy)"], res["Base-LCM + planning"]  # one run, two rows
    assert greedy["k"] == 1 and report["systems"]["Base-LCM + planning (greedy)"]["sampling"] == {"noise": 0.0}
    assert greedy["train_flops"] == sampled["train_flops"] and greedy["train_seconds"] == sampled["train_seconds"]
    assert "Diffusion + planning (greedy)" not in res  # a sampler has no greedy setting
    assert len(res["token Llama restricted to the bank"]["per_problem_accuracy"]) == 2  # bank_problems
    assert report["systems"]["encoder follower (0 parameters)"]["params"] == 0
    read_out = res["Base-LCM + planning, read out by the decoder"]  # the same model, steps written by the decoder
    assert read_out["k"] == 2 and read_out["train_flops"] > res["Base-LCM + planning"]["train_flops"]
    assert read_out["train_flops_encoder"] == res["Base-LCM + planning"]["train_flops_encoder"]
    assert report["systems"]["Base-LCM + planning, read out by the decoder"]["decoder_params"] > 0
    res = {k: v for k, v in res.items() if k not in controls}
    assert res["token Llama (greedy)"]["k"] == 1 and res["Soft Thinking + noise"]["k"] == 2
    assert report["systems"]["Soft Thinking + noise"]["generate"]["soft"]["noise"] == "gumbel"
    for name, r in res.items():
        assert 0 <= r["accuracy"] <= r["pass_at_k"] <= 1 and len(r["pass_curve"]) == r["k"]
        assert r["seconds_per_problem"] > 0 and r["forward_passes_per_problem"] > 0
    assert res["Soft Thinking"]["k"] == 1 and "distinct_2" not in res["Soft Thinking"]
    assert 0 <= res["token Llama"]["forking_share"] <= 1 and res["token Llama"]["entropy_mean"] > 0
    assert "forking_share" not in res["Base-LCM + planning"]  # no token softmax in the concept loop
    assert res["token Llama"]["time_per_step_vs_token"] == pytest.approx(1.0)
    assert report["systems"]["Diffusion + planning"]["denoiser_evals_per_call"] == 7  # 4 DDIM steps x CFG, not at T-1
    assert report["chance_accuracy"] is not None  # True / False answers
    assert len(report["entropy_curve"]["points"]) == 3 and "fit" in report["entropy_curve"]  # epochs 2, 4, 6
    assert 0 <= res["Soft Thinking"]["soft_token_share"] <= 1
    assert res["Diffusion + planning"]["denoiser_evals_per_step"] == pytest.approx(
        7 * res["Diffusion + planning"]["forward_passes_per_step"])
    for name, r in res.items():  # a CI over problems around every accuracy; accuracy per hop count (logic chains)
        lo, hi = r["accuracy_ci"]
        assert 0 <= lo <= r["accuracy"] <= hi <= 1 and len(r["per_problem_accuracy"]) == report["problems"]
        assert set(r["accuracy_by_hops"]) <= {"2", "3", "4"}
    for name in ("token Llama", "Base-LCM + planning"):  # entropy per step on matched units, both kinds of model
        assert res[name]["step_entropy"] >= 0 and res[name]["step_states"] >= 1
    assert res["Diffusion + planning"]["step_entropy"] is None  # a sampler has no step policy: n/a
    for name, r in report["results"].items():  # training compute: each system's run, the encoder in concept runs
        if name == "encoder follower (0 parameters)":
            assert r["train_flops"] == r["train_seconds"] == 0
            continue
        concept = not (name.startswith("token") or name.startswith("Soft Thinking"))
        assert r["train_flops"] > 0 and (r["train_flops_encoder"] > 0) == concept, name
        assert r["train_seconds"] > 0, name  # the run's fit wall time (training_cost.json)
    assert res["Soft Thinking"]["train_flops"] == res["token Llama"]["train_flops"]  # one run, several rows
    assert read_out["train_seconds"] > res["Base-LCM + planning"]["train_seconds"]  # the concept run's + the decoder's
    assert 0 < sum(r["train_seconds"] for r in (res["token Llama"], res["Base-LCM + planning"])) < report["wall_seconds"]
    curves = report["validation_curves"]
    assert set(curves) == {"Base-LCM + planning", "Diffusion + planning", "token Llama",
                           "Base-LCM + planning, read out by the decoder"}  # the last: the decoder's own loss
    assert all(len(c["step"]) == len(c["val_loss"]) == 6 for n, c in curves.items() if "decoder" not in n)
    for png in ("entropy_histogram", "accuracy_vs_samples", "accuracy_vs_hops", "diversity", "entropy_curve",
                "validation_curves"):
        assert (tmp_path / "report" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| token Llama |" in md and "Soft Thinking" in md


def test_compare_config_values_arrive(tmp_path):
    from lcm.eval.compare_config import load_config

    written = {"max_topk": 7, "min_p": 0.002, "cold_stop_patience": 2, "think_end": "Answer:", "noise": "dirichlet"}
    path = tiny_config(tmp_path, k=3, soft_thinking=written, concept_greedy=False)
    cfg = load_config(["-c", path, "--problems", "5", "--no-progress", "--soft_thinking.dirichlet_alpha", "2.5"])
    assert cfg.k == 3 and cfg.problems == 5 and not cfg.show_progress and cfg.train_overrides == TINY
    assert cfg.concept_greedy is False and load_config(["-c", tiny_config(tmp_path)]).concept_greedy is True
    st = cfg.soft_thinking
    assert (st.max_topk, st.min_p, st.cold_stop_patience, st.think_end, st.noise, st.dirichlet_alpha) == (
        7, 0.002, 2, "Answer:", "dirichlet", 2.5)
    assert (st.temperature, st.top_k, st.top_p, st.cold_stop_entropy) == (0.6, 30, 0.95, 0.01)  # official defaults
    assert cfg.token.max_new_tokens == 24
    soft_thinking_keywords_reach_generate(cfg)
    base, diffusion = cfg.concept
    assert base.sampling.kwargs() == {"noise": 0.5} and diffusion.sampling.ddim_steps == 4
    assert diffusion.sampling.kwargs() == {"ddim_steps": 4}


def soft_thinking_keywords_reach_generate(cfg) -> None:
    """Each token row's keywords, as `token_samples` passes them, run `TokenLM.generate` (a tiny untrained model)."""
    from dataclasses import replace

    from lcm.eval.sampling_runs import token_keywords
    from lcm.handoff import TextData
    from lcm.model import LCMConfig
    from lcm.token_model import TokenLM

    rows = {mode: token_keywords(cfg, mode=mode) for mode in ("sample", "greedy", "soft", "soft_noisy")}
    assert rows["greedy"] == {"mode": "greedy", "num_samples": 1} and token_keywords(cfg, True) == rows["soft"]
    assert rows["soft"]["soft"] == replace(cfg.soft_thinking, noise="none") and rows["soft"]["num_samples"] == 1
    assert rows["soft_noisy"]["soft"] == cfg.soft_thinking and rows["soft_noisy"]["num_samples"] == cfg.k
    plain = replace(cfg, soft_thinking=replace(cfg.soft_thinking, noise="none"))
    assert token_keywords(plain, mode="soft_noisy")["soft"].noise == "gumbel"  # the noisy row always has noise
    model = TokenLM(arch=LCMConfig(d_model=16, n_layer=1, n_head=2, max_seq_len=32), vocab_size=300)
    model.attach_data(TextData("tiny", lambda: ["Ann has 3 pens.", "3 + 4 = 7", "Answer: 7"] * 5))
    for mode, kw in rows.items():
        assert len(model.eval().generate("Ann has 3 pens.", max_new_tokens=3, seed=0, **kw)) == kw["num_samples"], mode


@pytest.mark.parametrize("yaml_text, message", [
    ("problem: 5\n", "'problem'"),  # a typo of `problems`
    ("soft_thinking: {top_kk: 3}\n", "'top_kk'"),
    ("concept: [{name: a, config: b, sampling: {temp: 2}}]\n", "'temp'"),
    ("concept: [{name: a, config: b, sampling: {diffusion_steps: 4}}]\n", "'diffusion_steps'"),  # now ddim_steps
    ("k: 0\n", '"k"'),
    ("concept: []\n", "no concept systems"),
    ("lr_sweep: [0.001]\n", "lr_sweep needs at least 2"),
    ("lr_sweep: [0.001, -0.01]\n", "lr_sweep needs at least 2"),
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


def test_lr_sweep_trains_each_rate_and_keeps_the_lowest_validation_loss(tmp_path, monkeypatch):
    """Two learning rates for one tiny concept system: each rate arrives in its run's saved config, the chosen
    one has the lowest best val/loss, and a second sweep reuses the runs (no retraining)."""
    from lcm.eval.lr_sweep import best_validation_loss, sweep

    monkeypatch.chdir(tmp_path)
    systems = {"Base-LCM": str(REPO / "train/configs/logic_planning.yaml")}
    tiny = [*TINY[:-4], "--trainer.max_epochs", "2"]
    out = sweep(systems, [3e-4, 3e-3], seed=0, root=tmp_path / "runs", overrides=tiny)["Base-LCM"]
    for lr, run in out["runs"].items():
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["model"]["init_args"]["optim"]["lr"] == lr
        assert out["val_loss"][lr] == best_validation_loss(run)
    assert out["chosen"] == min(out["val_loss"], key=out["val_loss"].get)
    stamps = {lr: (run / "metrics.csv").stat().st_mtime_ns for lr, run in out["runs"].items()}
    again = sweep(systems, [3e-4, 3e-3], seed=0, root=tmp_path / "runs", overrides=tiny)["Base-LCM"]
    assert {lr: (run / "metrics.csv").stat().st_mtime_ns for lr, run in again["runs"].items()} == stamps


def test_choose_prefers_finite_then_smaller():
    from lcm.eval.lr_sweep import choose

    assert choose({1e-3: 0.5, 3e-3: 0.4, 1e-2: float("nan")}) == 3e-3
    assert choose({1e-3: 0.4, 3e-3: 0.4}) == 1e-3
    assert choose({1e-3: float("nan"), 3e-3: float("nan")}) == 1e-3
