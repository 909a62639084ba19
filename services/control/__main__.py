"""``cfpo serve control`` = ``python -m services.control``: settings from flags, a YAML file and the environment.

Every setting of ``ControlSettings`` but the token is a flag (``redis_url`` -> ``--redis-url``), so names, defaults
and help live in one place; the token comes from CFPO_API_TOKEN (or the --config file), never from a flag, which
any user could read in the process list. Bad settings print one line naming the field and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from pathlib import Path

from pydantic import ValidationError

from cfpo.config import ConfigError, load_config
from services.control.settings import ControlSettings

NOT_FLAGS = ("token",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cfpo serve control", description="Serve the control API for runs.")
    parser.add_argument("--config", type=Path, help="YAML file of settings; flags override it")
    for name, field in ControlSettings.model_fields.items():
        if name in NOT_FLAGS:
            continue
        default = field.default_factory() if field.default_factory else field.default
        parser.add_argument("--" + name.replace("_", "-"), default=None, metavar=name.upper(),
                            help=f"{field.description or name} (default: {default})")
    return parser


def parse_settings(argv: list[str]) -> ControlSettings:
    args = vars(build_parser().parse_args(argv))
    config = args.pop("config")
    overrides = {name: value for name, value in args.items() if value is not None}
    try:
        if config is not None:
            return load_config(ControlSettings, config, **overrides)
        return ControlSettings.model_validate(overrides)
    except ConfigError as error:
        _fail(str(error))
    except ValidationError as error:
        _fail("; ".join(_problem(e) for e in error.errors()))


def _problem(error: dict) -> str:
    where, message = ".".join(map(str, error["loc"])), error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _fail(message: str) -> typing.NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str]) -> None:
    settings = parse_settings(argv)
    import uvicorn

    from cfpo.metrics import CONTROL_METRICS, PrometheusRecorder
    from cfpo.runs import RunRegistry
    from services.control.app import create_app
    from services.control.served_models import generation_models

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    registry = RunRegistry(settings.redis_url, history_length=settings.history_length)
    served = (None if settings.generation_url is None
              else generation_models(settings.generation_url, settings.generation_timeout_s))
    app = create_app(settings, registry, PrometheusRecorder(CONTROL_METRICS), served)
    uvicorn.run(app, host=settings.host, port=settings.port)


if __name__ == "__main__":
    main(sys.argv[1:])
