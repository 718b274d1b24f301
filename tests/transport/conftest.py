"""Fixtures of the transport tests: a development SessionConfig, an established channel pair."""

from __future__ import annotations

import pytest

from tests.helpers.common import run_handshake


@pytest.fixture
def dev_config():
    from cmlp.transport import SessionConfig

    return SessionConfig.development(handshake_timeout=5.0)


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
