"""Host relay: forward ciphertext between two enclaves that cannot reach each other.

The Nitro topology: stage i connects its data_out to the host, the host
connects to stage i+1's data_in, and bytes are pumped both ways without
being decrypted (the SecureChannel handshake between the two stages passes
straight through).  The pumping is Cython with the GIL released, using
splice(2) where the socket family supports it; with ``capture`` set, every
forwarded byte is also appended to a file per direction (the hostile-host
capture of the security tests).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import List, Optional

from cmlp import _netio
from cmlp.errors import PipelineError, Timeout
from cmlp.transport import sockets
from cmlp.transport.config import RetryPolicy
from cmlp.transport.sockets import Endpoint

log = logging.getLogger(__name__)


class RelayLink:
    """Relays stage ``index``'s data_out (listened on here) to stage ``index + 1``'s data_in."""

    def __init__(
        self,
        index: int,
        listen_at: Endpoint,
        target: Endpoint,
        retry: Optional[RetryPolicy] = None,
        capture_prefix: Optional[str] = None,
    ):
        self.index = index
        self.listen_at = listen_at
        self.target = target
        self.retry = retry or RetryPolicy()
        self.capture_prefix = capture_prefix
        self.listener = sockets.listen(listen_at)
        self.forwarded = {"down": 0, "up": 0}  # down: stage i -> i+1
        self.error: Optional[BaseException] = None
        self._socks: List[socket.socket] = []
        self._ready = threading.Event()
        self._pumps: List[threading.Thread] = []
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    def start(self, accept_timeout: Optional[float] = None) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(accept_timeout,), name=f"relay-{self.index}", daemon=True
        )
        self._thread.start()

    def _run(self, accept_timeout) -> None:
        try:
            upstream = sockets.accept(self.listener, accept_timeout)
            self._socks.append(upstream)
            downstream = sockets.connect_retry(self.target, self.retry)
            self._socks.append(downstream)
            if self._closed:
                return
            for src, dst, key in ((upstream, downstream, "down"), (downstream, upstream, "up")):
                t = threading.Thread(
                    target=self._pump, args=(src, dst, key), name=f"relay-{self.index}-{key}", daemon=True
                )
                t.start()
                self._pumps.append(t)
        except BaseException as exc:  # noqa: BLE001 - reported through wait_ready / alive
            self.error = exc
            log.warning("relay %d (%s -> %s) failed: %s", self.index, self.listen_at, self.target, exc)
        finally:
            self._ready.set()

    def _pump(self, src: socket.socket, dst: socket.socket, key: str) -> None:
        capture = -1
        if self.capture_prefix:
            capture = os.open(
                f"{self.capture_prefix}{self.index}_{key}.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
            )
        try:
            total, err = _netio.pump(src.fileno(), dst.fileno(), capture)
            self.forwarded[key] += total
            if err and not self._closed:
                log.info("relay %d %s ended: %s", self.index, key, os.strerror(err))
        finally:
            if capture >= 0:
                os.close(capture)

    def wait_ready(self, timeout: Optional[float]) -> None:
        if not self._ready.wait(timeout):
            raise Timeout(
                f"relay {self.index}: stage {self.index} did not connect to "
                f"{self.listen_at} within {timeout} s"
            )
        if self.error is not None:
            raise PipelineError(
                f"relay {self.index} ({self.listen_at} -> {self.target}): {self.error}"
            ) from self.error

    @property
    def alive(self) -> bool:
        return bool(self._pumps) and all(t.is_alive() for t in self._pumps)

    def close(self) -> None:
        """Stop pumping: shut the sockets down (waking the pumps), then close them."""
        self._closed = True
        try:
            self.listener.close()
        except OSError:
            pass
        for s in self._socks:
            try:
                _netio.shutdown_both(s.fileno())
            except (OSError, ValueError):
                pass
        for t in self._pumps:
            t.join(5)
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass
