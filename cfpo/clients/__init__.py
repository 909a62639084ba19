"""HTTP clients of the services, shared by the services, the learner and the operator's tools."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """Exponential backoff for calls to a service that may be briefly away (restarting, stalled, overloaded)."""

    attempts: int = 5
    first_backoff: float = 0.5
    max_backoff: float = 8.0

    def call(
        self,
        what: str,
        call: Callable[[], T],
        retry_on: tuple[type[Exception], ...],
        on_failure: Callable[[Exception], None] = lambda error: None,
    ) -> T:
        """``call()``, again after each failure in ``retry_on`` (``on_failure`` sees each) until ``attempts``;
        the last failure is raised."""
        backoff = self.first_backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except retry_on as error:
                on_failure(error)
                if attempt == self.attempts:
                    raise
                log.warning(
                    "%s failed (attempt %d/%d): %s; retrying in %.1f s", what, attempt, self.attempts, error, backoff
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
        raise ValueError("attempts: must be at least 1")


def lane_client(base_url: str, timeout: float) -> httpx.Client:
    """An HTTP client without a connection cap: a rollout worker's lanes each hold one request in flight."""
    return httpx.Client(
        base_url=base_url, timeout=timeout, limits=httpx.Limits(max_connections=None, max_keepalive_connections=None)
    )
