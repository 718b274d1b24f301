"""An independent implementation of the wire protocol v4, for interoperability tests.

Written from transport.md alone with Python's ``cryptography`` (X25519,
ChaCha20-Poly1305), ``hmac`` and ``hashlib``: it imports nothing from cmlp,
so a shared bug cannot make both sides agree.  Mock attestation only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

MAGIC, VERSION = 0xCF4D, 4
HELLO, DATA, ERROR, HEARTBEAT, SHUTDOWN, TENSOR = 1, 2, 3, 4, 5, 6


def recv_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError("peer closed")
        out += chunk
    return out


def read_frame(sock):
    magic, version, mtype, flags, seq, length = struct.unpack(">HBBBII", recv_exact(sock, 13))
    assert (magic, version) == (MAGIC, VERSION), (hex(magic), version)
    return mtype, flags, seq, recv_exact(sock, length)


def write_frame(sock, mtype, flags, seq, payload):
    sock.sendall(struct.pack(">HBBBII", MAGIC, VERSION, mtype, flags, seq, len(payload)) + payload)


def mock_doc(nonce, pk):
    def field(b):
        return struct.pack("<I", len(b)) + b

    return b"MOCK_ATT_V1\x00" + field(b"") + field(nonce) + field(pk)


def parse_mock(doc):
    assert doc.startswith(b"MOCK_ATT_V1\x00")
    pos, fields = 12, []
    for _ in range(3):
        (n,) = struct.unpack_from("<I", doc, pos)
        fields.append(doc[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return fields  # user_data, nonce, public key


def hello(msg_no, pk, nonce, doc):
    return bytes([msg_no]) + pk + nonce + struct.pack(">I", len(doc)) + doc


def parse_hello(payload, msg_no):
    assert payload[0] == msg_no
    (n,) = struct.unpack_from(">I", payload, 65)
    assert len(payload) == 69 + n
    return payload[1:33], payload[33:65], payload[69:]


def tlv(label, value):
    return bytes([len(label)]) + label + struct.pack(">H", len(value)) + value


def transcript(h_i, h_r, pk_i, pk_r, n_i, n_r):
    lo, hi = sorted([pk_i, pk_r])
    return hashlib.sha256(
        tlv(b"init-attestation-hash", h_i)
        + tlv(b"resp-attestation-hash", h_r)
        + tlv(b"pk-low", lo)
        + tlv(b"pk-high", hi)
        + tlv(b"combined-nonce", bytes(a ^ b for a, b in zip(n_i, n_r, strict=True)))
        + tlv(b"protocol-version", b"\x04")
    ).digest()


def hm(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


def keys(transcript_hash, shared):
    prk = hm(transcript_hash, shared)
    k_i2r = hm(prk, b"cmt-initiator-to-responder\x01")
    k_r2i = hm(prk, b"cmt-responder-to-initiator\x01")
    sid = hm(hm(bytes(32), transcript_hash), b"cmt-session-id\x01")
    confirm = hashlib.sha256(b"cmt-confirmation" + sid + k_i2r + k_r2i).digest()
    return k_i2r, k_r2i, sid, confirm


def raw_public(key):
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Session:
    def __init__(self, sock, send_key, recv_key, sid):
        self.sock, self.sid = sock, sid
        self.tx, self.rx = ChaCha20Poly1305(send_key), ChaCha20Poly1305(recv_key)
        self.seq_out, self.last_in = 0, None

    def _nonce_aad(self, mtype, flags, seq):
        return (
            b"\x00" * 4 + struct.pack(">Q", seq),
            bytes([VERSION, mtype, flags]) + self.sid + struct.pack(">Q", seq),
        )

    def send(self, mtype, plaintext):
        flags = 0x03 if mtype == TENSOR else 0x01
        nonce, aad = self._nonce_aad(mtype, flags, self.seq_out)
        write_frame(self.sock, mtype, flags, self.seq_out, self.tx.encrypt(nonce, plaintext, aad))
        self.seq_out += 1

    def recv(self):
        mtype, flags, seq, ct = read_frame(self.sock)
        assert flags & 0x01 and mtype != HELLO
        assert self.last_in is None or seq > self.last_in
        nonce, aad = self._nonce_aad(mtype, flags, seq)
        pt = self.rx.decrypt(nonce, ct, aad)
        self.last_in = seq
        return mtype, pt


def connect(sock):
    """Initiator handshake; returns a Session."""
    sk, nonce = X25519PrivateKey.generate(), os.urandom(32)
    pk = raw_public(sk)
    doc = mock_doc(nonce, pk)
    write_frame(sock, HELLO, 0, 0, hello(1, pk, nonce, doc))
    mtype, _, seq, payload = read_frame(sock)
    assert (mtype, seq) == (HELLO, 0)
    pk_r, nonce_r, doc_r = parse_hello(payload, 2)
    _, doc_nonce, doc_pk = parse_mock(doc_r)
    assert (doc_pk, doc_nonce) == (pk_r, nonce_r)
    th = transcript(hashlib.sha256(doc).digest(), hashlib.sha256(doc_r).digest(), pk, pk_r, nonce, nonce_r)
    k_i2r, k_r2i, sid, confirm = keys(th, sk.exchange(X25519PublicKey.from_public_bytes(pk_r)))
    write_frame(sock, HELLO, 0, 1, b"\x03" + confirm)
    return Session(sock, k_i2r, k_r2i, sid)


def accept(sock):
    """Responder handshake; returns a Session."""
    mtype, _, seq, payload = read_frame(sock)
    assert (mtype, seq) == (HELLO, 0)
    pk_i, nonce_i, doc_i = parse_hello(payload, 1)
    _, doc_nonce, doc_pk = parse_mock(doc_i)
    assert (doc_pk, doc_nonce) == (pk_i, nonce_i)
    sk, nonce = X25519PrivateKey.generate(), os.urandom(32)
    pk = raw_public(sk)
    doc = mock_doc(nonce, pk)
    write_frame(sock, HELLO, 0, 0, hello(2, pk, nonce, doc))
    th = transcript(hashlib.sha256(doc_i).digest(), hashlib.sha256(doc).digest(), pk_i, pk, nonce_i, nonce)
    k_i2r, k_r2i, sid, confirm = keys(th, sk.exchange(X25519PublicKey.from_public_bytes(pk_i)))
    mtype, _, seq, payload = read_frame(sock)
    assert (mtype, seq, payload) == (HELLO, 1, b"\x03" + confirm), "confirmation mismatch"
    return Session(sock, k_r2i, k_i2r, sid)


def tensor_payload(name: str, dtype: int, shape, data: bytes) -> bytes:
    nb = name.encode()
    head = (
        struct.pack("<HB", len(shape), dtype)
        + b"".join(struct.pack("<I", d) for d in shape)
        + struct.pack("<H", len(nb))
        + nb
    )
    return head + bytes((8 - len(head) % 8) % 8) + data
