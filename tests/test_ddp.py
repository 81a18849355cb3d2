"""Data-parallel training on CPU: `lcm fit` with 2 processes (DDP over gloo) on the tiny config."""
import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import CONFIGS, TINY_FIT


@pytest.mark.timeout(400)
def test_ddp_two_cpu_ranks_train_disjoint_shards(tmp_path):
    cfg = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    base = yaml.safe_load((CONFIGS / "base.yaml").read_text())  # the callbacks the quickstart inherits
    cfg["trainer"]["callbacks"] = [c for c in base["trainer"]["callbacks"] if "GenerationPreview" not in c["class_path"]]
    cfg["trainer"]["callbacks"].append({"class_path": "lcm.train.callbacks.DataShardLog",
                                        "init_args": {"dirpath": str(tmp_path / "shards")}})
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lcm.eval.cli", "fit", "-c", str(config), *TINY_FIT, "--trainer.accelerator", "cpu",
           "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_epochs", "1"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=380)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "shards" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    a, b = (set(r["sequences"]) for r in ranks)
    assert a and b and len(a & b) <= 1  # DistributedSampler repeats one sequence when the count is odd

    from lcm.train.cli import make_cli

    os.chdir(tmp_path)  # the config's cache and data paths are relative
    try:
        dm = make_cli(["-c", str(config), *TINY_FIT], run=False).datamodule
        from lcm.train.callbacks import DataShardLog

        loader = dm.train_dataloader()  # every training window, one per batch
        every = {s for w in loader.dataset for s in DataShardLog.signatures(loader.collate_fn([w]))}
        per_window = [int((loader.collate_fn([w])["types"] >= 0).sum()) - 1 for w in loader.dataset]
    finally:
        os.chdir(CONFIGS.parent.parent)
    assert a | b == every  # together the ranks covered the whole training split
    # training_cost.json sums both ranks' positions: every window once (+ the one DistributedSampler repeats)
    cost = json.loads((tmp_path / "runs" / "quickstart" / "version_0" / "training_cost.json").read_text())
    whole = sum(per_window)
    assert cost["world_size"] == 2 and whole <= cost["positions"] <= whole + max(per_window)

    from lcm.generate import ConceptGenerator

    ckpt = tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    gen = ConceptGenerator.from_checkpoint(ckpt)
    out = gen.generate("Tom has 3 apples and buys 2 more. How many now?", max_steps=3)
    assert out.calls >= 1 and all(s.text in gen.bank.texts for s in out.steps)  # read out of the rank-0 bank
