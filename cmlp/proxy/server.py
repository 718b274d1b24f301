"""Run the proxy app with uvicorn on a socket we bind ourselves.

Binding first lets the caller learn the real port (``--listen 127.0.0.1:0``) and
refuse a bad address before any network work.  Listening beyond loopback without
an API key is refused unless the operator says so explicitly.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import uvicorn

from cmlp.transport.sockets import parse_tcp_addr


class ListenPolicyError(ValueError):
    """Listening beyond loopback without an API key, and no explicit opt-out."""


def check_listen_policy(listen: str, api_key: str | None, allow_no_key: bool) -> None:
    tcp = parse_tcp_addr(listen)
    if api_key is None and not ipaddress.ip_address(tcp.host).is_loopback and not allow_no_key:
        raise ListenPolicyError(
            f"refusing to listen on {listen} (beyond loopback) without an API key: pass "
            "--api-key (or set CMLP_PROXY_API_KEY), or --allow-no-api-key to accept anyone "
            "who can reach this address"
        )


def bind(listen: str) -> socket.socket:
    tcp = parse_tcp_addr(listen)
    family = socket.AF_INET6 if ":" in tcp.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((tcp.host, tcp.port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class ProxyServer:
    """uvicorn serving ``app`` on ``listen``; ``run()`` blocks, ``start()`` uses a thread."""

    def __init__(
        self, app, listen: str, *, log_level: str = "warning", http: str = "auto", loop: str = "auto"
    ):
        self.sock = bind(listen)
        host, port = self.sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.url = f"http://{self.address}"
        # access_log off: request lines would be the only trace of what users did.
        # http/loop "auto": httptools and uvloop when installed (the proxy extra), which
        # take about a third off the per-token cost of h11 + asyncio.
        config = uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            http=http,
            loop=loop,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        try:
            self._server.run(sockets=[self.sock])
        finally:
            self.sock.close()

    def start(self, timeout: float = 10.0) -> "ProxyServer":
        self._thread = threading.Thread(target=self.run, name="cmlp-proxy", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise RuntimeError(f"proxy did not start on {self.address}")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
