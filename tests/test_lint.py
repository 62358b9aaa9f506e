"""The code passes the project's ruff rules (pyproject.toml [tool.ruff]): unused names, import order,
bugbear's pitfalls (zip without strict=, mutable defaults) and old syntax are caught in CI, not in review."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests", "benchmarks"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
