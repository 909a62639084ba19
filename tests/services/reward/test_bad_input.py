"""Bad requests get a 4xx that names the field, never a 5xx; a schema-driven fuzz checks the latter broadly."""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from cfpo.metrics import REWARD_METRICS, PrometheusRecorder
from services.reward.__main__ import parse_settings
from services.reward.app import create_app
from tests.services.reward.server import item


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({}, 422, "items: Field required"),
        ({"items": [item("x", "1")], "extra": 1}, 422, "extra: Extra inputs are not permitted"),
        ({"items": [{"prompt": "p", "completion": "x", "task": "math"}]}, 422, "items.0.reference: Field required"),
        ({"items": [item(7, "1")]}, 422, "items.0.completion: Input should be a valid string"),
        ({"items": [item("x", "1", task="chess")]}, 422, "items.0.task: Input should be 'math', 'arithmetic'"),
        ({"items": [item("x", "1", rewards={"nope": 1.0})]}, 422, "items.0.rewards.nope.[key]: Input should be"),
        ({"items": [item("x", "1")], "rewards": {}}, 422, "rewards: Dictionary should have at least 1 item"),
        ({"items": [item("x", "1", metadata=[1])]}, 422, "items.0.metadata: Input should be a valid dictionary"),
        ({"items": [item("x", "1")] * 17}, 422, "items: List should have at most 16 items"),
        ({"items": [item("x" * 2001, "1")]}, 422, "items.0.completion: String should have at most 2000 characters"),
    ],
)
def test_bad_requests_name_the_field(client, body, status, field):
    response = client.post("/v1/score", json=body)
    assert response.status_code == status
    assert field in response.json()["message"]


def test_non_finite_weights_are_refused(client):
    response = client.post(
        "/v1/score", content=b'{"items": [], "rewards": {"format": NaN}}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and "rewards.format" in response.json()["message"]


def test_oversized_and_unsized_bodies_are_refused_before_reading(client):
    big = client.post("/v1/score", content=b" " * (300 * 1024), headers={"content-type": "application/json"})
    assert big.status_code == 413 and "max_body_mb" in big.json()["detail"]
    chunked = client.post("/v1/score", content=iter([b'{"items": []}']), headers={"content-type": "application/json"})
    assert chunked.status_code == 411


def _schema() -> dict:
    """The OpenAPI schema of the app with default settings, built in-process so that the cases exist at
    collection time (schemathesis' lazy fixture loader breaks on pytest 9)."""
    return create_app(parse_settings([]), PrometheusRecorder(REWARD_METRICS)).openapi()


schema = schemathesis.openapi.from_dict(_schema())


def test_fuzz_schema_is_the_served_one(default_server):
    assert httpx.get(default_server.url + "/openapi.json").json() == _schema()


@schema.parametrize()
@settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_get_no_server_error(case, default_server):
    case.call_and_validate(base_url=default_server.url)
