"""Concurrent, bounded handshakes on a listening socket (issue 10, attack 3).

A stage used to accept one connection at a time and run its handshake (and
then wait for the first control message) before looking at the next one, so
one idle or half-open connection locked it.  Here an accept thread hands every
connection to its own short-lived thread that runs ``establish(sock)`` - the
handshake, and for control connections the first message - under deadlines
that ``establish`` enforces.  Completed connections are queued for the stage.

Bounds (why they hold):
* at most ``max_in_flight`` connections are being established at once; when a
  new one arrives at the limit, the *oldest* in flight is cut.  An idle peer
  therefore holds a slot for at most its deadline and can displace a live
  handshake only by opening ``max_in_flight`` newer connections meanwhile;
* at most ``max_ready`` established connections wait to be served; beyond
  that the oldest waiting one is closed;
* every thread ends within the deadline of ``establish`` (or as soon as its
  socket is cut), so threads and descriptors stay bounded.
"""

from __future__ import annotations

import collections
import logging
import select
import socket
import threading
import time
from typing import Callable, Deque, Dict, Generic, Optional, TypeVar

from cmlp.errors import CmlpError, Timeout
from cmlp.transport import sockets

log = logging.getLogger(__name__)

ACCEPT_SLICE = 0.2  # bound of one accept() after select() saw a connection, and of waits


def _cut(sock: socket.socket) -> None:
    """Wake the thread blocked on ``sock`` (it then fails and closes it)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


T = TypeVar("T")  # what ``establish`` makes of a socket (a channel, a pair, ...)


class Acceptor(Generic[T]):
    """Accept connections on ``listener`` and establish them concurrently.

    ``establish(sock)`` returns the established result (it owns ``sock`` and
    must close it on failure); ``on_error(exc)`` is told of each failure;
    ``discard(result)`` closes a result nobody will take.
    """

    def __init__(
        self,
        listener: socket.socket,
        establish: Callable[[socket.socket], T],
        *,
        discard: Callable[[T], None],
        on_error: Callable[[BaseException], None],
        max_in_flight: int = 8,
        max_ready: int = 4,
        name: str = "acceptor",
    ):
        if max_in_flight < 1 or max_ready < 1:
            raise ValueError("max_in_flight and max_ready must be >= 1")
        self.listener = listener
        self.establish = establish
        self.discard = discard
        self.on_error = on_error
        self.max_in_flight = max_in_flight
        self.max_ready = max_ready
        self.name = name
        self._lock = threading.Lock()
        self._ready_cv = threading.Condition(self._lock)
        self._in_flight: Dict[socket.socket, float] = {}  # insertion order = age order
        self._ready: Deque[T] = collections.deque()
        self._stop = threading.Event()
        # close() writes a byte here: the accept thread wakes at once instead of finishing a
        # timed accept (a stage closes its acceptor before every downstream handshake)
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._accept_loop, name=name, daemon=True)
        self._thread.start()

    # -- the accept thread ---------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([self.listener, self._wake_r], [], [])
                if self._stop.is_set():
                    return
                if self.listener not in readable:
                    continue
                sock = sockets.accept(self.listener, timeout=ACCEPT_SLICE)
            except Timeout:
                continue  # the connection went away between select and accept
            except ValueError:  # the listener was closed under us (fileno -1)
                return
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.warning("%s: accept failed: %s", self.name, exc)
                time.sleep(ACCEPT_SLICE)
                continue
            with self._lock:
                if self._stop.is_set():
                    _cut(sock)
                    sock.close()
                    return
                if len(self._in_flight) >= self.max_in_flight:
                    oldest = next(iter(self._in_flight))
                    del self._in_flight[oldest]
                    log.warning(
                        "%s: %d handshakes in flight: cutting the oldest", self.name, self.max_in_flight
                    )
                    _cut(oldest)
                self._in_flight[sock] = time.monotonic()
            threading.Thread(target=self._run, args=(sock,), name=f"{self.name}-hs", daemon=True).start()

    def _run(self, sock: socket.socket) -> None:
        try:
            result = self.establish(sock)
        except (CmlpError, OSError) as exc:
            with self._lock:
                self._in_flight.pop(sock, None)
            self.on_error(exc)
            return
        except BaseException:
            with self._lock:
                self._in_flight.pop(sock, None)
            raise
        dropped: Optional[T] = None
        with self._lock:
            self._in_flight.pop(sock, None)
            if self._stop.is_set():
                dropped = result
            else:
                self._ready.append(result)
                if len(self._ready) > self.max_ready:
                    dropped = self._ready.popleft()
                self._ready_cv.notify()
        if dropped is not None:
            self.discard(dropped)

    # -- the consumer ------------------------------------------------------------
    def get(self, timeout: Optional[float] = None) -> T:
        """The next established connection (oldest first); ``Timeout`` if none in time."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._ready:
                if self._stop.is_set():
                    raise Timeout(f"{self.name} is closed")
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise Timeout(f"{self.name}: no established connection within {timeout} s")
                self._ready_cv.wait(ACCEPT_SLICE if left is None else min(left, ACCEPT_SLICE))
            return self._ready.popleft()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def close(self) -> None:
        """Stop accepting, cut every connection in flight, discard every waiting one."""
        with self._lock:
            self._stop.set()
            pending = list(self._in_flight)
            self._in_flight.clear()
            ready = list(self._ready)
            self._ready.clear()
            self._ready_cv.notify_all()
        for sock in pending:
            _cut(sock)
        for result in ready:
            self.discard(result)
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(ACCEPT_SLICE * 5)
            if not self._thread.is_alive():
                self._wake_r.close()
                self._wake_w.close()
