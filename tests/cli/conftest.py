"""The `cfpo` command line against real servers: the control API fixtures are shared with tests/services/control."""

from tests.redis_server import redis_url  # noqa: F401 (a fixture)
from tests.services.control.conftest import api, no_runs_left, registry, worker  # noqa: F401 (fixtures)
