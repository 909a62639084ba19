"""The import rule (docs/architecture.md, Layout): processes share contracts, never each other's code.

- ``cfpo`` (the contracts) imports neither ``services``, ``trainer`` nor ``cfpo.cli``;
- ``cfpo.cli`` (the operator's tools) starts services and the learner as processes and imports neither;
- ``trainer`` and ``services`` do not import each other, nor ``cfpo.cli``, and one service never imports another.

Every import counts, inside functions too. ``benchmarks`` and ``tests`` may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests import REPO_ROOT

PACKAGES = ("cfpo", "services", "trainer")


def _area(module: str) -> str:
    """The part of the tree a module belongs to: cfpo, cfpo.cli, trainer, or services.<name>."""
    parts = module.split(".")
    if parts[0] == "cfpo":
        return "cfpo.cli" if parts[1:2] == ["cli"] else "cfpo"
    if parts[0] == "services" and len(parts) > 1:
        return f"services.{parts[1]}"
    return parts[0]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PACKAGES}


def violations(root: Path) -> list[str]:
    """``path: imports module`` for every import under ``root``'s packages that breaks the rule."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            area = _area(module)
            for name in sorted(imported_modules(path)):
                if _area(name) not in (area, "cfpo"):  # its own part of the tree, and the contracts
                    found.append(f"{path.relative_to(root)}: imports {name}")
    return found


def test_the_tree_keeps_the_import_rule():
    assert violations(REPO_ROOT) == []


def test_a_wrong_import_is_caught(tmp_path):
    files = {
        "cfpo/queue.py": "import redis\nfrom cfpo.config import StrictModel\n",
        "cfpo/registry.py": "from trainer.learner import Learner\n",  # a contract reaching into the learner
        "cfpo/cli/app.py": "from cfpo.queue import RolloutQueue\nfrom cfpo.cli.stack import Stack\n",
        "cfpo/clients/reward.py": "def f():\n    from cfpo.cli.report import write_report\n",  # in a function too
        "services/rollout/worker.py": "from services.reward.functions import REGISTRY\n",  # one service, another
        "services/reward/app.py": "from services.reward.functions import REGISTRY\nimport cfpo.metrics\n",
        "trainer/training.py": "import services.rollout.worker\n",
        "services/control/app.py": "from trainer import losses\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(tmp_path) == [
        "cfpo/clients/reward.py: imports cfpo.cli.report",
        "cfpo/clients/reward.py: imports cfpo.cli.report.write_report",
        "cfpo/registry.py: imports trainer.learner",
        "cfpo/registry.py: imports trainer.learner.Learner",
        "services/control/app.py: imports trainer",
        "services/control/app.py: imports trainer.losses",
        "services/rollout/worker.py: imports services.reward.functions",
        "services/rollout/worker.py: imports services.reward.functions.REGISTRY",
        "trainer/training.py: imports services.rollout.worker",
    ]
