"""The other end of ``Session.child``: a part measured alone in its own process (own threads, own cores)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

Config = TypeVar("Config", bound=BaseModel)


def child_main(config_type: type[Config], measure: Callable[[Config], dict]) -> None:
    """``python -m benchmarks.<part> CONFIG.json RESULT.json``: validate the config, measure, write the result."""
    if len(sys.argv) != 3:
        sys.exit(f"usage: python -m {sys.modules['__main__'].__spec__.name} CONFIG.json RESULT.json")
    config_path, result_path = map(Path, sys.argv[1:])
    result = measure(config_type.model_validate_json(config_path.read_text()))
    result_path.write_text(json.dumps(result))
