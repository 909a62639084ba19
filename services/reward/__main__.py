"""``cfpo serve reward`` = ``python -m services.reward``: settings from flags and/or a YAML file, then serve.

Every scalar setting of ``RewardSettings`` is a flag (``item_timeout`` -> ``--item-timeout``), so names,
defaults and help live in one place; mappings (``tasks``) come from ``--config``. Bad settings print one line
naming the field and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from pydantic import ValidationError

from cfpo.config import ConfigError, load_config
from services.reward.settings import RewardSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cfpo serve reward", description="Serve the reward service.")
    parser.add_argument(
        "--config", type=Path, help="YAML file of settings (the only place for tasks); flags override it"
    )
    for name, field in RewardSettings.model_fields.items():
        origin = typing.get_origin(field.annotation)
        if origin is dict:
            continue
        flag, help_ = "--" + name.replace("_", "-"), f"{field.description or name} (default: {field.default})"
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif origin is list:
            parser.add_argument(flag, action="append", default=None, help=help_ + "; repeat for more")
        else:
            parser.add_argument(flag, default=None, metavar=name.upper(), help=help_)
    return parser


def parse_settings(argv: list[str]) -> RewardSettings:
    args = vars(build_parser().parse_args(argv))
    config = args.pop("config")
    overrides = {name: value for name, value in args.items() if value is not None}
    try:
        if config is not None:
            return load_config(RewardSettings, config, **overrides)
        return RewardSettings.model_validate(overrides)
    except ConfigError as error:
        _fail(str(error))
    except ValidationError as error:
        _fail("; ".join(_problem(e) for e in error.errors()))


def _problem(error: dict) -> str:
    """`field: message`, or the message alone where it names its fields itself (the cross-field checks)."""
    where, message = ".".join(map(str, error["loc"])), error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _fail(message: str) -> typing.NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str]) -> None:
    settings = parse_settings(argv)
    if settings.ray:
        from services.reward.ray_serve import serve_with_ray

        serve_with_ray(settings)
    else:
        import uvicorn

        from cfpo.metrics import REWARD_METRICS, PrometheusRecorder
        from services.reward.app import create_app

        uvicorn.run(create_app(settings, PrometheusRecorder(REWARD_METRICS)), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main(sys.argv[1:])
