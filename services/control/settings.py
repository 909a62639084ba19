"""The control API's settings, validated once at start-up (command line, YAML file, environment)."""

from __future__ import annotations

import os

from pydantic import Field, SecretStr, field_validator, model_validator

from cfpo.asgi_guards import is_loopback
from cfpo.config import StrictModel, environment, http_url
from cfpo.queue import DEFAULT_REDIS_URL


def _token_from_environment() -> SecretStr | None:
    """CFPO_API_TOKEN; empty counts as unset (as compose's ${CFPO_API_TOKEN:-} gives)."""
    token = os.environ.get("CFPO_API_TOKEN", "")
    return SecretStr(token) if token else None


class ControlSettings(StrictModel):
    host: str = Field("127.0.0.1", min_length=1, description="address to listen on (loopback by default)")
    port: int = Field(8080, ge=1, le=65535)
    redis_url: str = Field(
        default_factory=environment("REDIS_URL", DEFAULT_REDIS_URL),
        description="where runs are kept (default: $REDIS_URL, else a local Redis)",
    )
    generation_url: str | None = Field(
        default_factory=environment("CFPO_GENERATION_URL"),
        description="generation service whose served model every run must use (default: $CFPO_GENERATION_URL); "
        "unset: the model check is skipped",
    )
    lookup_timeout_s: float = Field(
        10.0, gt=0, description="seconds to wait for generation's model list or the reward service's functions"
    )
    reward_url: str | None = Field(
        default_factory=environment("CFPO_REWARD_URL"),
        description="reward service whose functions a run's rollout.rewards must name (default: $CFPO_REWARD_URL); "
        "unset: the check is skipped",
    )
    check_task_files: bool = Field(
        True, description="refuse a file task whose files this process cannot read (it must see the data volume)"
    )
    heartbeat_timeout_s: float = Field(
        60.0, gt=0, description="a running run whose worker is silent this long goes back to the queue, to be resumed"
    )
    max_restarts: int = Field(
        3, ge=0, le=1000, description="times a silent worker's run is requeued; the next silence fails it"
    )
    reap_interval_s: float = Field(5.0, gt=0, description="how often to look for such runs")
    history_length: int = Field(10_000, ge=1, description="per-step metric entries kept per run")
    redis_budget_mib: int = Field(
        512,
        ge=1,
        description="Redis memory the queues of queued and running runs may take; a submit beyond it is refused "
        "(422). Keep it below Redis's maxmemory, which also holds run records and histories",
    )
    ended_run_retention_s: float = Field(
        86_400.0, ge=0, description="seconds an ended run's queue and dead letters are kept (its record stays)"
    )
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="larger request bodies are refused (413) before they are read, token or not"
    )
    token: SecretStr | None = Field(
        default_factory=_token_from_environment,
        description="bearer token every route but /health, /metrics and the docs requires: $CFPO_API_TOKEN, or token "
        "in the --config file (never a flag: the process list would show it)",
    )

    @field_validator("generation_url", "reward_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        return None if url is None else http_url(url).rstrip("/")

    @model_validator(mode="after")
    def _no_open_door(self) -> ControlSettings:
        """The API starts runs on the cluster: beyond loopback it must not answer without a token."""
        if self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"host: listening on {self.host} without a token would let anyone who reaches it start and cancel "
                "runs; set CFPO_API_TOKEN, or listen on 127.0.0.1"
            )
        return self
