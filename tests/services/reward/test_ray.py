"""The same app as two Ray Serve replicas on CPU, bound to loopback: scores, aggregates metrics, stops cleanly."""

import time
from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.services.reward.server import Server, item, wait_for


def exported_requests(url: str) -> tuple[Counter, set[str]]:
    """Requests by status summed over replicas, and the replica processes that reported any."""
    by_status, replicas = Counter(), set()
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "ray_cfpo_reward_requests_total":
                by_status[sample.labels["status"]] += sample.value
                replicas.add(sample.labels["WorkerId"])
    return by_status, replicas


@pytest.mark.slow
def test_two_replicas_score_report_metrics_together_and_shut_down(tmp_path):
    # Ray's agent publishes replica metrics every 10 s by default; 1 s keeps the test short.
    server = Server(
        ["--ray", "--replicas", "2", "--pool-size", "1"],
        tmp_path / "ray.log",
        env={"RAY_metrics_report_interval_ms": "1000"},
    )
    try:
        started = server.wait_ready(timeout=45)
        body = {"items": [item("The answer is \\boxed{2}", "2"), item("The answer is \\boxed{2}", "3")]}
        start = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(30):
                assert [r["reward"] for r in client.post("/v1/score", json=body).json()["rewards"]] == [1.0, 0.0]
            rate = 30 / (time.monotonic() - start)
            missing = client.post("/v1/score", json={})
        assert missing.status_code == 422 and missing.json()["message"] == "items: Field required"
        assert wait_for(lambda: exported_requests(server.url)[0] == {"200": 30, "422": 1}, timeout=15)
        assert len(exported_requests(server.url)[1]) == 2  # both replicas served and are counted
        print(f"Ray Serve: ready after {started:.1f} s, {rate:.0f} sequential requests/s of 2 items")
    finally:
        status = server.stop()
    assert status == 0, server.log.read_text()[-3000:]
    assert wait_for(lambda: not server.processes(), timeout=15), "Ray processes outlived the service"
