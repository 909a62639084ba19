"""End-to-end runs of the asynchronous pipeline on the tiny model."""

import re
import signal
import statistics

import httpx
import pytest
import yaml

from cfpo.metrics import LEARNER_STEP_VALUES
from tests.e2e.conftest import toy_spec_with as _with
from tests.servers import free_port

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("loss", ["cfpo", "grpo"])
def test_reward_rises_on_a_dense_toy_reward(start_run, loss):
    # Measured (lr 5e-3, 20 steps, digit_share): first five steps' mean reward about 0.58, last five about
    # 0.74 (cfpo) and 0.76 (grpo).
    run = start_run(_with(learner__loss={"name": loss, "ratio_reference": "behaviour"}))
    metrics_port = free_port()
    run.start_learner("--metrics-port", str(metrics_port))
    run.wait_for_steps(3)
    exported = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    run.wait()
    for name in (
        "cfpo_learner_behaviour_clip_frac",
        "cfpo_learner_proximal_kl_k3",
        "cfpo_learner_staleness_bucket",
        "cfpo_learner_weight_sync_seconds_count",
        "cfpo_learner_behaviour_clip_frac_by_staleness",
    ):
        assert f"{name}{{" in exported and f'loss="{loss}"' in exported, name
    rows = run.metrics()
    assert [row["step"] for row in rows] == list(range(20))
    rewards = [row["reward_mean"] for row in rows]
    assert statistics.fmean(rewards[-5:]) - statistics.fmean(rewards[:5]) > 0.08, rewards
    every_step = {*LEARNER_STEP_VALUES, "staleness_max", "weight_sync_seconds", "step", "version"}
    for row in rows:
        assert not every_step - row.keys(), (row["step"], every_step - row.keys())
        assert {
            f"{key}/staleness_{bucket}"
            for key in ("behaviour_clip_frac", "proximal_kl_k3", "behaviour_tv")
            for bucket in ("0", "1")
        } & row.keys()
    # Held-out evaluation (the spec's default: before and after training) on policies generation served.
    evaluations = run.evaluations()
    assert [(e["step"], e["version"], e["n"]) for e in evaluations] == [(0, 0, 32), (20, rows[-1]["version"], 32)]
    assert all(0 <= e["accuracy"] <= 1 for e in evaluations)
    assert "cfpo_learner_eval_accuracy{" in exported and "cfpo_learner_eval_mean_reward{" in exported
    recorded = yaml.safe_load((run.directory / "spec.yaml").read_text())  # what cfpo report reads
    assert recorded["learner"]["loss"]["name"] == loss and recorded["learner"]["loss"]["ratio_reference"] == "behaviour"


def test_bounded_staleness_holds_with_two_workers(start_run):
    run = start_run(_with(staleness={"mode": "bounded", "max_staleness": 2}, steps=12), workers=2)
    run.start_learner()
    run.wait()
    rows = run.metrics()
    assert max(row["staleness_max"] for row in rows) <= 2
    assert max(row["staleness_max"] for row in rows) >= 1  # generation really ran ahead of the learner
    versions = [row["version"] for row in rows]
    assert versions == sorted(versions) and versions[-1] == 12


def test_fixed_staleness_makes_every_step_exactly_k_old(start_run):
    run = start_run(_with(staleness={"mode": "fixed", "k": 3}, rollout__max_inflight_groups=3, steps=10), workers=2)
    run.start_learner()
    run.wait()
    slots = [slot for line in run.applied() for slot in line["slots"]]
    assert sorted(slots) == list(range(10 * 4))  # each slot once, with 2 workers x 3 groups in flight
    rows = run.metrics()
    warm_up = [row for row in rows if row["warm_up"]]
    assert [row["step"] for row in warm_up] == [0, 1, 2]  # no policy is 3 versions older than these
    for row in rows:
        if not row["warm_up"]:
            assert row["staleness_mean"] == row["staleness_max"] == 3, row["step"]


def test_killed_learner_resumes_with_every_entry_applied_once(start_run):
    spec = _with(steps=12, checkpoint_every=6)
    run = start_run(spec)
    run.start_learner()
    # Past the checkpoint after step 6, and 5 steps before the next one (the run's end): a tiny step takes ~0.3 s,
    # so the kill lands inside the interval however late in the 0.2 s poll it comes.
    run.wait_for_steps(7)
    run.kill_learner()
    applied_before_kill = len(run.applied())
    run.start_learner("--resume")
    run.wait()
    starts = re.findall(r"starting at step (\d+), version \d+ \((\d+) entries recovered\)", run.log_tail(100_000))
    start, recovered = map(int, starts[-1])  # the second learner's
    assert start == 6 and start < applied_before_kill  # steps after the checkpoint were replayed...
    # ...from the entries the dead learner never acknowledged (applied after its checkpoint, or read ahead).
    assert recovered >= (applied_before_kill - start) * 4
    slots = [slot for line in run.applied() for slot in line["slots"]]
    assert sorted(slots) == list(range(12 * 4))  # each slot once: none lost, none applied twice
    assert [line["step"] for line in run.applied()] == list(range(12))
    assert [e["step"] for e in run.evaluations()] == [0, 12]  # the dead learner's evaluation is not repeated
    with run.queue() as queue:
        depth = queue.depth()
        assert (depth.unread, depth.pending) == (0, 0)  # everything applied was acknowledged
        assert queue.dead_letter_count() == 0


def test_a_stopped_learner_checkpoints_where_it_stopped_and_resumes_there(start_run):
    run = start_run(_with(steps=12, checkpoint_every=100))  # no periodic checkpoint before the end
    run.start_learner()
    run.wait_for_steps(4)
    run.learner.send_signal(signal.SIGTERM)
    assert run.learner.wait(60) == 128 + signal.SIGTERM, run.log_tail()  # stopped, not finished
    stopped_at = len(run.applied())
    assert stopped_at >= 4 and "--resume goes on from it" in run.log_tail()
    run.start_learner("--resume")
    run.wait()
    starts = re.findall(r"starting at step (\d+),", run.log_tail(100_000))
    assert int(starts[-1]) == stopped_at  # the SIGTERM's checkpoint: no step lost, none replayed
    assert sorted(slot for line in run.applied() for slot in line["slots"]) == list(range(12 * 4))


def test_poisoned_entry_is_set_aside_and_the_run_finishes(start_run):
    run = start_run(_with(steps=4))
    with run.queue() as queue:
        queue.redis.xadd(queue.keys.rollouts, {b"schema": b"99", b"body": b"{}"})
    run.start_learner()
    run.wait()
    assert len(run.metrics()) == 4
    with run.queue() as queue:
        [letter] = queue.dead_letters()
        assert queue.dead_letter_count() == 1
    assert "unknown schema version '99'" in letter.reason


def test_a_long_run_keeps_only_its_newest_checkpoints(start_run):
    """A 40-step run checkpointing every 5 steps writes 8 checkpoints and keeps 2 (``keep_checkpoints``)."""
    run = start_run(_with(steps=40, checkpoint_every=5, rollout__prompts_per_step=2))
    run.start_learner()
    run.wait(timeout=400)
    checkpoints = run.directory / "checkpoints"
    assert sorted(int(p.name.split("-")[1]) for p in checkpoints.iterdir() if p.is_dir()) == [35, 40]
    assert (checkpoints / "latest").read_text().startswith("version-40-")  # version-<v>-<claim>
