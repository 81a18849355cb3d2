"""A resumed `lcm fit --ckpt_path runs/NAME/version_N/checkpoints/X.ckpt` continues in `runs/NAME/version_N/`:
one run, one folder, one metrics.csv (Lightning would start version_N+1 and split the curves)."""
from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers.csv_logs import ExperimentWriter


def resumed_version(ckpt_path, logger_cfg) -> int | str | None:
    """The version of the run folder a checkpoint was written in, if that folder belongs to the configured logger
    (`<save_dir>/<name>/<version>/checkpoints/*.ckpt`); else None (a new folder, as Lightning does)."""
    init = getattr(logger_cfg, "init_args", None) if logger_cfg is not None else None
    if not ckpt_path or init is None or getattr(init, "save_dir", None) is None or getattr(init, "name", None) is None:
        return None
    ckpt = Path(str(ckpt_path))
    run = ckpt.parent.parent
    if ckpt.parent.name != "checkpoints" or not ckpt.is_file():
        return None
    if run.parent.resolve() != (Path(str(init.save_dir)) / str(init.name)).resolve():
        return None
    number = run.name.removeprefix("version_")
    return int(number) if run.name.startswith("version_") and number.isdigit() else run.name


class AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes the metrics.csv it finds in its folder; a resumed run appends to it instead
    (keeping its header). Rows the killed run logged after its last checkpoint stay; readers take the last row
    per step (`lcm.eval.plot.read_metrics`)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


def keep_metrics(trainer) -> None:
    """Make the trainer's CSV logger append to its folder's metrics.csv (called before anything is logged)."""
    from lightning.pytorch.loggers import CSVLogger

    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            logger._experiment = AppendingWriter(logger.log_dir)  # the writer Lightning would create lazily
