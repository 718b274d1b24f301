"""Point the user at a stage's own log when the orchestrator cannot reach or start it.

A stage that cannot start (bad layer range, missing weights, wrong hashes)
says why on its own stderr, which the orchestrator cannot see.  When the
stage logs are files (the run scripts set ``CMLP_STAGE_LOG``, or pass
``cmlp-orch --stage-log``), the orchestrator's one-line error names the file
and quotes the stage's last error line; otherwise it says where to look.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional

from cmlp.errors import UNKNOWN_STAGE, StageFailed

ENV = "CMLP_STAGE_LOG"  # e.g. /tmp/run/stage{idx}.log
TAIL_BYTES = 64 << 10


def _refused(exc: Optional[BaseException]) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionRefusedError) or (
            isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def last_error_line(path: Path) -> Optional[str]:
    """The stage's last 'error' line (its one-line failure), else its last line."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - TAIL_BYTES))
            lines = [
                line.strip() for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()
            ]
    except OSError:
        return None
    for line in reversed(lines):
        if "error" in line.lower():
            return line
    return lines[-1] if lines else None


def explain(exc: StageFailed, manifest: str, pattern: Optional[str]) -> StageFailed:
    """``exc`` with where to look appended: the stage's log file, or its stderr."""
    idx = exc.stage_idx
    if idx == UNKNOWN_STAGE:
        return exc
    reason = exc.reason
    if _refused(exc):
        reason += f" (nothing listens there: stage {idx} is not running or could not start)"
    if pattern:
        path = Path(pattern.replace("{idx}", str(idx)))
        line = last_error_line(path)
        reason += f"; its log {path}" + (f" ends with: {line}" if line else "")
    elif _refused(exc):
        reason += (
            f"; start it with: cmlp-stage --manifest {manifest} --stage-idx {idx}, "
            "or read its stderr for why it stopped"
        )
    else:
        reason += f"; stage {idx}'s own stderr says more"
    better = StageFailed(idx, reason)
    better.__cause__ = exc.__cause__
    return better


def pattern_from_env(given: Optional[str]) -> Optional[str]:
    return given if given is not None else (os.environ.get(ENV) or None)
