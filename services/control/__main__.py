"""``cfpo serve control`` = ``python -m services.control``: settings from flags, a YAML file and the environment.

Every setting of ``ControlSettings`` but the token is a flag (``redis_url`` -> ``--redis-url``), so names, defaults
and help live in one place; the token comes from CFPO_API_TOKEN (or the --config file), never from a flag, which
any user could read in the process list. Bad settings print one line naming the field and exit with status 2.
"""

from __future__ import annotations

import sys

from cfpo.entrypoint import Entrypoint, log_to_stderr
from services.control.settings import ControlSettings

parse_settings = Entrypoint(
    ControlSettings, prog="cfpo serve control", description="Serve the control API for runs.", not_flags=("token",)
).parse


def main(argv: list[str]) -> None:
    settings = parse_settings(argv)
    import uvicorn

    from cfpo.metrics import CONTROL_METRICS, PrometheusRecorder
    from cfpo.registry import RunRegistry
    from services.control.app import create_app
    from services.control.served_models import generation_models

    log_to_stderr()
    # Requests and probes get a 503 at once while Redis restarts; the reaper tries again at its next round.
    registry = RunRegistry(settings.redis_url, history_length=settings.history_length, outlast_restarts=False)
    served = (
        None
        if settings.generation_url is None
        else generation_models(settings.generation_url, settings.lookup_timeout_s)
    )
    app = create_app(settings, registry, PrometheusRecorder(CONTROL_METRICS), served)
    uvicorn.run(app, host=settings.host, port=settings.port)


if __name__ == "__main__":
    main(sys.argv[1:])
