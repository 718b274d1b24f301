"""setup.py stops with one line naming the package when a system header is missing (issue 16).

The compiler is made blind to the system include directories (``-nostdinc``), so sodium.h and
cblas.h are "missing" without touching the machine; the build must stop before compiling.
"""

import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers.common import REPO

pytestmark = pytest.mark.slow  # runs setup.py three times (cythonize): the build tier


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory):
    """setup.py + sources in a scratch directory (cythonize writes next to the .pyx)."""
    if not shutil.which("gcc"):
        pytest.skip("needs gcc")
    dst = tmp_path_factory.mktemp("src")
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(REPO / name, dst / name)
    for d in ("pyx", "csrc"):
        shutil.copytree(REPO / d, dst / d)
    (dst / "cmlp").mkdir()
    shutil.copy(REPO / "cmlp" / "__init__.py", dst / "cmlp" / "__init__.py")
    return dst


def build(src, **env):
    full = dict(os.environ, CC="gcc -nostdinc", **env)
    return subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--build-temp",
            str(src / "tmp"),
            "--build-lib",
            str(src / "lib"),
        ],
        cwd=src,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "only, header_hint, package",
    [
        ("_record", "libsodium headers missing", "libsodium-dev"),
        ("_gpt2", "CBLAS headers missing", "scipy-openblas32"),  # the system-BLAS build
    ],
)
def test_missing_header_is_one_line_naming_the_package(source_copy, only, header_hint, package):
    r = build(source_copy, CMLP_ONLY=only, CMLP_BLAS="system")
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"cmlp: cannot build cmlp.{only}: {header_hint}"), r.stderr
    assert package in lines[-1]
    assert "fatal error" not in r.stderr  # stopped before the compiler ran
    assert not (source_copy / "lib").exists()


def test_unknown_blas_source_is_refused(source_copy):
    r = build(source_copy, CMLP_BLAS="mkl")
    assert r.returncode != 0 and "CMLP_BLAS='mkl'" in r.stderr
