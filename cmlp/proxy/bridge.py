"""Blocking client iterator -> asyncio: one worker thread per generation.

The client's ``generate`` blocks on the network, so each generation runs in its own
thread.  The thread appends events to a deque and wakes the event loop with one
``call_soon_threadsafe`` per event (no thread-pool hop per ``next()``); the consumer
takes everything queued at each wake-up, so a burst of tokens costs one wake-up.
``cancel()`` asks the thread to stop: it closes the iterator (which cancels the
generation in the enclave and frees its slot) as soon as the blocking ``next()``
returns, i.e. at the latest after the next token or the client's timeout.
"""

from __future__ import annotations

import asyncio
import collections
import threading


class Failure:
    """The generation raised; ``exc`` is what it raised."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


END = object()  # the iterator is exhausted
CANCELLED = object()  # cancel() was called: the HTTP client is gone


class TokenStream:
    def __init__(self, make_iterator):
        self._make = make_iterator
        self._loop = asyncio.get_running_loop()
        self._items: collections.deque = collections.deque()  # append/popleft are atomic
        self._waiter: asyncio.Future | None = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cmlp-proxy-gen", daemon=True)

    def start(self) -> "TokenStream":
        self._thread.start()
        return self

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop the generation (call from the event loop); wakes a waiting consumer."""
        if not self._cancel.is_set():
            self._cancel.set()
            self._items.append(CANCELLED)
            self._wake()

    # -- event loop side ------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_batch(self) -> list:
        """Wait for at least one item, then take everything already queued."""
        while not self._items:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items = []
        while self._items:
            items.append(self._items.popleft())
        return items

    # -- worker thread side -----------------------------------------------------
    def _put(self, item) -> bool:
        self._items.append(item)
        try:
            self._loop.call_soon_threadsafe(self._wake)
            return True
        except RuntimeError:  # the loop is gone (server shutting down)
            self._cancel.set()
            return False

    def _run(self) -> None:
        events = None
        try:
            events = self._make()
            for event in events:
                if self._cancel.is_set() or not self._put(event):
                    return
            self._put(END)
        except BaseException as exc:  # delivered to the request; mapped to an HTTP error there
            self._put(Failure(exc))
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                try:
                    close()  # cancels the generation if it had not finished
                except Exception:
                    pass
