"""What every benchmark prints about the machine it ran on (shared by the bench/ scripts)."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU model as lscpu names it (numbers are only comparable on the same model)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
