"""HTTP clients of the services, shared by the services, the learner and the operator's tools."""

from __future__ import annotations

import httpx


def lane_client(base_url: str, timeout: float) -> httpx.Client:
    """An HTTP client without a connection cap: a rollout worker's lanes each hold one request in flight."""
    return httpx.Client(
        base_url=base_url, timeout=timeout, limits=httpx.Limits(max_connections=None, max_keepalive_connections=None)
    )
