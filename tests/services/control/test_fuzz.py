"""A bounded schema-driven fuzz of every route: whatever the body, path or query, no 5xx, answers as documented, and
every schema-valid request accepted.

The schema states every cross-field rule of the run spec that JSON Schema can (learner.batch_size is read-only,
fixed staleness syncs every version, a stale run names its anchor, grpo has no eps_high, a file task has one eval
source). Five it cannot state, a product, two divisors, one field against another and an arithmetic task's sizes
against what its levels hold, are in the fields' texts; ``_keep_unstatable_rules`` makes a generated spec keep them,
so that everything else the schema admits is tried. The sizes may be fuzzed up to millions: the API counts what a
task holds, it never draws the problems.
The API under test reads no task files and has a budget no spec reaches: those refusals depend on the files and the
other runs, not on the request, and tests/services/control/test_validation.py covers them.
"""

import math
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr

from cfpo.config import MAX_BATCH_SIZE, LearnerConfig
from cfpo.metrics import CONTROL_METRICS, PrometheusRecorder
from cfpo.registry import RunRegistry
from cfpo.run_spec import RolloutConfig, StalenessConfig
from cfpo.tasks import ArithmeticTask
from services.control.app import create_app
from services.control.settings import ControlSettings
from tests.services.control.conftest import TOKEN, Api, control_api


def _schema() -> dict:
    """The OpenAPI schema of the served app, built in-process so that the cases exist at collection time
    (schemathesis' lazy fixture loader breaks on pytest 9). Nothing here connects to Redis."""
    control = ControlSettings(generation_url=None, token=SecretStr(TOKEN))
    return create_app(control, RunRegistry(control.redis_url), PrometheusRecorder(CONTROL_METRICS), None).openapi()


schema = schemathesis.openapi.from_dict(_schema())


@pytest.fixture(scope="module")
def fuzzed_api(redis_url, tmp_path) -> Iterator[Api]:
    with control_api(
        redis_url, tmp_path / "api.log", "--no-check-task-files", "--redis-budget-mib", str(2**40)
    ) as started:
        yield started


@pytest.fixture(scope="module")
def tmp_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _keep_unstatable_rules(spec: dict) -> None:
    """Make a generated spec keep the rules JSON Schema cannot state, changing as little as it can. (Integers may
    come as 5.0: JSON Schema's integer admits them.)"""
    rollout = spec.setdefault("rollout", {})
    group_size = int(rollout.get("group_size", RolloutConfig().group_size))
    prompts = int(rollout.get("prompts_per_step", RolloutConfig().prompts_per_step))
    rollout["prompts_per_step"] = prompts = min(prompts, MAX_BATCH_SIZE // group_size)
    learner = spec.setdefault("learner", {})
    learner["minibatches"] = math.gcd(
        int(learner.get("minibatches", LearnerConfig().minibatches)), prompts * group_size
    )
    if learner.get("micro_batch_size") is not None:
        minibatch = prompts * group_size // learner["minibatches"]
        learner["micro_batch_size"] = math.gcd(int(learner["micro_batch_size"]), minibatch)
        learner.pop("max_tokens_per_micro_batch", None)  # one way to size micro-batches, not both
    staleness = spec.get("staleness", {})
    if staleness.get("mode", "bounded") == "bounded":
        most = int(staleness.get("max_staleness", StalenessConfig().max_staleness)) + 1
        spec["sync_every"] = min(int(spec.get("sync_every", 1)), most)
    task = spec.get("task")
    if isinstance(task, dict) and task.get("kind") == "arithmetic":
        _fit_arithmetic_sizes(task)


def _fit_arithmetic_sizes(task: dict) -> None:
    """Sizes no larger than the task's levels hold (ArithmeticTask.capacity, the rule the API refuses by); a split
    that holds none at this eval_fraction (one-digit sums at 0.999 keep no train problem) gets an even share."""
    try:
        arithmetic = ArithmeticTask.model_validate(task)
    except ValueError:  # pydantic's ValidationError: the API refuses it by the schema's rules, not this one
        return
    if min(arithmetic.capacity("train"), arithmetic.capacity("eval")) < 1:
        task["eval_fraction"] = 0.5
        arithmetic = ArithmeticTask.model_validate(task)
    task["train_size"] = min(arithmetic.train_size, arithmetic.capacity("train"))
    task["eval_size"] = min(arithmetic.eval_size, arithmetic.capacity("eval"))


def test_fuzz_schema_is_the_served_one(fuzzed_api):
    assert httpx.get(fuzzed_api.url + "/openapi.json").json() == _schema()


@schema.parametrize()
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_get_no_server_error(case, fuzzed_api):
    if case.meta.generation.mode.is_positive and case.operation.path == "/v1/runs" and case.method == "POST":
        _keep_unstatable_rules(case.body)
    case.call_and_validate(base_url=fuzzed_api.url, headers={"Authorization": f"Bearer {TOKEN}"})
