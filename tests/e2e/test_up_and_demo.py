"""``cfpo up`` and ``cfpo demo --tiny`` as a new user runs them, in a fresh directory."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests import REPO_ROOT
from tests.servers import interruptible, stack_port_offset, stop

pytestmark = pytest.mark.slow
CFPO = str(Path(sys.executable).parent / "cfpo")


def _cfpo(*args: str, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([CFPO, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_up_serves_a_submitted_run_and_stops_cleanly(tmp_path):
    offset = stack_port_offset()
    control = f"http://127.0.0.1:{8080 + offset}"
    env = {**os.environ, "CFPO_API_URL": control}
    env.pop("REDIS_URL", None)
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [CFPO, "up", "--port-offset", str(offset)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=interruptible,
    )
    try:
        deadline = time.monotonic() + 300
        while "Ctrl-C stops everything" not in (tmp_path / "up.log").read_text():
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "cfpo up did not come up"
            time.sleep(1)
        submitted = _cfpo("run", "submit", str(REPO_ROOT / "configs/demo-tiny.yaml"), cwd=tmp_path, env=env)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        run_id = re.search(r"submitted run (\S+)", submitted.stdout)[1]
        watched = _cfpo("run", "watch", run_id, "--interval", "1", cwd=tmp_path, env=env)
        assert watched.returncode == 0 and "succeeded" in watched.stdout, watched.stdout + watched.stderr
        reported = _cfpo("report", f"runs/{run_id}", "--out", "report", cwd=tmp_path, env=env)
        assert reported.returncode == 0, reported.stderr
        assert (tmp_path / "report/metrics.png").stat().st_size > 0
    finally:
        up.send_signal(signal.SIGINT)
        try:
            code = up.wait(90)
        finally:
            stop(up)
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert "stopped" in (tmp_path / "up.log").read_text()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{control}/health", timeout=2)


def test_tiny_demo_runs_end_to_end_through_the_rest_api(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    result = _cfpo(
        "demo",
        "--tiny",
        "--spec",
        str(REPO_ROOT / "configs/demo-tiny.yaml"),
        "--eval-problems",
        "8",
        "--port-offset",
        str(stack_port_offset()),
        "--out",
        "demo",
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "held-out accuracy before training" in output and "held-out accuracy after training" in output
    assert "POST" in output and "/v1/runs" in output
    assert (tmp_path / "demo/report/report.md").exists()
