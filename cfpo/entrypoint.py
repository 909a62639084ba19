"""Process settings from flags, an optional YAML file and the environment: every scalar setting of a settings
model is a flag (``item_timeout`` -> ``--item-timeout``), so names, defaults and help live in the model alone.
Mappings come from ``--config`` only; flags override the file, which overrides the environment. Bad settings print
one line naming the field and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator

from cfpo.config import ConfigError, StrictModel, describe_validation_error, environment, http_url, load_config
from cfpo.queue import DEFAULT_REDIS_URL

Settings = typing.TypeVar("Settings", bound=StrictModel)
DEFAULT_GENERATION_URL = "http://127.0.0.1:8000"
DEFAULT_REWARD_URL = "http://127.0.0.1:8011"


class RunWorkerSettings(StrictModel):
    """What the learner and the rollout worker share: one run by hand, or the registry's runs one after another."""

    spec: Path | None = Field(None, description="run spec (YAML), for one run started by hand")
    run_id: str | None = Field(None, min_length=1, description="the run's id (its Redis keys are run:<id>:...)")
    worker: bool = Field(False, description="take the runs of the control API's registry instead")
    generation_urls: list[str] = Field(
        default_factory=environment("CFPO_GENERATION_URL", DEFAULT_GENERATION_URL),
        validate_default=True,  # the environment's value is split and checked as a flag's would be
        min_length=1,
        description="generation servers: one, or several independent ones, each its own vLLM ($CFPO_GENERATION_URL, "
        "separated by commas)",
    )
    redis_url: str = Field(
        default_factory=environment("REDIS_URL", DEFAULT_REDIS_URL),
        description="Redis of the queues and the registry ($REDIS_URL)",
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="serve /metrics on this port (0: off)")
    metrics_host: str = Field(
        "127.0.0.1", min_length=1, description="address /metrics listens on (containers: 0.0.0.0)"
    )
    metrics_retention_s: float = Field(
        120.0, ge=0, description="seconds an ended run's series stay on /metrics (for the last scrapes), then go"
    )

    @field_validator("generation_urls", mode="before")
    @classmethod
    def _split_commas(cls, urls: object) -> object:
        items = [urls] if isinstance(urls, str) else urls
        if isinstance(items, list):
            return [url.strip() for item in items for url in str(item).split(",") if url.strip()]
        return urls

    @field_validator("generation_urls")
    @classmethod
    def _are_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            http_url(url)
        if len(set(urls)) != len(urls):
            raise ValueError("a server is listed twice; each takes its own share of the groups")
        return urls

    @model_validator(mode="after")
    def _one_run_or_worker(self) -> RunWorkerSettings:
        if not self.worker and (self.spec is None or self.run_id is None):
            raise ValueError("spec: --spec and --run-id are needed for one run (or use --worker)")
        return self


@dataclass(frozen=True)
class Entrypoint(typing.Generic[Settings]):
    """The command line of one process: its settings model as flags (plus ``--config FILE``), parsed and validated."""

    model: type[Settings]
    prog: str
    description: str
    config_help: str = "YAML file of settings; flags override it"
    not_flags: tuple[str, ...] = ()  # settings that must not show in the process list, such as a token

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=self.prog, description=self.description)
        parser.add_argument("--config", type=Path, help=self.config_help)
        for name, field in self.model.model_fields.items():
            origin = typing.get_origin(field.annotation)
            if name in self.not_flags or origin is dict:
                continue
            default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
            flag, help_ = "--" + name.replace("_", "-"), f"{field.description or name} (default: {default})"
            if field.annotation is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
            elif origin is list:
                parser.add_argument(flag, action="append", default=None, help=help_ + "; repeat for more")
            else:
                parser.add_argument(flag, default=None, metavar=name.upper(), help=help_)
        return parser

    def parse(self, argv: list[str]) -> Settings:
        """The settings ``argv`` gives, or one line naming the field on stderr and exit status 2."""
        args = vars(self.parser().parse_args(argv))
        config = args.pop("config")
        overrides = {name: value for name, value in args.items() if value is not None}
        try:
            if config is not None:
                return load_config(self.model, config, **overrides)
            return self.model.model_validate(overrides)
        except ConfigError as error:
            _fail(str(error))
        except ValidationError as error:
            _fail(describe_validation_error(error))


def log_to_stderr() -> None:
    """One log format for every process, so that the stack's logs read alike."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _fail(message: str) -> typing.NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_or_exit(model: type[Settings], path: Path) -> Settings:
    """A settings file for a command line: its model, or one line naming the file and field, and exit 2."""
    try:
        return load_config(model, path)
    except ConfigError as error:
        _fail(str(error))
