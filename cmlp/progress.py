"""Progress bars for long steps with a known size (writing, loading, hashing a model).

A bar is drawn on stderr only when someone is watching: stderr is a terminal,
or ``CMLP_PROGRESS=1`` forces it (``CMLP_PROGRESS=0`` turns it off).  Stage
processes started by scripts write to log files, so they stay quiet.

The code that does the work does not take a bar argument: it calls
``advance(n)``, which moves the innermost open ``bar()`` (or does nothing).
That keeps progress out of the signatures of the model loaders.

    with progress.bar("writing model.safetensors", total=nbytes):
        ...
        progress.advance(len(chunk))
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

ENV = "CMLP_PROGRESS"

_local = threading.local()


def enabled(stream=None) -> bool:
    """Whether bars are drawn (CMLP_PROGRESS overrides the terminal check)."""
    forced = os.environ.get(ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _stack() -> list:
    if not hasattr(_local, "bars"):
        _local.bars = []
    return _local.bars


@contextlib.contextmanager
def bar(desc: str, total: int, unit: str = "B"):
    """A progress bar for ``total`` units (bytes by default) while the block runs.

    Nested bars are allowed: ``advance`` moves the innermost one.  Yields the
    tqdm object, or None when bars are off or tqdm is not installed.
    """
    handle = None
    if enabled():
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is a dependency; a stripped install just stays quiet
            pass
        else:
            handle = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                unit_scale=unit == "B",
                unit_divisor=1024 if unit == "B" else 1000,
                file=sys.stderr,
                leave=True,
                dynamic_ncols=True,
                mininterval=0.2,
            )
    stack = _stack()
    stack.append(handle)
    try:
        yield handle
    finally:
        stack.pop()
        if handle is not None:
            handle.close()


def advance(n: int) -> None:
    """Move the innermost open bar by ``n`` units (no-op without one)."""
    stack = _stack()
    if stack and stack[-1] is not None:
        stack[-1].update(n)
