"""A bad spec gets a 422 whose message names the field by its path; unknown keys are refused, with a hint."""

import pytest

from tests.services.control.conftest import spec


@pytest.mark.parametrize(
    "body, message",
    [
        ({"loss": "no-such-loss"}, "loss: unknown field (did you mean learner.loss.name?)"),
        ({"loss": "no-such-loss"}, "model: Field required"),
        (spec(learner={"loss": {"name": "no-such-loss"}}), "learner.loss.name: Input should be 'cfpo', 'grpo'"),
        (spec(stepz=3), "stepz: unknown field (did you mean steps?)"),
        (spec(learner={"los": {"name": "grpo"}}), "learner.los: unknown field (did you mean learner.loss?)"),
        (spec(lr=1e-5), "lr: unknown field (did you mean learner.optimizer.lr?)"),
        (spec(learner={"name": "grpo"}), "learner.name: unknown field (did you mean learner.loss.name?)"),
        (spec(seed="x"), "seed: Input should be a valid integer"),
        # what pydantic's lax mode would take and the schema does not: the schema holds
        (spec(steps=True), "steps: True is not of type 'integer'"),
        (spec(rollout={"max_tokens": "64"}), "rollout.max_tokens: '64' is not of type 'integer'"),
        (spec(task={"kind": "arithmetic", "seed": False}), "task.seed: False is not of type 'integer'"),
        (spec(rollout={"group_size": 1}), "rollout.group_size: Input should be greater than or equal to 2"),
        (spec(rollout="big"), "rollout: Input should be a valid dictionary"),
        (spec(learner=[1]), "learner: Input should be a valid dictionary"),
        (spec(learner={"batch_size": 3}), "learner.batch_size: 3 differs from prompts_per_step x group_size = 16"),
        (spec(learner={"loss": {"name": "grpo", "eps_high": 0.3}}), "learner.loss: eps_high: grpo clips symmetrically"),
        (spec(task={"kind": "chess"}), "task: Input tag 'chess' found using 'kind' does not match"),
        (spec(sync_every=2, staleness={"mode": "fixed"}), "sync_every: fixed staleness needs every version served"),
        (spec(name=""), "name: String should have at least 1 character"),
        (
            {"model": "/m", "staleness": {"mode": "fixed", "k": 2}},
            "learner.loss.ratio_reference: staleness can reach 2 (staleness.mode fixed), so name the trust region's "
            "anchor",
        ),
        ([1, 2], "body: Input should be a valid dictionary"),
    ],
)
def test_bad_specs_name_the_field(client, body, message):
    response = client.post("/v1/runs", json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["message"]


@pytest.mark.parametrize(
    "content, message",
    [
        (
            b'{"model": "/m", "learner": {"loss": {"eps": Infinity, "ratio_reference": "behaviour"}}}',
            "learner.loss.eps: Input should be a valid number",
        ),
        (b'{"model": ', "body: not valid JSON"),
        (b"", "body: Field required"),
    ],
)
def test_bodies_json_cannot_carry_are_refused(client, content, message):
    response = client.post("/v1/runs", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422 and message in response.json()["message"]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"state": "sleeping"}, "state: Input should be 'queued'"),
        ({"status": "queued"}, "status: unknown field"),
        ({"limit": 0}, "limit: Input should be greater than or equal to 1"),
    ],
)
def test_query_parameters_are_validated(client, params, message):
    response = client.get("/v1/runs", params=params)
    assert response.status_code == 422 and message in response.json()["message"]


def test_a_cancel_body_is_strict_too(client):
    run_id = client.post("/v1/runs", json=spec()).json()["id"]
    response = client.post(f"/v1/runs/{run_id}/cancel", json={"reasn": "typo", "steps": 3})
    assert response.status_code == 422
    assert response.json()["message"] == "reasn: unknown field (did you mean reason?); steps: unknown field"


def test_a_valid_spec_is_queued_with_its_defaults_filled_in(client):
    response = client.post("/v1/runs", json=spec(learner={"loss": {"name": "grpo", "ratio_reference": "proximal"}}))
    assert response.status_code == 201
    run = response.json()
    assert run["state"] == "queued" and run["spec"]["learner"]["loss"]["name"] == "grpo"
    assert run["spec"]["learner"]["batch_size"] == 16  # derived from the rollout section
    assert response.headers["location"] == f"/v1/runs/{run['id']}"


def test_what_the_schema_admits_is_accepted(client):
    """JSON Schema's integer admits 5.0; difficulty is one level or several."""
    response = client.post("/v1/runs", json=spec(steps=5.0, task={"kind": "arithmetic", "difficulty": 3}))
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["steps"] == 5 and response.json()["spec"]["task"]["difficulty"] == [3]
