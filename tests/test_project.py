"""Project hygiene: CI runs the README's test command; the code is ruff clean."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- test-command -->")[1].split("<!-- /test-command -->")[0]
    cmd = [ln for ln in block.strip().splitlines() if not ln.startswith("```")]
    assert cmd == ['pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest -q']
    assert "test-command" in (ROOT / ".ci" / "run").read_text()


def test_ruff_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed")
    res = subprocess.run([ruff, "check", "src", "tests", "benchmarks"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
