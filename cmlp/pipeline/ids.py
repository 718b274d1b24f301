"""Request ids and ping sequence numbers (pipeline.md 2.12).

One process-wide u64 counter, seeded on first use with 8 bytes from the OS
CSPRNG (big-endian), incremented with wrap-around.  A lock makes the first
use race-free.
"""

import os
import threading

_lock = threading.Lock()
_next = None


def next_id() -> int:
    global _next
    with _lock:
        if _next is None:
            _next = int.from_bytes(os.urandom(8), "big")
        value = _next
        _next = (_next + 1) & 0xFFFFFFFFFFFFFFFF
        return value
