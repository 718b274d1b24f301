"""Verification time for every attestation verifier: one injectable clock.

A verifier takes either ``at_ms`` (replay a captured document as of that
instant) or ``clock`` (a callable returning ms since the epoch, for tests);
default: the system clock.  The same instant is used for every time check in
one ``verify`` call (document freshness, certificate and collateral windows).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable, Optional

from cmlp.errors import VerificationFailed

MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the datetime limit


def check_at_ms(at_ms: Optional[int]) -> Optional[int]:
    if at_ms is not None and (type(at_ms) is not int or not 0 <= at_ms <= MAX_TIME_MS):
        raise ValueError(f"at_ms must be an integer in 0..{MAX_TIME_MS}, got {at_ms!r}")
    return at_ms


def now_ms(at_ms: Optional[int] = None, clock: Optional[Callable[[], int]] = None) -> int:
    """``at_ms`` if set, else ``clock()`` (checked), else the system time."""
    if at_ms is not None:
        return at_ms
    if clock is not None:
        now = int(clock())
        if not 0 <= now <= MAX_TIME_MS:
            raise VerificationFailed(f"clock returned an impossible time: {now} ms")
        return now
    return time.time_ns() // 1_000_000


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)


def datetime_to_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)
