"""benchmarks/gpu_check.sh must not rot: its dry run (CPU, tiny) goes through every step."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_the_gpu_check_runs_dry_on_a_cpu_machine(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = (tmp_path / "gpu_check.txt").read_text()
    assert "rounds trained: 1; sites per round: [3]" in summary
    assert "site rounds given a GPU: 0 of 3" in summary
    assert "## models on cpu" in summary and "xresnet1d18" in summary
    assert (tmp_path / "federation" / "report.md").is_file()
