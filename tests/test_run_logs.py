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
