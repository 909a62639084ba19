"""Service settings from flags and an optional YAML file: every scalar setting of a settings model is a flag
(``item_timeout`` -> ``--item-timeout``), so names, defaults and help live in the model alone. Mappings come from
``--config`` only; flags override the file. Bad settings print one line naming the field and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from pydantic import ValidationError

from cfpo.config import ConfigError, StrictModel, describe_validation_error, load_config

Settings = typing.TypeVar("Settings", bound=StrictModel)


def settings_parser(model: type[StrictModel], *, prog: str, description: str, config_help: str,
                    not_flags: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, help=config_help)
    for name, field in model.model_fields.items():
        origin = typing.get_origin(field.annotation)
        if name in not_flags or origin is dict:
            continue
        default = field.default_factory() if field.default_factory else field.default
        flag, help_ = "--" + name.replace("_", "-"), f"{field.description or name} (default: {default})"
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif origin is list:
            parser.add_argument(flag, action="append", default=None, help=help_ + "; repeat for more")
        else:
            parser.add_argument(flag, default=None, metavar=name.upper(), help=help_)
    return parser


def parse_settings(model: type[Settings], parser: argparse.ArgumentParser, argv: list[str]) -> Settings:
    args = vars(parser.parse_args(argv))
    config = args.pop("config")
    overrides = {name: value for name, value in args.items() if value is not None}
    try:
        if config is not None:
            return load_config(model, config, **overrides)
        return model.model_validate(overrides)
    except ConfigError as error:
        _fail(str(error))
    except ValidationError as error:
        _fail(describe_validation_error(error))


def _fail(message: str) -> typing.NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_or_exit(model: type[Settings], path: Path) -> Settings:
    """A settings file for a command line: its model, or one line naming the file and field, and exit 2."""
    try:
        return load_config(model, path)
    except ConfigError as error:
        _fail(str(error))
