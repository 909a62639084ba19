"""A run whose disk is nearly full when a checkpoint is due: the learner does not start a checkpoint it could not
finish; it waits for room (saying how much it needs), goes on once there is some, and the run ends with every
slot applied once. The run's directory is a small tmpfs of its own, so the disk filled is this test's alone."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import TOY_SPEC, toy_spec_with
from tests.faults.conftest import counted

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem (tmpfs) needs root"),
]
PROMPTS = TOY_SPEC["rollout"]["prompts_per_step"]
LEFT_FREE = 384 * 2**10  # room for the run's metric lines, not for a checkpoint of the tiny model


def _mounted_tmpfs(directory: Path, size_mib: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(directory)], check=True)


def test_a_checkpoint_waits_for_room_on_a_nearly_full_disk(start_run, stack, tmp_path):
    steps = 8
    run = start_run(toy_spec_with(steps=steps, checkpoint_every=4))
    _mounted_tmpfs(run.directory, 16)
    filler = run.directory / "filler"
    try:
        with filler.open("wb") as file:
            os.posix_fallocate(file.fileno(), 0, shutil.disk_usage(run.directory).free - LEFT_FREE)
        run.start_learner("--weights-dir", str(tmp_path / "weights"))  # the staged weights live elsewhere

        deadline = time.monotonic() + 180
        while "checkpoint waits for room" not in run.log_tail(1_000_000):
            assert run.learner.poll() is None, run.log_tail()
            assert time.monotonic() < deadline, run.log_tail()
            time.sleep(0.5)
        assert not (run.directory / "checkpoints" / "latest").exists()  # nothing half-written
        time.sleep(3)
        assert run.learner.poll() is None, run.log_tail()  # still waiting, not failed
        filler.unlink()
        run.wait()

        assert (run.directory / "checkpoints" / "latest").read_text().startswith(f"version-{steps}-")
        logs = [run.directory.parent / f"{run.run_id}-learner.log"]
        counts = counted("disk nearly full at a checkpoint", run.run_id, run.directory, logs, stack.redis_url, 0)
        assert counts.exactly_once(steps * PROMPTS)
    finally:
        subprocess.run(["umount", "--lazy", str(run.directory)], check=False)
