"""Stage 0's writes to its clients, on a thread of their own (continuous batching).

The step loop decides what each client gets (a Token, Finished, an Error) and queues the
payloads here; ``flush()`` hands the step's batch to this thread, which seals and writes them
while the loop runs the next forward (the loop flushes just before it, so the writes take the
GIL while the forward has released it).  Written inline, the writes of an 8-token step and the
wake-ups they cause in the host and the clients sat between two forwards (about 0.9 ms of a
28-41 ms step, docs/batching.md).  Per client the messages keep the loop's order, and ``close`` comes after
them.  A write that fails (the client went away, or stopped reading for ``send_timeout``)
drops that client's later messages and is reported back through ``gone()``; the loop then
ends the generation.  The queue is bounded by what the loop can produce: one entry per token
of the admitted generations.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import List, Optional

from cmlp.errors import CmlpError

log = logging.getLogger(__name__)

_STOP = object()


class ClientWriter:
    def __init__(self, send_timeout: float):
        self.send_timeout = send_timeout
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._batch: list = []  # queued since the last flush (the loop's thread only)
        self._gone: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hb-client-writer", daemon=True)
        self._thread.start()

    def send(self, key: int, ch, payloads: List[bytes], close: bool = False) -> None:
        """Queue ``payloads`` for channel ``ch`` (``key`` names it in ``gone()``), then close
        it if ``close``; written after the next ``flush()``."""
        self._batch.append((key, ch, payloads, close))  # the caller's fresh list, not copied

    def flush(self) -> None:
        """Hand everything queued to the writer thread (one wake-up per batch)."""
        if self._batch:
            self._q.put(self._batch)
            self._batch = []

    def gone(self) -> List[int]:
        """Keys whose channel failed since the last call."""
        out = []
        while True:
            try:
                out.append(self._gone.get_nowait())
            except queue.Empty:
                return out

    def close(self, timeout: Optional[float] = None) -> None:
        """Write everything queued, then stop the thread."""
        self.flush()
        self._q.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        failed: set = set()  # channels whose later messages are dropped
        while True:
            batch = self._q.get()
            if batch is _STOP:
                return
            for item in batch:
                self._write(item, failed)

    def _write(self, item, failed: set) -> None:
        key, ch, payloads, close = item
        if id(ch) not in failed:
            try:
                for p in payloads:
                    ch.send(p, timeout=self.send_timeout)
            except Exception as exc:  # noqa: BLE001 - one client's failure must not stop the others
                if not isinstance(exc, CmlpError):
                    log.exception("stage 0: client %d: write failed", key)
                log.info("stage 0: client %d: write failed: %s", key, exc)
                failed.add(id(ch))
                self._gone.put(key)
        if close:
            failed.discard(id(ch))  # the id may be reused by a later channel
            ch.close()
