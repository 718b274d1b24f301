"""Hooks for every test directory (the slow tier).  Fixtures of one area live in
tests/<area>/conftest.py; helper functions and constants in tests/helpers/common.py."""

from __future__ import annotations

import pytest

# Markers that put a test in the slow tier (`pytest -m slow`); the default run excludes it.
SLOW_KINDS = ("wheel", "fuzz", "torch", "sustained")


def _in_fast_subset(item, marker) -> bool:
    """``fast_cases("id", ...)`` names the cases by their id; ``fast_cases(predicate)`` takes
    the case's parameters as keyword arguments."""
    params = item.callspec.params
    return any(want(**params) if callable(want) else want == item.callspec.id for want in marker.args)


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config, items):
    """wheel/fuzz/torch/sustained tests are slow; so are the cases of a parametrised test
    marked ``fast_cases`` outside its fast subset; skip ``torch`` ones without PyTorch."""
    cases: dict[tuple, tuple[set, set, object]] = {}  # test -> (its ids, the fast ids, marker)
    for item in items:
        if any(kind in item.keywords for kind in SLOW_KINDS):
            item.add_marker(pytest.mark.slow)
        marker = item.get_closest_marker("fast_cases")
        if marker is not None and hasattr(item, "callspec"):
            seen, fast, _ = cases.setdefault((item.path, item.originalname), (set(), set(), marker))
            seen.add(item.callspec.id)
            if _in_fast_subset(item, marker):
                fast.add(item.callspec.id)
            else:
                item.add_marker(pytest.mark.slow)
    if not any("::" in arg for arg in config.args):  # every case was collected: check the ids
        for (path, name), (seen, fast, marker) in cases.items():
            typos = [want for want in marker.args if not callable(want) and want not in seen]
            if typos or not fast:
                raise pytest.UsageError(f"{path}::{name}: fast_cases names no case {typos or ''}")
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
