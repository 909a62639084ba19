"""A client of the control API: submit, read, list and cancel runs, and follow one until it ends.

The API is found at $CFPO_API_URL (default http://127.0.0.1:8080) unless given, and its token in $CFPO_API_TOKEN.
Every failure (no API there, a refused token, a refused request) raises ``ControlApiError`` with one line that says
what is wrong and what to set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx

from cfpo.registry import FINAL_STATES

DEFAULT_API_URL = "http://127.0.0.1:8080"


class ControlApiError(RuntimeError):
    """The control API could not be reached or refused the request; the message is one line for a user."""


class ControlClient:
    def __init__(self, url: str | None = None, *, timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get("CFPO_API_URL", DEFAULT_API_URL)).rstrip("/")
        token = os.environ.get("CFPO_API_TOKEN")
        self.http = httpx.Client(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {token}"} if token else {}
        )

    def call(self, method: str, path: str, **kwargs: Any) -> dict:
        """The decoded body of one request."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ControlApiError(
                f"cannot reach the control API at {self.url} ({error or type(error).__name__}); "
                "is it running? (set CFPO_API_URL)"
            ) from None
        if response.status_code == 401:
            raise ControlApiError(f"{_message(response)} (set CFPO_API_TOKEN to the API's token)")
        if response.status_code >= 400:
            raise ControlApiError(f"HTTP {response.status_code}: {_message(response)}")
        return response.json()

    def submit(self, spec: dict, name: str | None = None) -> dict:
        """Queue a run (``spec`` as JSON); returns its record."""
        return self.call("POST", "/v1/runs", json={**spec, **({"name": name} if name else {})})

    def run(self, run_id: str) -> dict:
        return self.call("GET", f"/v1/runs/{run_id}")

    def follow(self, run_id: str, poll_seconds: float = 2.0) -> Iterator[dict]:
        """The run's record now and every ``poll_seconds`` after, the last one in a final state."""
        while True:
            run = self.run(run_id)
            yield run
            if run["state"] in FINAL_STATES:
                return
            time.sleep(poll_seconds)

    def close(self) -> None:
        self.http.close()


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("message") or body.get("detail") or body)
    return str(body)
