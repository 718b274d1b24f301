"""Shared test fixtures: channel pairs, free ports, subprocess helpers."""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


# Markers that put a test in the slow tier (`pytest -m slow`); the default run excludes it.
SLOW_KINDS = ("wheel", "fuzz", "torch", "sustained")


@pytest.hookimpl(tryfirst=True)     # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config, items):
    """wheel/fuzz/torch/sustained tests are slow; skip ``torch`` ones without PyTorch."""
    for item in items:
        if any(kind in item.keywords for kind in SLOW_KINDS):
            item.add_marker(pytest.mark.slow)
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    if have_torch:
        return
    skip = pytest.mark.skip(reason="PyTorch + transformers not installed")
    for item in items:
        if "torch" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def dev_config():
    from cmlp.transport import SessionConfig
    return SessionConfig.development(handshake_timeout=5.0)


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


@pytest.fixture
def channel_pair():
    """An established (initiator, responder) pair over a socketpair."""
    from cmlp.transport import sockets
    a, b = sockets.socketpair()
    init, resp = run_handshake(a, b)
    assert not isinstance(init, BaseException), init
    assert not isinstance(resp, BaseException), resp
    yield init, resp
    init.close()
    resp.close()


def cli_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env
