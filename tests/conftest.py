"""Fixtures every test layer shares: the tiny random model, built locally in seconds."""

import pytest

from cfpo.models import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)
