"""Stream endpoints: TCP, AF_VSOCK and in-process socket pairs.

Addresses are literal, as in the reference (``SocketAddr::parse``): TCP is
``a.b.c.d:port`` or ``[v6]:port`` (no DNS), vsock is ``vsock:CID:PORT``.
Every TCP socket gets TCP_NODELAY.  Listeners accept one connection at a time;
attestation, not the source address, authenticates the peer.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from typing import Optional, Union

from cmlp.deadline import Deadline
from cmlp.retry import RetryPolicy, retry

log = logging.getLogger(__name__)

VSOCK_CID_ANY = socket.VMADDR_CID_ANY  # <linux/vm_sockets.h>, as pyx/_netio.pyx sees them
VSOCK_CID_HOST = socket.VMADDR_CID_HOST
VSOCK_CID_PARENT = 3  # the parent instance, as seen from a Nitro enclave


@dataclass(frozen=True)
class TcpAddr:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class VsockAddr:
    cid: int
    port: int

    def __str__(self) -> str:
        return f"vsock:{self.cid}:{self.port}"


Endpoint = Union[TcpAddr, VsockAddr]


def parse_tcp_addr(text: str) -> TcpAddr:
    """``ip:port`` or ``[v6]:port``; host names are rejected (no DNS)."""
    if not isinstance(text, str):
        raise ValueError(f"invalid TCP address {text!r}: not a string")
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"invalid TCP address '{text}': missing ':port'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        version_ok = 6
    else:
        version_ok = 4
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid TCP address '{text}': '{host}' is not an IP literal") from None
    if ip.version != version_ok:
        raise ValueError(f"invalid TCP address '{text}': IPv6 needs brackets, [addr]:port")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid TCP address '{text}': bad port '{port_text}'")
    return TcpAddr(str(ip), int(port_text))


def parse_endpoint(text: str) -> Endpoint:
    """A CLI endpoint: ``ip:port``, ``[v6]:port`` or ``vsock:CID:PORT``."""
    if text.startswith("vsock:"):
        parts = text.split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise ValueError(f"invalid vsock address '{text}': expected vsock:CID:PORT")
        cid, port = int(parts[1]), int(parts[2])
        if cid > 0xFFFFFFFF or port > 0xFFFFFFFF:
            raise ValueError(f"invalid vsock address '{text}': CID and port are u32")
        return VsockAddr(cid, port)
    return parse_tcp_addr(text)


# ---------------------------------------------------------------------------
# Listening and connecting
# ---------------------------------------------------------------------------
def _tcp_family(addr: TcpAddr) -> int:
    return socket.AF_INET6 if ":" in addr.host else socket.AF_INET


def listen(endpoint: Endpoint, backlog: int = 16) -> socket.socket:
    """A listening socket (SO_REUSEADDR; vsock binds the given CID, usually ANY)."""
    if isinstance(endpoint, VsockAddr):
        from cmlp import _netio  # compiled: imported on use, so addresses parse without it

        fd = _netio.vsock_listen(endpoint.port, endpoint.cid, backlog)
        return socket.socket(fileno=fd)
    sock = socket.socket(_tcp_family(endpoint), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((endpoint.host, endpoint.port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {endpoint}: {exc.strerror}") from None
    return sock


def local_endpoint(listener: socket.socket) -> Endpoint:
    addr = listener.getsockname()
    if listener.family == socket.AF_VSOCK:
        return VsockAddr(addr[0], addr[1])
    return TcpAddr(addr[0], addr[1])


def _prepare(sock: socket.socket) -> socket.socket:
    # Blocking mode: the Cython I/O uses MSG_DONTWAIT + poll with deadlines,
    # and the relay's splice(2) needs blocking descriptors.
    sock.setblocking(True)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def accept(listener: socket.socket, timeout: Optional[float] = None) -> socket.socket:
    """Accept one connection (``timeout`` seconds, None = wait forever)."""
    listener.settimeout(timeout)
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        from cmlp.errors import Timeout

        raise Timeout(f"no connection on {local_endpoint(listener)} within {timeout} s") from None
    finally:
        listener.settimeout(None)
    return _prepare(conn)


def connect(endpoint: Endpoint, timeout: Optional[float] = 10.0) -> socket.socket:
    """One connection attempt."""
    target: tuple[Union[int, str], int]
    if isinstance(endpoint, VsockAddr):
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        target = (endpoint.cid, endpoint.port)
    else:
        sock = socket.socket(_tcp_family(endpoint), socket.SOCK_STREAM)
        target = (endpoint.host, endpoint.port)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return _prepare(sock)


def connect_failed(endpoint: Endpoint, exc: BaseException, attempts: int) -> OSError:
    """The final connect error: names the transport, the target and the attempts made."""
    kind = "VSock" if isinstance(endpoint, VsockAddr) else "TCP"
    target = f"cid={endpoint.cid},port={endpoint.port}" if isinstance(endpoint, VsockAddr) else str(endpoint)
    errno = exc.errno if isinstance(exc, OSError) else None
    cause = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    return OSError(errno or 0, f"{kind} connect to {target} failed after {attempts} attempt(s): {cause}")


def connect_retry(
    endpoint: Endpoint,
    policy: Optional[RetryPolicy] = None,
    timeout: Optional[float] = 10.0,
    sleep=time.sleep,
    deadline: Optional[Deadline] = None,
) -> socket.socket:
    """Connect with the retry policy; the final error names the target and attempts."""
    return retry(
        lambda: connect(endpoint, timeout),
        policy,
        on=(OSError,),
        deadline=deadline,
        sleep=sleep,
        give_up=lambda exc, n: connect_failed(endpoint, exc, n),
    )


def socketpair():
    """Two connected in-process stream sockets (tests)."""
    a, b = socket.socketpair()
    return _prepare(a), _prepare(b)
