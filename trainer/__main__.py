"""``cfpo serve learner`` = ``python -m trainer``: the DeepSpeed learner, from its settings.

``--spec SPEC.yaml --run-id ID --run-dir DIR`` trains one run started by hand; ``--worker`` takes runs queued
through the control API one at a time, heartbeating, until stopped.
"""

from __future__ import annotations

import sys

from cfpo.entrypoint import Entrypoint, log_to_stderr
from trainer.settings import LearnerSettings

parse_settings = Entrypoint(
    LearnerSettings, prog="cfpo serve learner", description="Train runs from their rollout streams."
).parse


def main(argv: list[str]) -> None:
    settings = parse_settings(argv)
    log_to_stderr()
    from trainer.worker import serve

    serve(settings)


if __name__ == "__main__":
    main(sys.argv[1:])
