"""The test suite; its folders mirror the tree (cfpo/, cfpo/cli/, services/, trainer/), plus end-to-end, deploy
and benchmark tests."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
