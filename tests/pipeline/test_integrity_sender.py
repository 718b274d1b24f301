"""The sender never leaves a sequence gap (issue 10): a failed chain rolls back or closes."""

import socket
import threading

import numpy as np
import pytest

from cmlp import errors
from cmlp.attestation import MockProvider, MockVerifier
from cmlp.transport import Data, SecureChannel, SessionConfig, TensorMessage


def channel_pair(max_payload=None):
    a, b = socket.socketpair()
    cfg = SessionConfig.development(
        handshake_timeout=5, **({"max_payload_size": max_payload} if max_payload else {})
    )
    out = {}

    def accept():
        out["srv"] = SecureChannel.accept(b, MockProvider(), MockVerifier(), cfg)

    t = threading.Thread(target=accept)
    t.start()
    cli = SecureChannel.connect(a, MockProvider(), MockVerifier(), cfg)
    t.join(10)
    return cli, out["srv"]


def test_refused_frame_in_a_chain_rolls_the_sequence_back():
    cli, srv = channel_pair(max_payload=4096)
    try:
        cli.send_tensor("held", np.zeros((1, 4), np.float32), more=True)  # sealed, seq 0
        with pytest.raises(errors.PayloadTooLarge):
            cli.send(bytes(5000))  # refused: the held frame is dropped too
        assert not cli.closed
        cli.send(b"next")  # must carry seq 0 again
        msg = srv.recv(timeout=5)
        assert msg == Data(b"next")
        cli.send_tensor("t", np.ones((1, 2), np.float32))
        assert isinstance(srv.recv(timeout=5), TensorMessage)
    finally:
        cli.close()
        srv.close()


def test_send_timeout_with_nothing_written_rolls_back():
    cli, srv = channel_pair()
    try:
        # small frames: an AF_UNIX stream write of one small record is all or nothing,
        # so the buffer fills up exactly and the timed-out frame wrote no byte
        big = bytes(1000)
        sent = 0
        with pytest.raises(errors.Timeout) as e:
            while sent < 100000:
                cli.send(big, timeout=0.2)
                sent += 1
        assert not cli.closed and "PartialWrite" not in type(e.value).__name__
        for _ in range(sent):
            assert srv.recv(timeout=5) == Data(big)
        cli.send(b"after")  # no gap left by the timed-out frame
        assert srv.recv(timeout=5) == Data(b"after")
    finally:
        cli.close()
        srv.close()
