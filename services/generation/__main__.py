"""``cfpo serve generation --model DIR [--port P]`` = ``python -m services.generation``: vLLM for this pipeline, in
the foreground, from its settings (flags, or a YAML file with ``--config``)."""

from __future__ import annotations

import os
import sys

from cfpo.entrypoint import Entrypoint
from services.generation.launch import server_command
from services.generation.settings import GenerationSettings

ENTRYPOINT = Entrypoint(
    GenerationSettings,
    prog="cfpo serve generation",
    description="Start vLLM's server with token log-probs, weight versions and in-place weight updates.",
)


def main(argv: list[str]) -> None:
    command, env = server_command(ENTRYPOINT.parse(argv))
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])
