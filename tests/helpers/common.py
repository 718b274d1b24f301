"""Helpers shared by tests in every directory (formerly in tests/conftest.py).

Fixtures and hooks stay in conftest.py files; plain functions and constants that tests
import live here, imported as ``from tests.helpers.common import free_port``.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
