"""Fixtures of the CLI tests."""

from __future__ import annotations

import pytest

from cmlp.model.synthetic import init_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("tiny"), preset="tiny")
