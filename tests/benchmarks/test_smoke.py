"""``cfpo bench --smoke``: every benchmark runs on the tiny model and writes its tables and JSON (the figures of a
smoke run mean nothing; only that they are there, positive and finite)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import REPO_ROOT
from tests.servers import stack_port_offset

pytestmark = pytest.mark.slow
CFPO = str(Path(sys.executable).parent / "cfpo")
TITLES = (
    "Pipeline halves alone",
    "Asynchronous vs synchronous",
    "Learner overhead",
    "Weight sync",
    "The pipeline beside TRL GRPOTrainer",
    "One training step alone",
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke session of all four benchmarks, in a fresh directory; returns (output, results directory)."""
    directory = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("REDIS_URL", None)
    done = subprocess.run(
        [CFPO, "bench", "--smoke", "--out", "out", "--port-offset", str(stack_port_offset())],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    return done.stdout, directory / "out"


def _numbers(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def _record(out: Path, stem: str, name: str) -> dict:
    record = json.loads((out / f"{stem}.json").read_text())
    assert record["benchmark"] == name and record["smoke"] is True and record["model"] == "tiny"
    assert (out / f"{stem}.md").read_text().startswith("**")
    return record


def _result(out: Path, name: str) -> dict:
    record = _record(out, name, name)
    assert record["shape"] == "demo"
    assert all(math.isfinite(x) for x in _numbers(record["result"])), name
    return record["result"]


def _positive(*values: float) -> bool:
    return all(v > 0 and math.isfinite(v) for v in values)


def test_prints_every_table(smoke):
    output, _ = smoke
    for title in TITLES:
        assert title in output, title


def test_async_vs_sync_has_both_bounds_and_every_mode(smoke):
    result = _result(smoke[1], "async_vs_sync")
    assert _positive(result["bounds"]["sum_of_work"], result["bounds"]["overlap"])
    assert {(r["placement"], r["max_staleness"]) for r in result["runs"]} == {
        (p, m) for p in ("shared", "pinned") for m in (0, 1)
    }
    for run in result["runs"]:
        assert _positive(
            run["samples_per_second"],
            run["tokens_per_second"],
            run["step_seconds"],
            run["generation_busy_seconds"],
            run["learner_train_seconds"],
            run["weight_sync_seconds"],
        )
        assert run["measured_steps"] >= 1
    assert len(result["step_over_sum_of_work"]) == len(result["step_over_overlap"]) == len(result["runs"])
    assert _positive(*result["step_over_sum_of_work"], *result["step_over_overlap"])
    for parts in result["parts"]:
        assert _positive(parts["generation"], parts["learner"])


def test_overhead_has_queue_read_and_weight_push_shares(smoke):
    result = _result(smoke[1], "overhead")
    assert _positive(*result["queue_read"]["seconds"], result["queue_read"]["bytes_per_step"])
    assert len(result["rows"]) == 2
    for row in result["rows"]:
        assert _positive(row["read_decode_share"], row["weight_sync_share"])


def test_weight_sync_has_push_and_copy_rates(smoke):
    result = _result(smoke[1], "weight_sync")
    assert result["rows"]
    for row in result["rows"]:
        assert _positive(row["bytes"], row["push_seconds"], row["push_bytes_per_second"], row["copy_bytes_per_second"])


def _check_peer(result: dict) -> None:
    assert [run["max_staleness"] for run in result["pipeline"]] == [0, 1]
    assert _positive(
        *result["trl"]["step_seconds"],
        *result["trl"]["generation_seconds"],
        *result["trl"]["train_step_seconds"],
        *result["learner_step_seconds"],
    )
    halves, bounds = result["parts"], result["bounds"]
    assert bounds["sum_of_work"] == pytest.approx(halves["generation"] + halves["learner"])
    assert bounds["overlap"] == pytest.approx(max(halves["generation"], halves["learner"]))


def test_peer_trl_has_both_systems_both_training_steps_and_the_bounds(smoke):
    _check_peer(_result(smoke[1], "peer_trl"))


def test_the_rollout_heavy_shape_runs_the_peer_comparison_alone(smoke):
    out = smoke[1]
    record = _record(out, "peer_trl-rollout-heavy", "peer_trl")
    assert record["shape"] == "rollout_heavy"
    assert {k: record["workload"]["rollout"][k] for k in ("group_size", "prompts_per_step", "max_tokens")} == {
        "group_size": 8,
        "prompts_per_step": 16,
        "max_tokens": 64,
    }
    assert record["result"]["completions_per_step"] == 128
    _check_peer(record["result"])
    assert sorted(p.stem for p in out.glob("*-rollout-heavy.json")) == ["peer_trl-rollout-heavy"]
