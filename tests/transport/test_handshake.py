"""The attested handshake: every check of transport.md sections 3.3, 3.4 and 6.1.

A real SecureChannel runs on one end of a socket pair; the test plays the
other end with raw bytes, so each malformed input reaches the real code.
"""

import socket
import struct
import threading
import time

import pytest

from cmlp import _frame, errors
from cmlp.attestation import (
    ExpectedMeasurements,
    MockProvider,
    MockVerifier,
    MockVerifierWithMeasurements,
    encode_mock_document,
)
from cmlp.transport import SecureChannel, SecurityProfile, SessionConfig, sockets
from cmlp.transport.handshake import InitiatorHandshake, encode_hello, hello_frame
from tests.helpers.common import run_handshake


def dev(**kw):
    kw.setdefault("handshake_timeout", 3.0)
    return SessionConfig.development(**kw)


class RawPeer:
    """Runs SecureChannel.<role> in a thread against a raw socket we control."""

    def __init__(self, role, config=None, provider=None, verifier=None):
        self.raw, theirs = sockets.socketpair()
        self.raw.settimeout(5)
        self.result = None
        fn = SecureChannel.accept if role == "responder" else SecureChannel.connect

        def run():
            try:
                self.result = fn(
                    theirs, provider or MockProvider(), verifier or MockVerifier(), config or dev()
                )
            except BaseException as exc:  # noqa: BLE001
                self.result = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def send(self, data):
        self.raw.sendall(data)

    def read_frame(self):
        dec = _frame.FrameDecoder()
        while (f := dec.next_frame()) is None:
            chunk = self.raw.recv(65536)
            if not chunk:
                return None
            dec.feed(chunk)
        return f

    def outcome(self, timeout=10):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "handshake did not finish"
        return self.result


def initiator_hello(pk=b"\x01" * 32, nonce=b"\x02" * 32, doc=None, msg_no=1):
    doc = encode_mock_document(None, nonce, pk) if doc is None else doc
    return encode_hello(msg_no, pk, nonce, doc)


def valid_initiator():
    hs = InitiatorHandshake(MockProvider(), MockVerifier(), dev())
    return hs, hs.start()


# ---------------------------------------------------------------------------
# success paths
# ---------------------------------------------------------------------------
def test_mutual_attestation_both_sides(channel_pair):
    init, resp = channel_pair
    assert init.session_id == resp.session_id
    assert init.peer_attestation.public_key is not None
    assert resp.peer_attestation.public_key is not None
    init.send(b"ping")
    assert resp.recv(timeout=5).payload == b"ping"
    resp.send(b"pong")
    assert init.recv(timeout=5).payload == b"pong"


def test_residual_bytes_after_confirmation_are_kept():
    """Data pipelined right after msg 3 reaches the record layer."""
    peer = RawPeer("responder")
    hs, msg1 = valid_initiator()
    peer.send(msg1)
    msg3 = hs.on_responder_hello(peer.read_frame())
    from cmlp import _record

    sealer = _record.Sealer(hs.keys.send_key, hs.keys.session_id)
    peer.send(msg3 + sealer.seal_frame(2, 1, b"early") + sealer.seal_frame(2, 1, b"bird"))
    ch = peer.outcome()
    assert ch.recv(timeout=5).payload == b"early"
    assert ch.recv(timeout=5).payload == b"bird"
    ch.close()


# ---------------------------------------------------------------------------
# configuration gate (section 6.1): fails before any I/O
# ---------------------------------------------------------------------------
def test_production_profile_rejects_missing_measurements():
    a, b = sockets.socketpair()
    with pytest.raises(errors.HandshakeFailed, match="production security profile"):
        SecureChannel.connect(a, MockProvider(), MockVerifier(), SessionConfig())
    with pytest.raises(errors.HandshakeFailed, match="production security profile"):
        SecureChannel.accept(b, MockProvider(), MockVerifier(), SessionConfig())


def test_production_profile_rejects_empty_measurement_map():
    a, _ = sockets.socketpair()
    cfg = SessionConfig(expected_measurements=ExpectedMeasurements({}))
    with pytest.raises(errors.HandshakeFailed, match="production"):
        SecureChannel.connect(a, MockProvider(), MockVerifier(), cfg)


def test_dev_profile_with_require_measurements_rejects():
    a, _ = sockets.socketpair()
    cfg = SessionConfig(security_profile=SecurityProfile.DEVELOPMENT, require_measurements=True)
    with pytest.raises(errors.HandshakeFailed, match="require_measurements"):
        SecureChannel.connect(a, MockProvider(), MockVerifier(), cfg)


def test_config_builder_validation():
    with pytest.raises(errors.HandshakeFailed, match="max_payload_size must be > 0"):
        SessionConfig(max_payload_size=0)
    with pytest.raises(errors.HandshakeFailed, match="handshake_timeout must be > 0"):
        SessionConfig(handshake_timeout=0)


def test_production_profile_with_pinned_measurements_succeeds():
    pins = ExpectedMeasurements({0: b"\xaa" * 32})
    cfg = SessionConfig(expected_measurements=pins, handshake_timeout=5)
    a, b = sockets.socketpair()
    kw = dict(provider=MockProvider({0: b"\xaa" * 32}), verifier=MockVerifier(), config=cfg)
    init, resp = run_handshake(a, b, kw, kw)
    assert isinstance(init, SecureChannel) and isinstance(resp, SecureChannel)
    assert init.peer_attestation.measurements == {0: b"\xaa" * 32}


@pytest.mark.parametrize(
    "claimed, pins, exc, text",
    [
        ({0: b"\xbb" * 32}, {0: b"\xaa" * 32}, errors.VerificationFailed, "measurement[0] mismatch"),
        ({0: b"\xaa" * 32}, {0: b"\xaa" * 32, 5: b"\x01"}, errors.MissingField, "measurement[5]"),
        ({0: b"\xaa" * 31}, {0: b"\xaa" * 32}, errors.VerificationFailed, "mismatch"),
    ],
)
def test_measurement_pinning_rejects(claimed, pins, exc, text):
    a, b = sockets.socketpair()
    init, resp = run_handshake(
        a,
        b,
        dict(config=dev(expected_measurements=ExpectedMeasurements(pins))),
        dict(provider=MockProvider(claimed)),
    )
    assert isinstance(init, exc) and text in str(init)
    assert isinstance(resp, errors.CmlpError)  # the responder sees the close


def test_mock_verifier_with_measurements_helper():
    v = MockVerifierWithMeasurements({5: b"\x01\x02"})
    doc = encode_mock_document(None, b"n" * 32, b"k" * 32)
    assert v.verify(doc).measurements == {5: b"\x01\x02"}


# ---------------------------------------------------------------------------
# responder receiving a bad initiator hello
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "frame, exc, text",
    [
        (hello_frame(0, initiator_hello()[:68]), errors.HandshakeFailed, "initiator hello too short"),
        (hello_frame(0, initiator_hello(msg_no=2)), errors.UnexpectedMessage, "initiator_hello (1)"),
        (
            hello_frame(0, b"\x01" + bytes(64) + struct.pack(">I", 65537)),
            errors.HandshakeFailed,
            "attestation document too large: 65537 bytes (max 65536)",
        ),
        (
            hello_frame(0, initiator_hello() + b"\x00"),
            errors.HandshakeFailed,
            "initiator hello: expected 157 bytes, got 158",
        ),
        (hello_frame(0, initiator_hello()[:-1]), errors.HandshakeFailed, "expected 157 bytes, got 156"),
        (_frame.encode_frame(2, 0, 0, initiator_hello()), errors.UnexpectedMessage, "got Data"),
        (
            hello_frame(5, initiator_hello()),
            errors.HandshakeFailed,
            "unexpected handshake sequence: expected 0, got 5",
        ),
        (
            hello_frame(0, initiator_hello(doc=b"garbage")),
            errors.HandshakeFailed,
            "initiator attestation verification failed",
        ),
        (
            hello_frame(0, initiator_hello(doc=encode_mock_document(None, b"\x02" * 32, None))),
            errors.MissingField,
            "public_key",
        ),
        (
            hello_frame(0, initiator_hello(doc=encode_mock_document(None, None, b"\x01" * 32))),
            errors.MissingField,
            "nonce",
        ),
        (
            hello_frame(
                0, initiator_hello(doc=encode_mock_document(None, b"\x82" + b"\x02" * 31, b"\x01" * 32))
            ),
            errors.VerificationFailed,
            "nonce mismatch",
        ),
        (
            hello_frame(0, initiator_hello(doc=encode_mock_document(None, b"\x02" * 32, b"\x09" * 32))),
            errors.PublicKeyMismatch,
            "public key",
        ),
        (hello_frame(0, initiator_hello(pk=bytes(32))), errors.NonContributoryKey, "non-contributory"),
        (b"\x3a\xd7" + bytes(126), errors.InvalidMagic, "magic"),
        (b"\xcf\x4d\x02" + bytes(20), errors.UnsupportedVersion, "version 2"),
    ],
)
def test_responder_rejects_bad_initiator_hello(frame, exc, text):
    peer = RawPeer("responder")
    peer.send(frame)
    err = peer.outcome()
    assert isinstance(err, exc), err
    assert text in str(err)
    # no error frame is sent during the handshake: we just see the close
    assert peer.raw.recv(100) == b""


def test_responder_rejects_bad_confirmation_variants():
    for payload, exc, text in [
        (b"\x03" + bytes(32), errors.HandshakeFailed, "confirmation hash mismatch"),
        (b"\x03" + bytes(33), errors.HandshakeFailed, "confirmation: expected 33 bytes, got 34"),
        (b"\x04" + bytes(32), errors.UnexpectedMessage, "confirmation (3)"),
    ]:
        peer = RawPeer("responder")
        hs, msg1 = valid_initiator()
        peer.send(msg1)
        hs.on_responder_hello(peer.read_frame())
        peer.send(hello_frame(1, payload))
        err = peer.outcome()
        assert isinstance(err, exc) and text in str(err), err


def test_confirmation_with_wrong_sequence():
    peer = RawPeer("responder")
    hs, msg1 = valid_initiator()
    peer.send(msg1)
    msg3 = hs.on_responder_hello(peer.read_frame())
    peer.send(hello_frame(0, bytes(_frame.decode_header(msg3) and msg3[13:])))
    err = peer.outcome()
    assert isinstance(err, errors.HandshakeFailed) and "expected 1, got 0" in str(err)


# ---------------------------------------------------------------------------
# initiator receiving a bad responder hello
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, exc, text",
    [
        (
            lambda pk, n: hello_frame(0, encode_hello(2, pk, n, b"\xcc\xdd\xee\xff")),
            errors.HandshakeFailed,
            "attestation verification failed",
        ),
        (
            lambda pk, n: hello_frame(0, encode_hello(1, pk, n, encode_mock_document(None, n, pk))),
            errors.UnexpectedMessage,
            "responder_hello (2)",
        ),
        (
            lambda pk, n: hello_frame(0, encode_hello(2, pk, n, encode_mock_document(None, n, pk)) + b"!"),
            errors.HandshakeFailed,
            "responder hello: expected",
        ),
        (
            lambda pk, n: _frame.encode_frame(
                2, 0, 0, b"\x02" + b"\xaa" * 32 + b"\xbb" * 32 + struct.pack(">I", 4) + b"\xcc" * 4
            ),
            errors.UnexpectedMessage,
            "got Data",
        ),
        (
            lambda pk, n: b"\xcf\x4d\x04\x01\x00" + bytes(4) + struct.pack(">I", 100) + bytes(20),
            errors.Closed,
            "closed",
        ),
    ],
)
def test_initiator_rejects_bad_responder_hello(make, exc, text):
    peer = RawPeer("initiator")
    msg1 = peer.read_frame()
    assert msg1.sequence == 0 and len(msg1.payload) == 157
    pk, nonce = b"\x05" * 32, b"\x06" * 32
    peer.send(make(pk, nonce))
    if exc is errors.Closed:
        peer.raw.shutdown(socket.SHUT_WR)
    err = peer.outcome()
    assert isinstance(err, exc), err
    assert text in str(err)


def test_handshake_timeout_on_silent_peer():
    peer = RawPeer("responder", config=dev(handshake_timeout=0.3))
    t0 = time.monotonic()
    err = peer.outcome()
    assert isinstance(err, errors.Timeout) and "timeout" in str(err)
    assert time.monotonic() - t0 < 2.0


def test_slowloris_mid_handshake_times_out():
    peer = RawPeer("responder", config=dev(handshake_timeout=0.5))
    _, msg1 = valid_initiator()
    t0 = time.monotonic()
    for b in msg1[:40]:  # dribble bytes, never finish
        try:
            peer.send(bytes([b]))
        except OSError:  # the victim gave up and closed: expected
            break
        time.sleep(0.02)
    err = peer.outcome()
    assert isinstance(err, errors.Timeout)
    assert time.monotonic() - t0 < 2.5


def test_peer_closing_mid_handshake():
    peer = RawPeer("responder")
    peer.send(b"\xcf\x4d\x04")
    peer.raw.shutdown(socket.SHUT_WR)
    assert isinstance(peer.outcome(), errors.Closed)


def test_oversized_hello_frame_overflows_handshake_buffer():
    peer = RawPeer("responder")
    peer.send(_frame.encode_header(1, 0, 0, 1_000_000))
    try:
        peer.send(bytes(70_000))
    except OSError:
        pass
    err = peer.outcome()
    assert isinstance(err, errors.ReadBufferOverflow)


def test_provider_and_verifier_failures_are_wrapped():
    class Broken:
        def attest(self, *a):
            raise RuntimeError("no TEE here")

        def verify(self, doc):
            raise RuntimeError("verifier exploded")

    a, b = sockets.socketpair()
    init, _ = run_handshake(a, b, dict(provider=Broken()))
    assert isinstance(init, errors.HandshakeFailed)
    assert "initiator attestation generation failed" in str(init)
    a, b = sockets.socketpair()
    init, resp = run_handshake(a, b, resp_kwargs=dict(verifier=Broken()))
    assert isinstance(resp, errors.HandshakeFailed)
    assert "initiator attestation verification failed" in str(resp)


def test_unattested_peer_needs_explicit_permission():
    class NoDocument:
        def attest(self, *a):
            return b""

    a, b = sockets.socketpair()
    init, resp = run_handshake(a, b, dict(provider=NoDocument()))
    assert isinstance(resp, errors.HandshakeFailed) and "no attestation document" in str(resp)
    a, b = sockets.socketpair()
    init, resp = run_handshake(
        a, b, dict(provider=NoDocument()), dict(config=dev(allow_unattested_peer=True))
    )
    assert isinstance(resp, SecureChannel) and resp.peer_attestation.platform == "none"
    init.send(b"host says hi")
    assert resp.recv(timeout=5).payload == b"host says hi"


# ---------------------------------------------------------------------------
# fuzz seed shapes of section 8.4 (version byte patched to 4)
# ---------------------------------------------------------------------------
def v2hello(payload, msg_type=1, seq=0, length=None):
    n = len(payload) if length is None else length
    return struct.pack(">HBBBII", 0xCF4D, 2, msg_type, 0, seq, n) + payload


def as_v4(b):
    return b[:2] + b"\x04" + b[3:] if len(b) >= 3 else b


RESP_SEEDS = [
    (v2hello(b"\x01" + b"\xaa" * 32 + b"\xbb" * 32), errors.HandshakeFailed, "too short"),
    (v2hello(b"\x01" + b"\xaa" * 32 + b"\xbb" * 32) + b"\xff" * 100, errors.HandshakeFailed, "too short"),
    (b"\xcf\x4d\x02", errors.Closed, ""),
    (v2hello(b"\x01" + b"\xaa" * 32 + b"\xbb" * 32, msg_type=2), errors.UnexpectedMessage, "Data"),
    (v2hello(b"\x01" + bytes(10)), errors.HandshakeFailed, "too short"),
    (b"", errors.Closed, ""),
]


@pytest.mark.parametrize("seed, exc, text", RESP_SEEDS)
def test_handshake_resp_seeds(seed, exc, text):
    for data, want in ((seed, errors.UnsupportedVersion if len(seed) >= 13 else exc), (as_v4(seed), exc)):
        peer = RawPeer("responder")
        peer.send(data)
        peer.raw.shutdown(socket.SHUT_WR)
        err = peer.outcome()
        assert isinstance(err, want), (data[:20], err)
        if want is exc:
            assert text in str(err)


INIT_SEEDS = [
    (b"", errors.Closed),
    (b"\xcf\x4d\x02", errors.Closed),
    (
        v2hello(b"\x02" + b"\xaa" * 32 + b"\xbb" * 32 + struct.pack(">I", 4) + b"\xcc" * 4, msg_type=2),
        errors.UnexpectedMessage,
    ),
    (
        v2hello(b"\x02" + b"\xaa" * 32 + b"\xbb" * 32 + struct.pack(">I", 4) + b"\xcc\xdd\xee\xff"),
        errors.HandshakeFailed,
    ),
    (bytes.fromhex("3ad7") + bytes(range(126)), errors.InvalidMagic),
    (v2hello(bytes(20), length=100), errors.Closed),
]


@pytest.mark.parametrize("seed, exc", INIT_SEEDS)
def test_handshake_init_seeds(seed, exc):
    peer = RawPeer("initiator")
    peer.read_frame()  # the harness swallows the initiator's hello
    peer.send(as_v4(seed))
    peer.raw.shutdown(socket.SHUT_WR)
    err = peer.outcome()
    assert isinstance(err, exc), err
