"""bench/bench_ab_serve.py compares two checkouts only if each one's processes import that
checkout.  Its stages start as `python -m`, which puts the working directory ahead of
PYTHONPATH unless PYTHONSAFEPATH is set; `check_imports_from` refuses to start a version
whose child processes would import another tree (it once compared the main checkout with
itself this way)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

import cmlp

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("bench_ab_serve", REPO / "bench" / "bench_ab_serve.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(REPO / "bench"))
    return mod


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A second tree holding a copy of the installed package (extensions included)."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(Path(cmlp.__file__).parent, root / "cmlp", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_a_version_whose_children_import_it_is_accepted(bench, checkout, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", str(checkout))
    monkeypatch.setenv("PYTHONSAFEPATH", "1")
    bench.check_imports_from(str(checkout))


def test_a_version_its_children_do_not_import_is_refused(bench, checkout, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv("PYTHONSAFEPATH", "1")
    with pytest.raises(SystemExit, match="not the checkout"):
        bench.check_imports_from(str(checkout))


def test_the_working_directory_wins_without_pythonsafepath(bench, checkout, monkeypatch):
    """The original bug: run from a checkout with built extensions, a child imports that
    checkout whatever PYTHONPATH says."""
    if not list((REPO / "cmlp").glob("_gpt2*.so")):
        pytest.skip("the extensions are not built in place in this checkout")
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", str(checkout))
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    with pytest.raises(SystemExit, match="not the checkout"):
        bench.check_imports_from(str(checkout))
