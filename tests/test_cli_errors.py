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


def test_no_subcommand(capsys):
    code, err = run_lcm([], capsys)
    assert_one_line(code, err, "usage: lcm")
