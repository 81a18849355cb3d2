"""What a run leaves to look at: TensorBoard event files beside metrics.csv, and `lcm plot` PNG curves."""
from __future__ import annotations

from conftest import run_lcm


def test_a_fit_writes_tensorboard_events_beside_the_csv(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(trained_run.glob("events.out.tfevents.*"))
    assert events and (trained_run / "metrics.csv").is_file()  # one run, one folder
    acc = EventAccumulator(str(trained_run))
    acc.Reload()
    assert {"train/loss", "val/loss", "val/step_cosine"} <= set(acc.Tags()["scalars"])


def test_lcm_plot_writes_png_curves(trained_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "quickstart" / "version_0"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    code, _ = run_lcm(["plot", str(run)])
    assert code == 0
    pngs = {p.name for p in (run / "plots").glob("*.png")}
    assert {"loss.png", "cosine.png", "retrieval.png"} <= pngs
    assert all((run / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    code, err = run_lcm(["plot", str(tmp_path)], capsys)
    assert code == 2 and "has no metrics.csv" in err and err.count("\n") == 1


def test_read_metrics_takes_the_last_row_of_a_step_that_a_resumed_run_repeats(tmp_path):
    from lcm.eval.plot import read_metrics

    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss,val/loss\n0,9,2.0,\n0,9,,1.5\n1,19,1.0,\n"
                                          "1,19,,1.2\n0,9,1.9,\n0,9,,1.4\n1,19,0.9,\n")  # killed at step 19, resumed at 9
    series = read_metrics(tmp_path)
    assert series["train/loss"] == [(9.0, 1.9), (19.0, 0.9)] and series["val/loss"] == [(0.0, 1.4), (1.0, 1.2)]
