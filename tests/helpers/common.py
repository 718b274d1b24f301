"""Helpers shared by tests in every directory (formerly in tests/conftest.py).

Fixtures and hooks stay in conftest.py files; plain functions and constants that tests
import live here, imported as ``from tests.helpers.common import free_port``.
"""

from __future__ import annotations

import collections
import fcntl
import os
import random
import socket
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


# Ports for manifests written before their stages start (the stages bind them later).  A port
# found free by binding port 0 comes from the ephemeral range (ip_local_port_range,
# 32768-60999 by default), where an outgoing connection may take it before the stage binds
# it; no outgoing connection takes a port above that range.  A port handed out stays
# reserved (an flock on a file named after it) for the next HELD ports this process hands
# out, so test processes side by side (pytest-xdist workers, two runs) never hand out the
# same port while its stage has not bound it yet.
HELD = 128
_LOCKS = Path(tempfile.gettempdir()) / "cmlp-test-ports"
_held: collections.deque = collections.deque()  # (port, lock fd), oldest first


def _pool() -> range:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            top = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        top = 60999
    return range(max(top + 1, 1024), 65536)


def _reserve(port: int) -> bool:
    """Take ``port``'s lock, or False when another process holds it."""
    try:
        _LOCKS.mkdir(mode=0o777, exist_ok=True)
        fd = os.open(_LOCKS / str(port), os.O_CREAT | os.O_RDWR, 0o666)
    except OSError:
        return True  # no place for locks: binding is the only check
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held.append((port, fd))
    while len(_held) > HELD:
        os.close(_held.popleft()[1])
    return True


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that nothing listens on (see above)."""
    pool, ports = _pool(), []
    recent = {port for port, _ in _held}
    for _ in range(20 * len(pool) if len(pool) > 4 * HELD else 0):
        if len(ports) == n:
            return ports
        port = random.choice(pool)
        if port in recent or port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if _reserve(port):
            ports.append(port)
    socks = []  # no room above the ephemeral range: the kernel's choice
    try:
        while len(ports) < n:
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def free_port() -> int:
    return free_ports(1)[0]


def run_handshake(init_sock, resp_sock, init_kwargs=None, resp_kwargs=None):
    """Connect and accept concurrently; returns (initiator, responder) channels or errors."""
    from cmlp.attestation import MockProvider, MockVerifier
    from cmlp.transport import SecureChannel, SessionConfig

    init_kwargs = dict(init_kwargs or {})
    resp_kwargs = dict(resp_kwargs or {})
    for kw in (init_kwargs, resp_kwargs):
        kw.setdefault("provider", MockProvider())
        kw.setdefault("verifier", MockVerifier())
        kw.setdefault("config", SessionConfig.development(handshake_timeout=5.0))
    out = {}

    def responder():
        try:
            out["resp"] = SecureChannel.accept(resp_sock, **resp_kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out["resp"] = exc

    t = threading.Thread(target=responder, daemon=True)
    t.start()
    try:
        out["init"] = SecureChannel.connect(init_sock, **init_kwargs)
    except BaseException as exc:  # noqa: BLE001
        out["init"] = exc
    t.join(10)
    return out["init"], out.get("resp")


def cli_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def rss_limit_mb(budget_mb: int = 2048) -> int:
    """libFuzzer's -rss_limit_mb for a harness started from this process.

    libFuzzer checks its *peak* RSS (getrusage), and Linux carries the parent's
    high-water RSS into a child at exec; after the slow tier's full-size models the
    pytest process is several GB, so a fixed 2048 would flag every harness as OOM
    on its first input.  The harness gets ``budget_mb`` above that inherited peak.
    """
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 + budget_mb
