"""Shared setup for the atheris harnesses in this folder.

Every harness calls :func:`setup` before importing cmlp, then :func:`run`.

Native coverage: when ``fuzz/build.sh`` has built the Cython extensions with
``-fsanitize=address,fuzzer-no-link`` into ``fuzz/build/lib``, those copies are
loaded instead of the in-tree ones (their directory goes first on
``cmlp.__path__``) and the process re-executes itself once with atheris'
``asan_with_fuzzer.so`` preloaded, as atheris documents for native
extensions: the instrumented code needs libFuzzer's coverage symbols and the
ASan runtime in the global namespace.  Without that build (or with
``CMLP_FUZZ_NATIVE=0``) the harness still runs with Python-level coverage.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parent
NATIVE_DIR = FUZZ_DIR / "build" / "lib" / "cmlp"
NATIVE_MODULES = ("_frame", "_record", "_netio")

# Python leaks at start-up by design; ASan's leak checker would flag it on exit.
ASAN_DEFAULTS = "detect_leaks=0:allocator_may_return_null=0:quarantine_size_mb=64"


def _preload_path() -> str:
    import atheris

    return str(Path(atheris.path()) / "asan_with_fuzzer.so")


def native_build_present() -> bool:
    return all(any(NATIVE_DIR.glob(f"{name}.*.so")) for name in NATIVE_MODULES)


def _use_native() -> bool:
    return (
        os.environ.get("CMLP_FUZZ_NATIVE", "1") != "0"
        and native_build_present()
        and Path(_preload_path()).is_file()
    )


def setup() -> str:
    """Make ``import cmlp`` pick the right extensions; returns the coverage mode.

    Must run before any ``cmlp`` submodule is imported.
    """
    if str(REPO) not in sys.path:
        sys.path.insert(1, str(REPO))
    if not _use_native():
        return "python"
    preload = _preload_path()
    if preload not in os.environ.get("LD_PRELOAD", "").split(":"):
        env = dict(os.environ)
        env["LD_PRELOAD"] = ":".join(p for p in (preload, env.get("LD_PRELOAD")) if p)
        env["ASAN_OPTIONS"] = ":".join(p for p in (ASAN_DEFAULTS, env.get("ASAN_OPTIONS")) if p)
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    import cmlp

    cmlp.__path__.insert(0, str(NATIVE_DIR))
    return "native+python"


def check_native_loaded(mode: str) -> None:
    """Fail loudly if the instrumented extensions were not the ones imported."""
    if mode == "python":
        return
    for name in NATIVE_MODULES:
        module = sys.modules.get(f"cmlp.{name}")
        if module is not None and not module.__file__.startswith(str(NATIVE_DIR)):
            raise RuntimeError(f"cmlp.{name} came from {module.__file__}, not {NATIVE_DIR}")


def run(test_one_input, max_input: int, max_len: int | None = None) -> None:
    """Start libFuzzer on ``test_one_input``; inputs over ``max_input`` bytes are skipped."""
    import atheris

    def guarded(data: bytes) -> None:
        if len(data) <= max_input:
            test_one_input(data)

    argv = list(sys.argv)
    if not any(a.startswith("-max_len=") for a in argv):
        argv.append(f"-max_len={max_len or max_input}")
    atheris.Setup(argv, guarded)
    atheris.Fuzz()
