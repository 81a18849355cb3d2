"""The floors of the house, checked by import-linter's layers contract (pyproject.toml, docs/architecture.md).

`lint-imports` builds its import graph by walking the root package's folder, so in a source checkout it
sees `lcm/` but not the folders setuptools maps into it (`encoders/` -> `lcm.encoders`, ...). The test
assembles the installed layout from pyproject's own `package-dir` table in a temp folder and runs the
standard tool there, in a subprocess whose working directory is not the checkout.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"


def assemble(dest: Path) -> Path:
    """Copy every mapped package's .py files to dest/<dotted path>/ as an install would lay them out."""
    mapping = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in mapping.items():
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for f in (REPO / folder).glob("*.py"):
            shutil.copy2(f, target / f.name)
    return dest


def lint(site: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is a test dependency (pip install -e '.[test]')"
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([exe, "--no-cache", str(PYPROJECT)], cwd=site, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    return assemble(tmp_path / "site")


def test_floors_hold(site):
    out = lint(site)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout


@pytest.mark.parametrize("module, planted, message", [
    ("model.py", "from lcm.train.corpus import GsmSymbolic", "lcm.model is not allowed to import lcm.train"),
    ("encoders/cache.py", "import lcm.retrieval", "lcm.encoders is not allowed to import lcm.retrieval"),
    ("errors.py", "from lcm.io import write_json", "lcm.errors is not allowed to import lcm.io"),
])
def test_a_planted_upward_import_breaks_the_contract(site, module, planted, message):
    with open(site / "lcm" / module, "a") as f:
        f.write(f"\n{planted}  # planted by the test\n")
    out = lint(site)
    assert out.returncode != 0 and message in out.stdout, out.stdout + out.stderr


def test_a_module_without_a_floor_is_refused(site):
    (site / "lcm" / "newcomer.py").write_text('"""A module nobody placed on a floor."""\n')
    out = lint(site)
    assert out.returncode != 0 and "newcomer" in out.stdout + out.stderr
