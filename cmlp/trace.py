"""Opt-in event timeline for latency work: ``CMLP_TRACE=/path/prefix``.

Each process appends ``<monotonic ns> <pid> <event>`` lines to
``<prefix>.<pid>``.  CLOCK_MONOTONIC is shared by every process on the host,
so the files of the orchestrator and all stages merge into one timeline
(``sort -n prefix.*``).  Disabled, ``event()`` costs one global lookup.
"""

from __future__ import annotations

import os
import time

_PREFIX = os.environ.get("CMLP_TRACE")
_file = None


def event(name: str) -> None:
    if _PREFIX is None:
        return
    global _file
    if _file is None:
        # open for the life of the process, line-buffered: closed by the interpreter at exit
        _file = open(f"{_PREFIX}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115
    _file.write(f"{time.monotonic_ns()} {os.getpid()} {name}\n")
