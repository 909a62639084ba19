"""A submit is refused (422, naming the field) when the workers could not use the spec: an arithmetic task asked
for more problems than its levels hold, a task file that is not there, a reward function the reward service does not
have. Against a real reward service and control API."""

import httpx
import pytest

from cfpo.tasks import ArithmeticTask
from tests.services.control.conftest import control_api, spec
from tests.services.reward.server import TEST_SERVER_ARGS, Server


@pytest.fixture(scope="module")
def reward_service(tmp_path_factory):
    server = Server(TEST_SERVER_ARGS, tmp_path_factory.mktemp("reward") / "reward.log")  # with the test plugins
    server.wait_ready(timeout=60)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def checking_api(redis_url, reward_service, tmp_path_factory):
    with control_api(
        redis_url, tmp_path_factory.mktemp("checks") / "api.log", "--reward-url", reward_service.url
    ) as api:
        yield api


def _arithmetic(**settings) -> dict:
    return spec(task={"kind": "arithmetic", **settings})


def test_an_arithmetic_task_asked_for_more_problems_than_it_holds_is_refused_naming_each_size(client):
    """One-digit sums: 100 expressions, 91 train and 9 eval at eval_fraction 0.1. Accepted, the run would fail at
    the learner's claim (its held-out set) and in every rollout worker."""
    task = ArithmeticTask(difficulty=[1])
    assert (task.capacity("train"), task.capacity("eval")) == (91, 9)  # the count the learner's load refuses by
    refused = client.post("/v1/runs", json=_arithmetic(difficulty=[1]))
    assert refused.status_code == 422
    train, held_out = refused.json()["detail"]
    assert train["loc"] == ["body", "task", "train_size"] and held_out["loc"] == ["body", "task", "eval_size"]
    assert held_out["msg"] == (
        "task.eval_size: difficulty [1] holds only 9 distinct eval problems at eval_fraction 0.1, not 100; ask for "
        "at most 9, add a harder level or raise eval_fraction"
    )
    assert train["msg"].startswith("task.train_size: difficulty [1] holds only 91 distinct train problems")
    assert "task.eval_size" in refused.json()["message"]
    one_over = client.post("/v1/runs", json=_arithmetic(difficulty=[1], train_size=91, eval_size=10))
    assert one_over.status_code == 422 and [p["loc"][-1] for p in one_over.json()["detail"]] == ["eval_size"]


def test_an_arithmetic_task_at_its_capacity_is_accepted(client):
    at_capacity = client.post("/v1/runs", json=_arithmetic(difficulty=[1], train_size=91, eval_size=9))
    assert at_capacity.status_code == 201, at_capacity.text
    # the eval split is loaded only for evaluation: with none, its size is not held to the level
    no_eval = client.post(
        "/v1/runs", json={**_arithmetic(difficulty=[1], train_size=91), "evaluation": {"problems": 0}}
    )
    assert no_eval.status_code == 201, no_eval.text
    large = client.post("/v1/runs", json=_arithmetic(difficulty=[4], train_size=10_000_000, eval_size=100_000))
    assert large.status_code == 201, large.text  # counted, not drawn: the answer is immediate


def _file_task(path, **more) -> dict:
    return spec(task={"kind": "file", "path": str(path), **more})


def test_a_task_file_that_is_not_there_is_refused_naming_the_field(checking_api, tmp_path):
    present = tmp_path / "train.jsonl"
    present.write_text('{"prompt": "1+1", "answer": "2"}\n')
    with checking_api.client() as client:
        missing = client.post("/v1/runs", json=_file_task(tmp_path / "nope.jsonl"))
        assert missing.status_code == 422
        [problem] = missing.json()["detail"]
        assert problem["loc"] == ["body", "task", "path"]
        assert problem["msg"].startswith(f"task.path: {tmp_path / 'nope.jsonl'}: no readable file there")
        no_eval = client.post("/v1/runs", json=_file_task(present, eval_path=str(tmp_path / "eval.jsonl")))
        assert no_eval.status_code == 422 and no_eval.json()["detail"][0]["loc"] == ["body", "task", "eval_path"]
        assert client.post("/v1/runs", json=_file_task(present)).status_code == 201


def test_reward_functions_the_reward_service_lacks_are_refused_naming_them(checking_api, reward_service):
    functions = httpx.get(f"{reward_service.url}/v1/functions").json()["functions"]
    assert {"exact_match", "digit_share", "raises"} <= functions.keys()  # built-ins and the test plugins'
    assert functions["digit_share"]  # with its description
    with checking_api.client() as client:
        unknown = client.post("/v1/runs", json=spec(rollout={"rewards": {"digit_share": 0.5, "exact_mach": 0.5}}))
        assert unknown.status_code == 422
        [problem] = unknown.json()["detail"]
        assert problem["loc"] == ["body", "rollout", "rewards", "exact_mach"]
        assert "no function 'exact_mach'; it has " in problem["msg"] and "exact_match" in problem["msg"]
        plugin = client.post("/v1/runs", json=spec(rollout={"rewards": {"raises": 1.0}}))
        assert plugin.status_code == 201, plugin.text


def test_an_unreachable_reward_service_is_a_503_not_an_accepted_run(redis_url, tmp_path):
    with (
        control_api(redis_url, tmp_path / "api.log", "--reward-url", "http://127.0.0.1:9") as api,
        api.client() as client,
    ):
        response = client.post("/v1/runs", json=spec(rollout={"rewards": {"digit_share": 1.0}}))
        assert response.status_code == 503 and "/v1/functions" in response.json()["detail"]
        assert client.get("/v1/runs", params={"state": "queued"}).json()["runs"] == []
