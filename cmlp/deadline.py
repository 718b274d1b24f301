"""One way to track a deadline: a point on the monotonic clock, or none at all.

Every blocking step that belongs to a larger operation (a handshake, a request, a
data-channel set-up, a recovery) takes its time from one ``Deadline`` instead of
restarting its own timeout, so the operation as a whole is bounded.
"""

from __future__ import annotations

import math
import time
from typing import Optional

from cmlp.errors import Timeout


class Deadline:
    """``Deadline(seconds)`` ends ``seconds`` from now; ``Deadline(None)`` never ends."""

    __slots__ = ("end", "what")

    def __init__(self, seconds: Optional[float], what: str = "deadline passed"):
        self.end = None if seconds is None else time.monotonic() + seconds
        self.what = what  # the Timeout message once it has passed

    def remaining(self) -> float:
        """Seconds left (0.0 once passed; infinity without a deadline)."""
        if self.end is None:
            return math.inf
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def left(self) -> float:
        """Timeout for the next blocking call; raises ``Timeout(what)`` once passed.

        Without a deadline it returns -1.0, the I/O layer's "block" (pyx/_netio.pyx).
        """
        if self.end is None:
            return -1.0
        left = self.end - time.monotonic()
        if left <= 0:
            raise Timeout(self.what)
        return left

    def check(self) -> None:
        """Raise ``Timeout(what)`` if the deadline has passed."""
        if self.expired():
            raise Timeout(self.what)

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining()!r}, what={self.what!r})"
