"""Benchmark scripts answer a bad checkpoint path with one `error:` line and exit code 2, as `lcm` does."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script,args", [
    ("boundaries.py", ["--ckpt", "{missing}", "--config", "train/configs/logic_diffusion.yaml"]),
    ("concept_step_speed.py", ["--ckpt", "base={missing}"]),
    ("rl_rollout_cost.py", ["--token", "{missing}", "--concept", "{missing}"]),
])
def test_missing_checkpoint_is_one_error_line(tmp_path, script, args):
    missing = str(tmp_path / "nope.ckpt")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *[a.format(missing=missing) for a in args],
                           "--out", str(tmp_path / "out.json")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln and "warn(" not in ln]
    assert proc.returncode == 2, proc.stderr
    assert lines and lines[-1].startswith("error: ") and "nope.ckpt" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.json").exists()  # nothing written
