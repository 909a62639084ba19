"""409 when a run's model is not the one generation serves, asked over generation's ``GET /v1/models``.

``VllmModelsRoute`` is a real HTTP server on 127.0.0.1 that stands in for vLLM's OpenAI route ``/v1/models`` (same
reply shape: ``{"object": "list", "data": [{"id", "root", ...}]}``): starting vLLM itself takes tens of seconds,
and the route's shape is all the check reads. The generation tests cover vLLM serving the model directory.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.services.control.conftest import control_api, spec

SERVED = "/models/served"


class VllmModelsRoute(ThreadingHTTPServer):
    def __init__(self):
        self.models = [{"id": SERVED, "root": SERVED}]
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/v1/models":
            self.send_error(404)
            return
        data = [
            {
                "object": "model",
                "created": 0,
                "owned_by": "vllm",
                "parent": None,
                "max_model_len": 2048,
                "permission": [],
                **model,
            }
            for model in self.server.models
        ]
        body = json.dumps({"object": "list", "data": data}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def generation():
    server = VllmModelsRoute()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def checked_api(redis_url, generation, tmp_path_factory):
    log = tmp_path_factory.mktemp("control-checked") / "api.log"
    with control_api(redis_url, log, "--generation-url", generation.url, "--lookup-timeout-s", "2") as api:
        yield api


def test_a_run_of_another_model_is_refused_with_409(checked_api):
    with checked_api.client() as http:
        response = http.post("/v1/runs", json=spec(model="/models/other"))
    assert response.status_code == 409
    assert response.json()["detail"].startswith(f"model: /models/other is not the model generation serves ({SERVED})")


@pytest.mark.parametrize("model", [SERVED, SERVED + "/", "/models/../models/served"])
def test_a_run_of_the_served_model_is_queued(checked_api, model):
    with checked_api.client() as http:
        assert http.post("/v1/runs", json=spec(model=model)).status_code == 201


def test_a_served_model_name_matches_through_its_root(checked_api, generation):
    generation.models = [{"id": "tiny", "root": SERVED}]  # vLLM started with --served-model-name tiny
    try:
        with checked_api.client() as http:
            assert http.post("/v1/runs", json=spec(model=SERVED)).status_code == 201
            refused = http.post("/v1/runs", json=spec(model="tiny-elsewhere"))
        assert refused.status_code == 409 and "(tiny)" in refused.json()["detail"]
    finally:
        generation.models = [{"id": SERVED, "root": SERVED}]


def test_the_spec_is_validated_before_generation_is_asked(checked_api):
    with checked_api.client() as http:
        response = http.post("/v1/runs", json=spec(model="/models/other", steps=0))
    assert response.status_code == 422 and "steps" in response.json()["message"]


def test_unreachable_generation_is_503_not_a_queued_run(redis_url, tmp_path):
    with (
        control_api(
            redis_url, tmp_path / "api.log", "--generation-url", "http://127.0.0.1:9", "--lookup-timeout-s", "1"
        ) as api,
        api.client() as http,
    ):
        response = http.post("/v1/runs", json=spec())
        assert response.status_code == 503
        assert "cannot ask generation at http://127.0.0.1:9 which model it serves" in response.json()["detail"]
        assert http.get("/v1/runs", params={"state": "queued"}).json()["runs"] == []
