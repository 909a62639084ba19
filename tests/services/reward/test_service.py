"""The reward service over real HTTP: scoring, composition, a verifier that hangs or dies, metrics, docs."""

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.services.reward.server import item, wait_for


def metric_samples(client: httpx.Client) -> dict[tuple, float]:
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_acceptance_boxed_answer_against_two_references(default_server):
    """What a user tries first, against the service started with its defaults."""
    body = {"items": [item("The answer is \\boxed{2}", "2"), item("The answer is \\boxed{2}", "3")]}
    response = httpx.post(default_server.url + "/v1/score", json=body)
    assert response.status_code == 200
    assert [r["reward"] for r in response.json()["rewards"]] == [1.0, 0.0]
    assert response.json()["rewards"][0]["details"]["scores"]["math_equivalence"]["answer"] == "2"


def test_rewards_come_back_in_item_order(client):
    answers = [3, 8, 1, 9, 4, 7, 2, 6, 5, 0, 11, 12, 13, 14, 15, 16]
    items = [item(f"so the answer is {a}", str(a if i % 3 else a + 1)) for i, a in enumerate(answers)]
    rewards = [r["reward"] for r in client.post("/v1/score", json={"items": items}).json()["rewards"]]
    assert rewards == [0.0 if i % 3 == 0 else 1.0 for i in range(len(answers))]


def test_overrides_compose_weighted_functions_item_over_request_over_task(client):
    body = {
        "rewards": {"math_equivalence": 1.0, "format": 0.1},
        "items": [
            item("\\boxed{4}", "4"),  # request override: 1.0 + 0.1
            item("4", "4"),  # request override, no box: 1.0
            item("\\boxed{4}", "4", rewards={"format": 0.5, "exact_match": 2.0}),  # item override: 0.5 + 2.0
        ],
    }
    rewards = client.post("/v1/score", json=body).json()["rewards"]
    assert [r["reward"] for r in rewards] == [1.1, 1.0, 2.5]
    assert rewards[2]["details"]["scores"]["exact_match"] == {"answer": "4", "weight": 2.0, "value": 1.0}


def test_each_task_uses_its_configured_functions(client):
    rewards = client.post(
        "/v1/score",
        json={
            "items": [
                item("\\boxed{0.5}", "1/2", task="arithmetic"),
                item("\\boxed{0.5}", "1/2", task="exact_match"),
            ]
        },
    ).json()["rewards"]
    assert [r["reward"] for r in rewards] == [1.0, 0.0]
    assert [r["details"]["task"] for r in rewards] == ["arithmetic", "exact_match"]


def test_a_hanging_raising_or_dying_verifier_costs_only_its_item(server, client):
    before, workers_before = metric_samples(client), server.processes()
    items = [
        item("\\boxed{5}", "5"),
        item("\\boxed{5}", "5", rewards={"spin_in_c": 1.0, "format": 1.0}),
        item("\\boxed{5}", "5", rewards={"raises": 1.0}),
        item("\\boxed{5}", "5", rewards={"crashes": 1.0}),
        item("\\boxed{5}", "5", rewards={"unserialisable": 1.0}),
        item("\\boxed{5}", "5"),
    ]
    start = time.monotonic()
    rewards = client.post("/v1/score", json={"items": items}).json()["rewards"]
    elapsed = time.monotonic() - start
    assert [r["reward"] for r in rewards] == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert "timed out after 1 s" in rewards[1]["details"]["error"]
    assert rewards[1]["details"]["scores"]["format"]["value"] == 1.0  # reported, but no partial credit
    assert "RuntimeError: verifier bug" in rewards[2]["details"]["error"]
    assert "worker died (exit code 3)" in rewards[3]["details"]["error"]
    assert "ValueError: Out of range float values are not JSON compliant" in rewards[4]["details"]["error"]
    assert elapsed < 4, f"the stuck worker was not killed at the 1 s timeout ({elapsed:.1f} s)"
    # the stuck and the dead worker are gone, not abandoned, and the pool is back to full strength
    assert wait_for(lambda: len(workers_before - server.processes()) == 2 == len(server.processes() - workers_before))

    # the pool replaced the killed and dead workers: both are at work again right away
    start = time.monotonic()
    again = client.post("/v1/score", json={"items": [item(f"\\boxed{{{n}}}", str(n)) for n in range(16)]})
    assert [r["reward"] for r in again.json()["rewards"]] == [1.0] * 16
    assert time.monotonic() - start < 3

    after = metric_samples(client)
    for function, outcome in [
        ("spin_in_c", "timeout"),
        ("raises", "error"),
        ("crashes", "error"),
        ("unserialisable", "error"),
        ("format", "ok"),
        ("math_equivalence", "ok"),
    ]:
        key = ("cfpo_reward_function_calls_total", (("function", function), ("outcome", outcome)))
        assert after[key] - before.get(key, 0) == {"math_equivalence": 18}.get(function, 1), key


def test_metrics_count_requests_by_status_and_time_them(client):
    ok = ("cfpo_reward_requests_total", (("status", "200"),))
    bad = ("cfpo_reward_requests_total", (("status", "422"),))
    timed = ("cfpo_reward_request_seconds_count", ())
    before = metric_samples(client)
    client.post("/v1/score", json={"items": [item("\\boxed{1}", "1")]})
    client.post("/v1/score", json={"items": "none"})
    after = metric_samples(client)
    assert after[ok] - before.get(ok, 0) == 1
    assert after[bad] - before.get(bad, 0) == 1
    assert after[timed] - before[timed] == 2
    assert ("cfpo_reward_items_total", ()) in after


def test_health_and_openapi_docs(client):
    assert client.get("/health").json() == {"status": "ok"}
    schema = client.get("/openapi.json").json()
    assert "/v1/score" in schema["paths"]
    item_schema = schema["components"]["schemas"]["ScoreItem"]["properties"]
    assert item_schema["task"]["enum"] == ["math", "arithmetic", "exact_match", "digits"]
    assert client.get("/docs").status_code == 200
