"""Attack 3 of issue 10: idle or half-open connections must not lock a persistent stage.

Before: the stage accepted control connections one at a time and waited for Init
with no deadline, so one silent connection (or three idle pre-handshake sockets)
made the real orchestrator fail with "handshake deadline exceeded", forever.
Now handshakes run concurrently (bounded), with deadlines for the handshake and
for the first control message.

The liveness checks give the stages deadlines (60 s) far longer than the bound
the session must meet, so success cannot come from an attacker's connection
timing out: it comes only from the concurrency.
"""

import socket
import time

import numpy as np
import pytest

from cmlp import errors
from cmlp.attestation import MockProvider, MockVerifier
from cmlp.attestation.role import Role
from cmlp.transport import SecureChannel, SessionConfig, sockets
from cmlp.transport.wire import Tensor
from tests.helpers import mitm
from tests.helpers.executors import IdentityExecutor
from tests.helpers.pipeline import StageThread, make_manifest, orchestrator

LONG = 60.0


def idle_socket(endpoint):
    return socket.create_connection((endpoint.host, endpoint.port), timeout=5)


def silent_channel(m, idx):
    """Completes the handshake (as a well-formed orchestrator would), then never speaks."""
    digest = m.pipeline_digest()
    return SecureChannel.connect(
        sockets.connect(m.stages[idx].endpoint.control.endpoint),
        MockProvider(),
        MockVerifier(),
        SessionConfig.development(
            handshake_timeout=10, own_role=Role.orchestrator(digest), peer_role=Role(idx, digest)
        ),
    )


def stage_threads(m, **cfg):
    return [
        StageThread(
            m,
            i,
            IdentityExecutor(),
            persistent=True,
            session=SessionConfig.development(handshake_timeout=LONG),
            **cfg,
        )
        for i in range(m.num_stages)
    ]


def session_once(m):
    orch = orchestrator(m, infer_timeout=20, data_setup_timeout=20, init_timeout=20)
    try:
        orch.start()
        r = orch.infer([[Tensor.from_array("x", np.full((1, 4), 3.0, np.float32))]], seq_len=1)
        assert r.outputs[0][0].data.tolist() == [[3.0] * 4]
        orch.shutdown()
    finally:
        orch.close()


@pytest.mark.parametrize("relay", [False, True])
def test_real_session_succeeds_despite_idle_and_silent_connections(relay):
    m = make_manifest(2, relay=relay)
    stages = stage_threads(m, handshake_timeout=LONG, first_message_timeout=LONG)
    held = []
    try:
        for st in m.stages:
            held += [idle_socket(st.endpoint.control.endpoint) for _ in range(3)]
            held += [silent_channel(m, st.stage_idx) for _ in range(3)]
            held += [idle_socket(st.endpoint.data_in.endpoint) for _ in range(3)]
        t0 = time.monotonic()
        for _ in range(2):  # twice: persistent stages keep serving
            session_once(m)
        # far below the 60 s deadlines: served concurrently, not after a timeout
        assert time.monotonic() - t0 < LONG / 2
        assert all(st.thread.is_alive() for st in stages)
    finally:
        for h in held:
            h.close()
        for st in stages:
            st.stop()


def test_deadlines_close_idle_and_silent_connections():
    m = make_manifest(1)
    stages = stage_threads(m, handshake_timeout=1.0, first_message_timeout=1.0)
    ep = m.stages[0].endpoint.control.endpoint
    try:
        idle = idle_socket(ep)
        silent = silent_channel(m, 0)
        idle.settimeout(10)
        assert idle.recv(1) == b""  # the stage gave up on the handshake
        with pytest.raises(errors.Closed):
            silent.recv(timeout=10)  # ... and on the missing Init
        assert mitm.wait_until(
            lambda: (
                "no control message" in str(stages[0].worker.last_error)
                or "handshake" in str(stages[0].worker.last_error)
            ),
            5,
        )
        session_once(m)
    finally:
        for st in stages:
            st.stop()


def test_handshakes_in_flight_are_bounded():
    m = make_manifest(1)
    stages = stage_threads(m, handshake_timeout=LONG, first_message_timeout=LONG, max_pending_handshakes=4)
    ep = m.stages[0].endpoint.control.endpoint
    socks = []
    try:
        for _ in range(10):
            socks.append(idle_socket(ep))
        worker = stages[0].worker
        assert mitm.wait_until(lambda: worker._control_acceptor is not None, 5)
        acceptor = worker._control_acceptor
        assert mitm.wait_until(lambda: acceptor.in_flight == 4, 5)
        time.sleep(0.3)
        assert acceptor.in_flight == 4
        # the six oldest were cut to make room: they see EOF at once
        for s in socks[:6]:
            s.settimeout(5)
            assert s.recv(1) == b""
        session_once(m)  # and the real orchestrator still gets in
    finally:
        for s in socks:
            s.close()
        for st in stages:
            st.stop()
