"""A frame-aware man-in-the-middle TCP proxy for hostile-network tests.

The proxy listens on an ephemeral port and forwards to a target.  In each
direction it cuts the byte stream into frames (13-byte header + payload,
without validating anything) and hands every frame to a *tamper* function
that returns the bytes to emit instead: the frame itself, a modified copy,
nothing, several frames, or :data:`CLOSE` to cut the connection.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Callable

CLOSE = object()
Tamper = Callable[[int, bytes], object]  # (frame index in this direction, frame) -> output


def passthrough(index: int, frame: bytes):
    return frame


def flip_bit(at_index: int, offset: int, bit: int = 0) -> Tamper:
    def tamper(index, frame):
        if index != at_index:
            return frame
        b = bytearray(frame)
        b[offset if offset >= 0 else len(b) + offset] ^= 1 << bit
        return bytes(b)

    return tamper


def replay(at_index: int) -> Tamper:
    """Send frame ``at_index`` twice."""
    return lambda index, frame: frame + frame if index == at_index else frame


def swap(at_index: int) -> Tamper:
    """Emit frames ``at_index`` and ``at_index + 1`` in reverse order."""
    held = {}

    def tamper(index, frame):
        if index == at_index:
            held["f"] = frame
            return b""
        if index == at_index + 1:
            return frame + held.pop("f")
        return frame

    return tamper


def truncate_and_close(at_index: int, keep: int = 20) -> Tamper:
    return lambda index, frame: [frame[:keep], CLOSE] if index == at_index else frame


def inject_before(at_index: int, data: bytes) -> Tamper:
    return lambda index, frame: data + frame if index == at_index else frame


def oversized_header(msg_type: int = 2, seq: int = 0) -> bytes:
    return struct.pack(">HBBBII", 0xCF4D, 4, msg_type, 1, seq, 32 * 1024 * 1024 + 1)


def set_version(at_index: int, version: int) -> Tamper:
    def tamper(index, frame):
        return frame[:2] + bytes([version]) + frame[3:] if index == at_index else frame

    return tamper


def stall(at_index: int, keep: int = 10) -> Tamper:
    """Forward part of frame ``at_index`` and then nothing, forever (slowloris)."""

    def tamper(index, frame):
        if index == at_index:
            return [frame[:keep], STALL]
        return frame

    return tamper


STALL = object()


class MitmProxy:
    """Listen on 127.0.0.1:0, forward to ``target``; tamper per direction."""

    def __init__(
        self,
        target: tuple,
        upstream: Tamper = passthrough,
        downstream: Tamper = passthrough,
        record: bool = False,
    ):
        self.target = target
        self.upstream = upstream  # client -> server
        self.downstream = downstream  # server -> client
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.addr = self.listener.getsockname()
        self.captured = {"up": bytearray(), "down": bytearray()} if record else None
        self.connections = 0
        self._stop = threading.Event()
        self._socks = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"{self.addr[0]}:{self.addr[1]}"

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self.connections += 1
            self._socks += [client, server]
            for src, dst, fn, key in (
                (client, server, self.upstream, "up"),
                (server, client, self.downstream, "down"),
            ):
                threading.Thread(target=self._pump, args=(src, dst, fn, key), daemon=True).start()

    def _pump(self, src, dst, tamper, key):
        buf = bytearray()
        index = 0
        try:
            while True:
                chunk = src.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 13:
                    n = 13 + struct.unpack_from(">I", buf, 9)[0]
                    if len(buf) < n:
                        break
                    frame = bytes(buf[:n])
                    del buf[:n]
                    out = tamper(index, frame)
                    index += 1
                    for piece in out if isinstance(out, list) else [out]:
                        if piece is CLOSE:
                            raise ConnectionAbortedError
                        if piece is STALL:
                            self._stop.wait()
                            raise ConnectionAbortedError
                        if self.captured is not None:
                            self.captured[key] += piece
                        dst.sendall(piece)
                if len(buf) > 64 * 1024 * 1024:
                    break
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._stop.set()
        self.listener.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass


def wait_until(predicate, timeout: float = 5.0, step: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


def drop(at_index: int) -> Tamper:
    """Silently drop frame ``at_index`` (e.g. the 40-byte cache-clear sentinel)."""
    return lambda index, frame: b"" if index == at_index else frame


def drop_if(predicate) -> Tamper:
    """Drop the first frame for which ``predicate(index, frame)`` is true."""
    state = {"done": False}

    def tamper(index, frame):
        if not state["done"] and predicate(index, frame):
            state["done"] = True
            return b""
        return frame

    return tamper
