"""Interoperability with an independent implementation of the spec (tests/helpers/independent_peer.py).

The independent peer shares no code with cmlp: it talks to the real
``cmlp echo-server`` over TCP as initiator, and acts as responder for
cmlp's SecureChannel client.
"""

import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("cryptography")
from cmlp.attestation import MockProvider, MockVerifier  # noqa: E402
from cmlp.transport import Data, SecureChannel, SessionConfig, TensorMessage, sockets  # noqa: E402
from tests.helpers import independent_peer as peer  # noqa: E402
from tests.helpers.common import cli_env, free_port  # noqa: E402


def test_independent_client_against_cmlp_echo_server():
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cmlp.cli.main",
            "echo-server",
            "--listen",
            f"127.0.0.1:{port}",
            "--log-level",
            "error",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert "listening" in server.stdout.readline()
        for _ in range(2):  # two sessions one after another
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                s = peer.connect(sock)
                for i in range(5):
                    s.send(peer.DATA, f"interop {i}".encode())
                    assert s.recv() == (peer.DATA, f"interop {i}".encode())
                data = np.arange(12, dtype="<f4").tobytes()
                payload = peer.tensor_payload("activations", 0, (4, 3), data)
                s.send(peer.TENSOR, payload)
                assert s.recv() == (peer.TENSOR, payload)  # echoed byte for byte
                s.send(peer.HEARTBEAT, b"")
                s.send(peer.DATA, b"after heartbeat")
                assert s.recv() == (peer.DATA, b"after heartbeat")
                s.send(peer.SHUTDOWN, b"")
    finally:
        server.terminate()
        server.wait(10)


def test_cmlp_client_against_independent_server():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    result = {}

    def independent_server():
        conn, _ = listener.accept()
        with conn:
            s = peer.accept(conn)
            while True:
                mtype, pt = s.recv()
                if mtype == peer.SHUTDOWN:
                    result["ok"] = True
                    return
                s.send(mtype, pt)

    t = threading.Thread(target=independent_server, daemon=True)
    t.start()
    ch = SecureChannel.connect(
        sockets.connect(sockets.TcpAddr(*listener.getsockname())),
        MockProvider(),
        MockVerifier(),
        SessionConfig.development(),
    )
    ch.send(b"hello from cmlp")
    assert ch.recv(timeout=10) == Data(b"hello from cmlp")
    arr = np.linspace(-1, 1, 768, dtype=np.float32).reshape(1, 1, 768)
    ch.send_tensor("hidden_states", arr)
    msg = ch.recv(timeout=10)
    assert isinstance(msg, TensorMessage)
    assert msg.tensor.name == "hidden_states" and msg.tensor.shape == (1, 1, 768)
    np.testing.assert_array_equal(msg.tensor.data, arr)
    ch.shutdown()
    t.join(10)
    assert result.get("ok")
    ch.close()
    listener.close()
