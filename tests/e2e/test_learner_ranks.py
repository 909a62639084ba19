"""The learner under torchrun with 2 ranks (gloo, CPU), against a real Redis, the real vLLM CPU server and the real
control API: rank 0 alone talks to them, both ranks train, and the result is a lone learner's.

The test stands in for the rollout workers: it appends the same prepared groups (sampled from the tiny model) to
each run's stream, so that runs with 1 and 2 ranks train on exactly the same data.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from cfpo.clients.generation import GenerationClient, PolicyVersion
from cfpo.queue import QueueSettings, RolloutQueue
from cfpo.rollout_group import RolloutGroup
from tests.e2e.conftest import _env, _jsonl
from tests.servers import free_port, python_module, running, stop
from trainer.sampling import sample_batch

pytestmark = pytest.mark.slow
PROMPTS, GROUP, STEPS = 2, 4, 6
SPEC = {
    "task": {"kind": "arithmetic", "difficulty": [1, 2], "seed": 0},
    "rollout": {"group_size": GROUP, "prompts_per_step": PROMPTS, "max_tokens": 12, "rewards": {"digit_share": 1.0}},
    "learner": {
        "loss": {"name": "cfpo", "ratio_reference": "behaviour"},
        "optimizer": {"lr": 5.0e-3},
        # Each rank's 4 sequences cut by padded tokens: ranks can need different counts, and agree on the most.
        "max_tokens_per_micro_batch": 40,
    },
    "staleness": {"mode": "bounded", "max_staleness": 8},
    "evaluation": {"problems": 0},
    "steps": STEPS,
    "checkpoint_every": 2,
}


@pytest.fixture(scope="module")
def groups(stack) -> list[list]:
    samples = sample_batch(
        stack.model_dir, [f"Question: what is {i} + 2?" for i in range(PROMPTS * STEPS)], GROUP, max_new_tokens=12
    )
    return [samples[i * GROUP : (i + 1) * GROUP] for i in range(PROMPTS * STEPS)]


def _append(stack, run_id: str, groups: list[list], slots: range) -> None:
    with RolloutQueue(run_id, QueueSettings(redis_url=stack.redis_url)) as queue:
        for slot in slots:
            queue.append(RolloutGroup(run_id=run_id, prompt_id=f"p{slot}", slot=slot, samples=groups[slot]))


def _torchrun(*args: str) -> list[str]:
    return python_module(
        "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "trainer", *args
    )


def _start(argv: list[str], stack, log: Path) -> subprocess.Popen:
    env = {**_env(stack), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    tag = (run_dir / "checkpoints" / "latest").read_text()
    assert tag.startswith(f"version-{STEPS}-")
    checkpoint = run_dir / "checkpoints" / tag / "mp_rank_00_model_states.pt"
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["module"]


def _assert_trained_alike(run_dir: Path, reference_dir: Path) -> None:
    """The same steps as the lone learner's: every step's loss and (unclipped) gradient norm, which a wrong
    gradient scale would change, and the final weights, up to float rounding (summed in another order, then
    amplified by Adam's normalisation: about 4e-5 seen after 6 steps of lr 5e-3, each moving weights by up to 5e-3)."""
    rows, expected_rows = _jsonl(run_dir / "metrics.jsonl"), _jsonl(reference_dir / "metrics.jsonl")
    for key in ("loss", "grad_norm", "entropy", "behaviour_clip_frac", "tokens", "adv_std", "behaviour_ess"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in expected_rows], rel=1e-4, abs=1e-6), key
    weights, expected = _final_weights(run_dir), _final_weights(reference_dir)
    assert weights.keys() == expected.keys()
    worst = max(float((weights[k] - expected[k]).abs().max()) for k in expected)
    assert worst < 5e-4, f"weights differ by up to {worst:.2e}"


def _assert_every_slot_once(run_dir: Path) -> None:
    applied = _jsonl(run_dir / "applied.jsonl")
    assert [row["step"] for row in applied] == list(range(STEPS))
    assert [row["slots"] for row in applied] == [[2 * s, 2 * s + 1] for s in range(STEPS)]
    assert [row["step"] for row in _jsonl(run_dir / "metrics.jsonl")] == list(range(STEPS))


def _rank_process(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the launcher's worker of ``rank`` (from its environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if parent == launcher.pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no rank {rank} process under the launcher {launcher.pid}")


def _wait_for(condition, what: str, timeout: float = 240.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process is None or process.poll() is None, f"{what}: the learner exited ({process.returncode})"
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s"
        time.sleep(0.3)


def test_two_ranks_train_as_one_through_the_api_and_resume_after_losing_a_rank(stack, groups, tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({"model": str(stack.model_dir), **SPEC}))

    # One rank, the reference: the same groups, one process.
    alone = _start(
        python_module("trainer", "--spec", str(spec_path), "--run-id", "alone", "--run-dir", str(tmp_path / "alone")),
        stack,
        tmp_path / "alone.log",
    )
    _append(stack, "alone", groups, range(PROMPTS * STEPS))
    assert alone.wait(300) == 0, (tmp_path / "alone.log").read_text()[-3000:]
    reference, trained = tmp_path / "alone", _final_weights(tmp_path / "alone")
    initial = AutoModelForCausalLM.from_pretrained(stack.model_dir, dtype=torch.float32).state_dict()
    assert max(float((trained[k] - initial[k]).abs().max()) for k in trained) > 1e-2  # it trained: checks can fail

    # Two ranks in worker mode, the run submitted through the REST API.
    api_port, metrics_port = free_port(), free_port()
    control = python_module("services.control", "--port", str(api_port), "--generation-url", stack.generation_url)
    with running(control, f"http://127.0.0.1:{api_port}/health", log=tmp_path / "control.log", env=_env(stack)):
        worker = _start(
            _torchrun("--worker", "--runs-dir", str(tmp_path / "runs"), "--metrics-port", str(metrics_port)),
            stack,
            tmp_path / "worker.log",
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as client:
                created = client.post("/v1/runs", json={"model": str(stack.model_dir), **SPEC})
                assert created.status_code == 201, created.text
                run_id = created.json()["id"]
                _append(stack, run_id, groups, range(PROMPTS * STEPS))
                _wait_for(
                    lambda: client.get(f"/v1/runs/{run_id}").json()["state"] not in ("queued", "running"),
                    "the run through the API",
                    process=worker,
                )
                run = client.get(f"/v1/runs/{run_id}").json()
            assert (run["state"], run["steps_done"], run["version"]) == ("succeeded", STEPS, STEPS), run
            scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text  # rank 0's: rank 1 bound none
            [pushes] = re.findall(rf'cfpo_learner_weight_sync_seconds_count{{run="{run_id}"}} (\S+)', scrape)
            assert float(pushes) == 1 + STEPS  # the start, then one per optimizer step (sync_every 1)
        finally:
            stop(worker, grace=30)
    assert GenerationClient(stack.generation_url).version() == PolicyVersion(run_id, STEPS)
    _assert_every_slot_once(tmp_path / "runs" / run_id)
    with RolloutQueue(run_id, QueueSettings(redis_url=stack.redis_url)) as queue:
        assert queue.depth().total == 0  # every entry acknowledged
    _assert_trained_alike(tmp_path / "runs" / run_id, reference)

    # Two ranks on one run by hand: rank 1 killed mid-run, the group restarted with --resume.
    run_dir, log = tmp_path / "resumed", tmp_path / "resumed.log"
    one_run = ("--spec", str(spec_path), "--run-id", "resumed", "--run-dir", str(run_dir))
    first = _start(_torchrun(*one_run), stack, log)
    _append(stack, "resumed", groups, range(PROMPTS * 3))  # three steps' groups: it then waits for the fourth
    _wait_for(lambda: len(_jsonl(run_dir / "applied.jsonl")) == 3, "three steps", process=first)
    os.kill(_rank_process(first, 1), signal.SIGKILL)
    assert first.wait(120) != 0  # the launcher ends the group when a rank dies
    _append(stack, "resumed", groups, range(PROMPTS * 3, PROMPTS * STEPS))
    second = _start(_torchrun(*one_run, "--resume"), stack, log)
    assert second.wait(300) == 0, log.read_text()[-3000:]
    _assert_every_slot_once(run_dir)
    _assert_trained_alike(run_dir, reference)
