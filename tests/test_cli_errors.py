"""Bad input through `lcm fit`: one `error:` line on stderr, exit code 2, no traceback."""
import json

from conftest import CONFIGS, TINY_FIT, run_lcm


def fit_jsonl(path, capsys, *extra):
    return run_lcm(["fit", "-c", str(CONFIGS / "jsonl_example.yaml"), "--data.source.init_args.path", str(path),
                    "--data.show_progress", "false", "--trainer.max_epochs", "1",
                    "--trainer.enable_progress_bar", "false", *extra], capsys)


def assert_one_line(code, err, fragment):
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment in err, err


def test_missing_field(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "q", "steps": ["s"]}) + "\n")
    assert_one_line(*fit_jsonl(path, capsys), "no column(s) ['question', 'answer']")


def test_non_utf8(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"question": "caf\xe9", "steps": ["s"], "answer": "1"}\n')
    assert_one_line(*fit_jsonl(path, capsys), "not valid UTF-8")


def test_all_blank_documents(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": " ", "steps": [], "answer": None}) + "\n")
    assert_one_line(*fit_jsonl(path, capsys), "no usable training documents")


def test_encoder_dim_differs_from_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT, "--data.source.init_args.n", "20",
                         "--model.arch.embed_dim", "512"], capsys)
    assert_one_line(code, err, "has dimension 384 but model.arch.embed_dim is 512")


def test_no_subcommand_prints_the_overview(capsys):
    code, err = run_lcm([], capsys)
    assert code == 2 and err.startswith("usage: lcm") and "Traceback" not in err
    for command in ("lcm fit", "lcm generate", "lcm eval compare", "lcm eval roundtrip"):
        assert command in err, err


def test_help_lists_every_command(capsys):
    for flag in ("--help", "-h"):
        code, _ = run_lcm([flag])
        out = capsys.readouterr().out
        assert code == 0 and out.startswith("usage: lcm")
        for command in ("lcm fit", "lcm validate", "lcm predict", "lcm generate", "lcm eval compare",
                        "lcm eval roundtrip"):
            assert command in out, out
    code, _ = run_lcm(["eval", "--help"])
    out = capsys.readouterr().out
    assert code == 0 and "lcm eval compare" in out and "lcm eval roundtrip" in out


def test_typo_in_a_config_key_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), "--model.archh.d_model", "3"], capsys)
    assert_one_line(code, err, "archh.d_model")
    assert "usage" not in err
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  batch_sise: 8\n")
    code, err = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), "-c", str(typo)], capsys)
    assert_one_line(code, err, "batch_sise")
    code, err = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), "--model.arch.d_model", "abc"], capsys)
    assert_one_line(code, err, "arch.d_model")


def test_a_models_own_check_is_its_one_line_not_a_wrapped_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_lcm(["fit", "-c", str(CONFIGS / "token_baseline_logic.yaml"), "--model.init_args.vocab_size", "10"],
                        capsys)
    assert_one_line(code, err, "vocab_size=10 is below the 259 byte-level tokens")
    assert "Union subtypes" not in err


def test_a_config_dataclass_check_and_a_data_check_of_diffusion_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = [a.replace("--model.", "--model.init_args.") for a in TINY_FIT] + ["--data.source.init_args.n", "20"]
    code, err = run_lcm(["fit", "-c", str(CONFIGS / "quickstart_diffusion.yaml"), *tiny,
                         "--model.init_args.diffusion.plan_source", "regressed"], capsys)
    assert_one_line(code, err, "plan_source 'regressed' reads plans from the context head")
    code, err = run_lcm(["fit", "-c", str(CONFIGS / "quickstart_diffusion.yaml"), *tiny, "--model.init_args.diffusion"
                         ".context_loss", "0.5", "--model.init_args.diffusion.plan_source", "regressed"], capsys)
    assert_one_line(code, err, "this data has no planning")


def test_shape_checks_of_the_arch_and_the_autoencoder_pool_are_one_line(tmp_path, capsys, monkeypatch):
    """`LCMConfig` and `SentenceEncoderConfig` raise `ConfigError`: the CLI prints their line, not jsonargparse's
    traceback around it (both used to be tracebacks)."""
    monkeypatch.chdir(tmp_path)
    code, err = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT, "--model.arch.d_model", "129"],
                        capsys)
    assert_one_line(code, err, "d_model=129 must be divisible by n_head=2")
    ae = ["fit", "-c", str(CONFIGS / "autoencoder_quickstart.yaml"), "--data.init_args.source.init_args.n", "20"]
    code, err = run_lcm([*ae, "--model.init_args.encoder.n_slots", "5"], capsys)
    assert_one_line(code, err, "pool 'slots' needs dim divisible by n_slots")
    code, err = run_lcm([*ae, "--model.init_args.encoder.pool", "max"], capsys)
    assert_one_line(code, err, "pool must be one of mean, attention, slots")
    code, err = run_lcm([*ae, "--model.init_args.token_dropout", "0.1"], capsys)
    assert_one_line(code, err, "token_dropout shifts the tokens")


def test_print_config_still_works(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _ = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), "--print_config"])
    assert code == 0 and "d_model" in capsys.readouterr().out


def test_fit_that_trains_nothing_is_refused(tmp_path, capsys, monkeypatch):
    from lcm.train.cli import _trains_nothing

    monkeypatch.chdir(tmp_path)
    for key in ("max_epochs", "max_steps"):
        code, err = run_lcm(["fit", "-c", str(CONFIGS / "quickstart.yaml"), *TINY_FIT, f"--trainer.{key}", "0"], capsys)
        assert_one_line(code, err, f"--trainer.{key} 0 trains nothing")
    assert not (tmp_path / "runs").exists()
    assert _trains_nothing({"max_epochs": -1, "max_steps": -1}) is None  # unlimited is not "nothing"
    assert _trains_nothing({"max_epochs": None, "max_steps": 10}) is None
