"""``cfpo run ...`` against the real API: tables and progress for people, one readable line for every failure."""

import os
import re
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cfpo.cli.app import app
from cfpo.cli.progress import follow_steps
from cfpo.clients.control import ControlClient
from tests.cli.learner_side import metrics, step_line, train
from tests.servers import stop
from tests.services.control.conftest import TOKEN

CFPO = str(Path(sys.executable).parent / "cfpo")


@pytest.fixture
def cfpo(api):
    def run(*args: str, token: str | None = TOKEN, url: str | None = None):
        env = {"CFPO_API_URL": url or api.url, "CFPO_API_TOKEN": token or "", "COLUMNS": "200"}
        return CliRunner().invoke(app, ["run", *args], env=env)

    return run


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: /models/tiny\nsteps: 3\nlearner:\n  loss:\n    name: grpo\n    ratio_reference: proximal\n")
    return path


ON_POLICY_SPEC = "model: models/tiny\nstaleness: {mode: bounded, max_staleness: 0}\n"  # needs no anchor named


def submitted_id(output: str) -> str:
    return output.split("submitted run ")[1].split()[0]


def test_submit_list_show_cancel(cfpo, spec_file):
    submitted = cfpo("submit", str(spec_file), "--name", "from-cli")
    assert submitted.exit_code == 0, submitted.output
    run_id = submitted_id(submitted.output)
    listed = cfpo("list", "--state", "queued")
    assert run_id in listed.output and "from-cli" in listed.output and "grpo" in listed.output
    shown = cfpo("show", run_id)
    assert "queued" in shown.output and "0/3" in shown.output and "bounded, bound 4" in shown.output
    cancelled = cfpo("cancel", run_id, "--reason", "typo in the spec")
    assert cancelled.exit_code == 0 and f"run {run_id}: cancelled" in cancelled.output
    assert "typo in the spec" in cfpo("show", run_id).output


def test_a_relative_model_is_sent_as_an_absolute_path(cfpo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text(ON_POLICY_SPEC)
    run_id = submitted_id(cfpo("submit", "run.yaml").output)
    assert str(tmp_path / "models" / "tiny") in cfpo("show", run_id).output


def test_model_option_names_the_directory_as_the_stack_sees_it(cfpo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text(ON_POLICY_SPEC)
    run_id = submitted_id(cfpo("submit", "run.yaml", "--model", "/data/models/smollm2-135m-instruct").output)
    shown = cfpo("show", run_id).output
    assert "/data/models/smollm2-135m-instruct" in shown and str(tmp_path) not in shown


def test_watch_prints_a_line_per_step_when_its_output_is_not_a_terminal(
    cfpo, spec_file, registry, worker, api, tmp_path
):
    run_id = submitted_id(cfpo("submit", str(spec_file)).output)
    log = tmp_path / "watch.log"
    env = {**os.environ, "CFPO_API_URL": api.url, "CFPO_API_TOKEN": TOKEN}
    with log.open("w") as out:  # as `cfpo run watch ID > watch.log` would: a file, not a terminal
        watch = subprocess.Popen([CFPO, "run", "watch", run_id, "--interval", "1"], stdout=out, env=env)
        try:
            deadline = time.monotonic() + 60
            while f"{run_id} queued" not in log.read_text():  # following it, before it starts
                assert watch.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            assert train(registry, worker, 3, seconds=0.3) == run_id  # faster than it polls
            assert watch.wait(60) == 0, log.read_text()
        finally:
            stop(watch)
    lines = log.read_text().splitlines()
    assert lines[0] == f"{run_id} queued", lines
    steps = [line for line in lines if " step " in line]
    assert len(steps) == 3, lines  # every step once, though some were recorded between the same two polls
    for number, line in enumerate(steps, start=1):
        assert re.fullmatch(step_line(run_id, number, 3), line), line
    assert lines[-1] == f"run {run_id}: succeeded"


def test_a_resumed_run_shows_the_steps_it_records_again_and_only_those(
    cfpo, spec_file, registry, worker, api, monkeypatch
):
    monkeypatch.setenv("CFPO_API_TOKEN", TOKEN)
    run_id = submitted_id(cfpo("submit", str(spec_file)).output)
    claim = registry.claim_next(worker)
    for step in range(2):
        registry.record_step(run_id, claim.lease, step, step + 1, metrics(step))
    with closing(ControlClient(api.url)) as client:
        polls = follow_steps(client, run_id, interval=0.01)
        assert [s.index for s in next(polls)[1]] == [0, 1]
        registry.release(run_id, claim.lease, "resumed from its step-1 checkpoint")  # as a reaped run goes back
        claim = registry.claim_next(worker)
        registry.rewind(run_id, claim.lease, 1)
        registry.record_step(run_id, claim.lease, 1, 2, metrics(1) | {"reward_mean": 0.25})
        run, steps = next(polls)
        assert run["restarts"] == 1 and [(s.index, s.metrics["reward_mean"]) for s in steps] == [(1, 0.25)]
        assert steps[0].seconds is None  # the resumed run's first step is not timed from the run's start
        registry.record_step(run_id, claim.lease, 2, 3, metrics(2))
        registry.finish(run_id, claim.lease, "succeeded")
        assert [(run["state"], [s.index for s in steps]) for run, steps in polls] == [("succeeded", [2])]


def test_watch_exits_1_for_a_run_that_did_not_succeed(cfpo, spec_file):
    run_id = submitted_id(cfpo("submit", str(spec_file)).output)
    cfpo("cancel", run_id)
    watched = cfpo("watch", run_id)
    assert watched.exit_code == 1 and f"run {run_id}: cancelled (cancelled from the command line)" in watched.output


@pytest.mark.parametrize(
    "args, token, url, message",
    [
        (["list"], None, None, "error: missing bearer token"),
        (["list"], "wrong", None, "error: wrong bearer token (set CFPO_API_TOKEN to the API's token)"),
        (["list"], TOKEN, "http://127.0.0.1:9", "error: cannot reach the control API at http://127.0.0.1:9"),
        (["show", "0123456789ab"], TOKEN, None, "error: HTTP 404: run '0123456789ab': no such run"),
        (["submit", "missing.yaml"], TOKEN, None, "error: missing.yaml: cannot read it"),
    ],
)
def test_failures_are_one_readable_line(cfpo, args, token, url, message):
    result = cfpo(*args, token=token, url=url)
    assert result.exit_code == 1
    assert result.output.startswith(message) and "Traceback" not in result.output


def test_an_invalid_spec_names_the_field(cfpo, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: /models/tiny\nloss: no-such-loss\n")
    result = cfpo("submit", str(path))
    assert result.exit_code == 1
    assert "HTTP 422: loss: unknown field (did you mean learner.loss.name?)" in result.output


def test_a_stored_spec_that_no_longer_validates_is_shown_as_such_and_its_claim_fails_it(cfpo, spec_file, registry):
    run_id = submitted_id(cfpo("submit", str(spec_file)).output)
    # What a schema change after submission looks like in Redis: a key this version no longer knows.
    registry.redis.hset(f"run:{run_id}:record", "spec", '{"model": "/models/tiny", "steps": 3, "renamed_key": 1}')
    listed = cfpo("list")
    assert listed.exit_code == 0 and run_id in listed.output and "(invalid spec)" in listed.output, listed.output
    shown = cfpo("show", run_id)
    assert shown.exit_code == 0 and "no longer valid: renamed_key: Extra inputs are not permitted" in shown.output, (
        shown.output
    )

    assert registry.claim_next("learner-test") is None  # no worker can run it: the claim fails it, with why
    failed = registry.get(run_id)
    assert failed.state == "failed" and "stored spec no longer validates: renamed_key" in failed.reason
