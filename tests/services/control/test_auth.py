"""With a token configured, every run route wants exactly that bearer token; /health, /metrics and the docs do not."""

import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.services.control.conftest import control_api, spec

RUN_ROUTES = [
    ("GET", "/v1/runs"),
    ("POST", "/v1/runs"),
    ("GET", "/v1/runs/abc"),
    ("POST", "/v1/runs/abc/cancel"),
    ("GET", "/v1/runs/abc/metrics"),
]


@pytest.mark.parametrize("method, path", RUN_ROUTES)
@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_run_routes_refuse_a_missing_or_wrong_token(api, method, path, token):
    with api.client(token=token) as http:
        response = http.request(method, path, json=spec())
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in response.json()["detail"]


def test_the_right_token_lists_runs(client):
    response = client.get("/v1/runs")
    assert response.status_code == 200 and isinstance(response.json()["runs"], list)


def test_the_token_is_checked_before_the_body(api):
    """An unauthenticated caller learns nothing about the spec's fields."""
    with api.client(token="wrong-token") as http:
        assert http.post("/v1/runs", json={"loss": "no-such-loss"}).status_code == 401


@pytest.mark.parametrize("header", ["Basic {token}", "{token}", "Bearer", "Bearer {token}x", "Bearer x{token}"])
def test_other_schemes_and_near_tokens_are_refused(api, header):
    with api.client(token=None) as http:
        response = http.get("/v1/runs", headers={"Authorization": header.format(token=api.token)})
    assert response.status_code == 401


@pytest.mark.parametrize("path", ["/health", "/metrics", "/docs", "/openapi.json"])
def test_probes_scrapes_and_docs_need_no_token(api, path):
    with api.client(token=None) as http:
        assert http.get(path).status_code == 200


def test_without_a_token_configured_the_api_is_open_on_loopback(redis_url, tmp_path):
    with control_api(redis_url, tmp_path / "api.log", token=None) as open_api, open_api.client() as http:
        assert http.get("/v1/runs").status_code == 200
        # DNS rebinding: a page's requests reach 127.0.0.1 under the page's own host name, and are refused.
        rebound = http.get("/v1/runs", headers={"Host": "attacker.example:8080"})
        assert rebound.status_code == 400 and "not a loopback name" in rebound.json()["detail"]
        assert http.get("/v1/runs", headers={"Host": "localhost"}).status_code == 200


def test_a_huge_body_is_refused_before_the_token_and_unread(api):
    """A 2 GB upload without a token: refused from its declared length at once, never read into memory."""
    address = urlsplit(api.url)
    started = time.monotonic()
    with socket.create_connection((address.hostname, address.port), timeout=10) as raw:
        raw.sendall(
            b"POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2147483648\r\n\r\n" + b"{" * 65536  # a start of the body; the rest never comes
        )
        reply = raw.makefile("rb")
        status = reply.readline().decode()
        headers = dict(line.decode().strip().lower().split(": ", 1) for line in iter(reply.readline, b"\r\n"))
        body = reply.read(int(headers["content-length"])).decode()
    assert status.startswith("HTTP/1.1 413") and "max_body_bytes" in body
    assert time.monotonic() - started < 5
