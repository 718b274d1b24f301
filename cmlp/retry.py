"""One retry helper for every reconnect in cmlp, and its policy (transport.md 6.2).

``retry(fn, policy)`` calls ``fn`` until it returns, sleeping ``policy.delay(attempt)``
after each failure of the listed types, until the retries are spent or the
``Deadline`` has passed; then the last failure propagates (or ``give_up`` turns
it into the error the caller wants to show).  Used by sockets.connect_retry,
the stage's downstream connect and GPT-2 generation's recovery.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Type, TypeVar

from cmlp.deadline import Deadline

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3  # retries after the first attempt
    initial_delay: float = 1.0  # seconds
    max_delay: float = 30.0
    backoff_multiplier: float = 2.0

    @classmethod
    def none(cls) -> "RetryPolicy":
        return cls(max_retries=0)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Sleep after failed attempt ``attempt`` (0-based): capped, then jittered in [0.5, 1]."""
        base = min(self.initial_delay * (self.backoff_multiplier**attempt), self.max_delay)
        return base * (rng or random).uniform(0.5, 1.0)


def retry(
    fn: Callable[[], T],
    policy: Optional[RetryPolicy],
    *,
    on: Tuple[Type[BaseException], ...] = (Exception,),
    deadline: Optional[Deadline] = None,
    sleep: Callable[[float], None] = time.sleep,
    give_up: Optional[Callable[[BaseException, int], BaseException]] = None,
) -> T:
    """``fn()``, retried per ``policy`` (None: one attempt) on the exception types ``on``.

    Stops early once ``deadline`` has passed (the pause before a retry never runs past
    it).  The final failure is re-raised, or ``give_up(exc, attempts)`` is raised from it.
    ``sleep`` is the pause between attempts (a caller that must keep watching something
    passes its own).  Exceptions not in ``on`` propagate at once.
    """
    attempts = (policy.max_retries if policy is not None else 0) + 1
    attempt = 0
    while True:
        try:
            return fn()
        except on as exc:
            attempt += 1
            if policy is None or attempt >= attempts or (deadline is not None and deadline.expired()):
                if give_up is None:
                    raise
                raise give_up(exc, attempt) from exc
            pause = policy.delay(attempt - 1)
            if deadline is not None:
                pause = min(pause, deadline.remaining())
            log.debug("attempt %d failed (%s); retrying in %.3f s", attempt, exc, pause)
            sleep(pause)
