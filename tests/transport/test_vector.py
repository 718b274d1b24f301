"""transport.md section 3.10: the fixed test vector, byte for byte.

Fixed secret keys and nonces are injected into both handshake sides; every
intermediate value and every frame on the wire must match the published hex.
The handshake runs over a real socketpair through SecureChannel, and the
state machines are also checked on their own.
"""

import socket
import threading

import numpy as np

from cmlp import _frame, _record
from cmlp.attestation import MockProvider, MockVerifier
from cmlp.transport import SecureChannel, SessionConfig, sodium
from cmlp.transport.handshake import (
    InitiatorHandshake,
    ResponderHandshake,
    confirmation_hash,
    derive_keys,
    transcript_input,
)

SK_I = bytes([0x11]) * 32
SK_R = bytes([0x22]) * 32
NONCE_I = bytes([0xA1]) * 32
NONCE_R = bytes([0xB2]) * 32

PK_I = "7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13"
PK_R = "0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20"
INIT_ATT_HASH = "167d1c3462a6ada585583976644c42a2a1c1c3cd21f4db7731fdff72c3623197"
RESP_ATT_HASH = "7a4670643212977626acb4b7ce91cffc579b9237ea7529c3f58b0ea3b72e73b6"
TRANSCRIPT = "eaf027e85cac708f55becbdcafdcaf46ef9d0b1052c6d7f6c78851d9871ac608"
SHARED = "9e004098efc091d4ec2663b4e9f5cfd4d7064571690b4bea97ab146ab9f35056"
K_I2R = "9627f842298eb78c0b6da59b239514144b995917390aa90b535c8c00c55c72e1"
K_R2I = "509246dd823b41d15c74ecba20317eef4c1cd1bf6610d2dab89c63c4e73ae9c4"
SESSION_ID = "45ff8f1781d4a7dfe444cf14522ae764014190822a2cc810be928cb559f4fc80"
CONFIRMATION = "7f8e5289b6cd1e0f4d8c3f721d7a0fdd4daefb325bd14b3d5d0e98c3fecb0c87"
DOC_I = "4d4f434b5f4154545f5631000000000020000000" + "a1" * 32 + "20000000" + PK_I
MSG1 = "cf4d040100000000000000009d01" + PK_I + "a1" * 32 + "00000058" + DOC_I
MSG3 = "cf4d040100000000010000002103" + CONFIRMATION
DATA_HELLO = "cf4d0402010000000000000015b271efb888f390e1c58f7d2e1d1853899d57b3f31e"
TENSOR_X = (
    "cf4d04060300000001000000260d8ca33c8f82794171666ffdb2a457d0160a8dd9f417256dc7c4c38c095080be6aa0e51926ff"
)
HEARTBEAT_R2I = "cf4d04040100000000000000100d4b13a6c7ab4b72c9107caff647c66c"

TRANSCRIPT_INPUT = (
    "15"
    + b"init-attestation-hash".hex()
    + "0020"
    + INIT_ATT_HASH
    + "15"
    + b"resp-attestation-hash".hex()
    + "0020"
    + RESP_ATT_HASH
    + "06"
    + b"pk-low".hex()
    + "0020"
    + PK_R
    + "07"
    + b"pk-high".hex()
    + "0020"
    + PK_I
    + "0e"
    + b"combined-nonce".hex()
    + "0020"
    + "13" * 32
    + "10"
    + b"protocol-version".hex()
    + "0001"
    + "04"
)


def dev():
    return SessionConfig.development()


def test_primitives_match_vector():
    assert sodium.x25519_keypair(SK_I)[1].hex() == PK_I
    assert sodium.x25519_keypair(SK_R)[1].hex() == PK_R
    assert sodium.x25519(SK_I, bytes.fromhex(PK_R)).hex() == SHARED
    assert sodium.x25519(SK_R, bytes.fromhex(PK_I)).hex() == SHARED
    doc_i = MockProvider().attest(None, NONCE_I, bytes.fromhex(PK_I))
    assert doc_i.hex() == DOC_I and len(doc_i) == 88
    tin = transcript_input(
        bytes.fromhex(INIT_ATT_HASH),
        bytes.fromhex(RESP_ATT_HASH),
        bytes.fromhex(PK_I),
        bytes.fromhex(PK_R),
        NONCE_I,
        NONCE_R,
    )
    assert len(tin) == 264
    assert tin.hex() == TRANSCRIPT_INPUT
    import hashlib

    assert hashlib.sha256(tin).hexdigest() == TRANSCRIPT
    k_i2r, k_r2i, sid = derive_keys(bytes.fromhex(TRANSCRIPT), bytes.fromhex(SHARED))
    assert (k_i2r.hex(), k_r2i.hex(), sid.hex()) == (K_I2R, K_R2I, SESSION_ID)
    assert confirmation_hash(sid, k_i2r, k_r2i).hex() == CONFIRMATION


def test_state_machines_produce_vector_frames():
    init = InitiatorHandshake(MockProvider(), MockVerifier(), dev(), secret_key=SK_I, nonce=NONCE_I)
    resp = ResponderHandshake(MockProvider(), MockVerifier(), dev(), secret_key=SK_R, nonce=NONCE_R)
    msg1 = init.start()
    assert msg1.hex() == MSG1 and len(msg1) == 170
    dec = _frame.FrameDecoder()
    dec.feed(msg1)
    msg2 = resp.on_hello(dec.next_frame())
    assert len(msg2) == 170
    dec.feed(msg2)
    msg3 = init.on_responder_hello(dec.next_frame())
    assert msg3.hex() == MSG3 and len(msg3) == 46
    dec.feed(msg3)
    resp.on_confirmation(dec.next_frame())
    assert init.keys.transcript.hex() == TRANSCRIPT
    assert resp.keys.transcript.hex() == TRANSCRIPT
    assert init.keys.session_id.hex() == SESSION_ID == resp.keys.session_id.hex()
    assert (init.keys.send_key.hex(), init.keys.recv_key.hex()) == (K_I2R, K_R2I)
    assert (resp.keys.send_key.hex(), resp.keys.recv_key.hex()) == (K_R2I, K_I2R)


def test_record_frames_match_vector():
    sid = bytes.fromhex(SESSION_ID)
    i2r = _record.Sealer(bytes.fromhex(K_I2R), sid)
    assert i2r.seal_frame(0x02, 0x01, b"hello").hex() == DATA_HELLO
    tensor = _frame.encode_tensor("x", 6, (2, 3), bytes(range(6)))
    assert len(tensor) == 22
    assert i2r.seal_frame(0x06, 0x03, tensor).hex() == TENSOR_X
    r2i = _record.Sealer(bytes.fromhex(K_R2I), sid)
    assert r2i.seal_frame(0x04, 0x01, b"").hex() == HEARTBEAT_R2I
    # and the receiver opens them
    opener = _record.Opener(bytes.fromhex(K_I2R), sid)
    dec = _frame.FrameDecoder()
    dec.feed(bytes.fromhex(DATA_HELLO) + bytes.fromhex(TENSOR_X))
    assert bytes(opener.open_frame(dec.next_frame())) == b"hello"
    assert bytes(opener.open_frame(dec.next_frame())) == tensor


class _Tap:
    """Records what each side writes on a socketpair relay."""

    def __init__(self):
        self.a, self.b = socket.socketpair()


def test_channels_over_socketpair_reproduce_vector():
    """Through SecureChannel: the initiator's wire bytes equal the vector."""
    cli_sock, tap_cli = socket.socketpair()
    srv_sock, tap_srv = socket.socketpair()
    sent_by_client = bytearray()

    def relay(src, dst, record=None):
        while True:
            chunk = src.recv(65536)
            if not chunk:
                dst.shutdown(socket.SHUT_WR)
                return
            if record is not None:
                record.extend(chunk)
            dst.sendall(chunk)

    threads = [
        threading.Thread(target=relay, args=(tap_cli, tap_srv, sent_by_client), daemon=True),
        threading.Thread(target=relay, args=(tap_srv, tap_cli), daemon=True),
    ]
    for t in threads:
        t.start()
    result = {}

    def server():
        ch = SecureChannel.accept(
            srv_sock, MockProvider(), MockVerifier(), dev(), secret_key=SK_R, nonce=NONCE_R
        )
        result["data"] = ch.recv(timeout=5)
        result["tensor"] = ch.recv(timeout=5)
        ch.heartbeat()
        result["server"] = ch

    st = threading.Thread(target=server)
    st.start()
    ch = SecureChannel.connect(
        cli_sock, MockProvider(), MockVerifier(), dev(), secret_key=SK_I, nonce=NONCE_I
    )
    ch.send(b"hello")
    ch.send_tensor("x", np.arange(6, dtype=np.uint8).reshape(2, 3))
    msg = ch.recv(timeout=5)
    st.join(5)
    assert type(msg).__name__ == "Heartbeat"
    assert result["data"].payload == b"hello"
    t = result["tensor"].tensor
    assert t.name == "x" and t.shape == (2, 3)
    assert t.data.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert ch.session_id.hex() == SESSION_ID
    expected = MSG1 + MSG3 + DATA_HELLO + TENSOR_X
    assert bytes(sent_by_client).hex() == expected
    ch.close()
    result["server"].close()
