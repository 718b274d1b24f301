"""Hooks for every test directory (the slow tier).  Fixtures of one area live in
tests/<area>/conftest.py; helper functions and constants in tests/helpers/common.py."""

from __future__ import annotations

import pytest

# Markers that put a test in the slow tier (`pytest -m slow`); the default run excludes it.
SLOW_KINDS = ("wheel", "fuzz", "torch", "sustained")


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config, items):
    """wheel/fuzz/torch/sustained tests are slow; skip ``torch`` ones without PyTorch."""
    for item in items:
        if any(kind in item.keywords for kind in SLOW_KINDS):
            item.add_marker(pytest.mark.slow)
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    if have_torch:
        return
    skip = pytest.mark.skip(reason="PyTorch + transformers not installed")
    for item in items:
        if "torch" in item.keywords:
            item.add_marker(skip)
