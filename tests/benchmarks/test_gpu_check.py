"""The GPU check's CPU run (``scripts/gpu-check.sh cpu``): every check runs on small shapes and passes, and the table
and record are written. On a GPU the same script runs on Qwen2.5-0.5B's shapes."""

import json
import subprocess

import pytest

from tests import REPO_ROOT

pytestmark = pytest.mark.slow
CHECKS = {"learner ZeRO-0", "learner ZeRO-3", "export under ZeRO-3", "log-prob parity", "launcher"}


def test_the_gpu_check_runs_and_passes_on_cpu(tmp_path):
    done = subprocess.run(
        ["bash", "scripts/gpu-check.sh", "cpu", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu-check.json").read_text())["results"]
    assert set(results) == CHECKS
    assert all(check["passed"] for check in results.values())
    assert results["learner ZeRO-3"]["grad_norm_vs_zero0"] <= 0.01
    export = results["export under ZeRO-3"]
    assert export["dtypes"] == ["BF16"] and export["full_shapes"] and export["bytes"] > 0
    assert "| learner ZeRO-3 | yes |" in (tmp_path / "gpu-check.md").read_text()
