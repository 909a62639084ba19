"""``cfpo serve reward`` = ``python -m services.reward``: settings from flags and/or a YAML file, then serve.

Every scalar setting of ``RewardSettings`` is a flag (``item_timeout`` -> ``--item-timeout``), so names,
defaults and help live in one place; mappings (``tasks``) come from ``--config``. Bad settings print one line
naming the field and exit with status 2.
"""

from __future__ import annotations

import sys

from cfpo.entrypoint import Entrypoint
from services.reward.settings import RewardSettings

parse_settings = Entrypoint(
    RewardSettings,
    prog="cfpo serve reward",
    description="Serve the reward service.",
    config_help="YAML file of settings (the only place for tasks); flags override it",
).parse


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
