"""A submit is refused (422, naming the field) when the workers could not use the spec: a task file that is not
there, a reward function the reward service does not have. Against a real reward service and control API."""

import httpx
import pytest

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
