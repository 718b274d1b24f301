"""The 3-message attested handshake (transport.md section 3) as pure state machines.

Sans-I/O in the style of h11: :class:`InitiatorHandshake` and
:class:`ResponderHandshake` consume decoded frames and return the bytes to
send; the channel module moves bytes between them and a socket.

::

    initiator                                     responder
      start()            -- Hello seq 0 (msg 1) -->  on_hello()
      on_responder_hello() <-- Hello seq 0 (msg 2) --
                         -- Hello seq 1 (msg 3) -->  on_confirmation()

Both end with :attr:`keys` (a :class:`SessionKeys`).
"""

from __future__ import annotations

import hashlib
import logging
import struct
from dataclasses import dataclass
from typing import Optional

from cmlp import _frame
from cmlp.attestation.base import VerifiedAttestation, document_hash
from cmlp.errors import (
    HandshakeFailed,
    MissingField,
    PublicKeyMismatch,
    RoleMismatch,
    UnexpectedMessage,
    VerificationFailed,
)
from cmlp.transport import sodium
from cmlp.transport.config import SessionConfig
from cmlp.transport.wire import MAX_DOCUMENT_SIZE, PROTOCOL_VERSION, MsgType, type_name

log = logging.getLogger(__name__)

INITIATOR_HELLO = 1
RESPONDER_HELLO = 2
CONFIRMATION = 3
HELLO_FIXED = 69  # msg no (1) + pk (32) + nonce (32) + doc_len (4)
CONFIRMATION_SIZE = 33

LABEL_I2R = b"cmt-initiator-to-responder"
LABEL_R2I = b"cmt-responder-to-initiator"
LABEL_SID = b"cmt-session-id"
LABEL_CONFIRM = b"cmt-confirmation"


@dataclass(frozen=True)
class SessionKeys:
    send_key: bytes
    recv_key: bytes
    session_id: bytes
    transcript: bytes
    peer_attestation: VerifiedAttestation


# ---------------------------------------------------------------------------
# Encodings (section 3.2) and the key schedule (sections 3.5, 3.6)
# ---------------------------------------------------------------------------
def encode_hello(msg_no: int, public_key: bytes, nonce: bytes, document: bytes) -> bytes:
    if len(document) > MAX_DOCUMENT_SIZE:
        raise HandshakeFailed(
            f"attestation document too large: {len(document)} bytes (max {MAX_DOCUMENT_SIZE})"
        )
    return bytes([msg_no]) + public_key + nonce + struct.pack(">I", len(document)) + document


def parse_hello(payload, msg_no: int):
    """``(public_key, nonce, document)`` with the checks of section 3.3, in order."""
    role = "initiator" if msg_no == INITIATOR_HELLO else "responder"
    payload = bytes(payload)
    if len(payload) < HELLO_FIXED:
        raise HandshakeFailed(f"{role} hello too short")
    if payload[0] != msg_no:
        raise UnexpectedMessage(f"{role}_hello ({msg_no})", f"message type {payload[0]}")
    doc_len = struct.unpack_from(">I", payload, 65)[0]
    if doc_len > MAX_DOCUMENT_SIZE:
        raise HandshakeFailed(f"attestation document too large: {doc_len} bytes (max {MAX_DOCUMENT_SIZE})")
    if len(payload) != HELLO_FIXED + doc_len:
        raise HandshakeFailed(f"{role} hello: expected {HELLO_FIXED + doc_len} bytes, got {len(payload)}")
    return payload[1:33], payload[33:65], payload[HELLO_FIXED:]


def parse_confirmation(payload) -> bytes:
    payload = bytes(payload)
    if len(payload) != CONFIRMATION_SIZE:
        raise HandshakeFailed(f"confirmation: expected 33 bytes, got {len(payload)}")
    if payload[0] != CONFIRMATION:
        raise UnexpectedMessage("confirmation (3)", f"message type {payload[0]}")
    return payload[1:]


def _component(label: bytes, value: bytes) -> bytes:
    return bytes([len(label)]) + label + struct.pack(">H", len(value)) + value


def transcript_input(
    init_doc_hash: bytes, resp_doc_hash: bytes, pk_i: bytes, pk_r: bytes, nonce_i: bytes, nonce_r: bytes
) -> bytes:
    """The 264 labelled bytes hashed into the transcript (v4 framing)."""
    pk_low, pk_high = (pk_i, pk_r) if pk_i <= pk_r else (pk_r, pk_i)
    combined = bytes(a ^ b for a, b in zip(nonce_i, nonce_r, strict=True))
    return b"".join(
        (
            _component(b"init-attestation-hash", init_doc_hash),
            _component(b"resp-attestation-hash", resp_doc_hash),
            _component(b"pk-low", pk_low),
            _component(b"pk-high", pk_high),
            _component(b"combined-nonce", combined),
            _component(b"protocol-version", bytes([PROTOCOL_VERSION])),
        )
    )


def transcript_hash(*args) -> bytes:
    return hashlib.sha256(transcript_input(*args)).digest()


def derive_keys(transcript: bytes, shared: bytes):
    """``(k_i2r, k_r2i, session_id)``: HKDF-SHA256 as in section 3.6."""
    prk = sodium.hmac_sha256(transcript, shared)  # extract, salt = transcript
    k_i2r = sodium.hmac_sha256(prk, LABEL_I2R + b"\x01")  # expand, L = 32
    k_r2i = sodium.hmac_sha256(prk, LABEL_R2I + b"\x01")
    prk_sid = sodium.hmac_sha256(b"\x00" * 32, transcript)  # extract with no salt
    session_id = sodium.hmac_sha256(prk_sid, LABEL_SID + b"\x01")
    return k_i2r, k_r2i, session_id


def confirmation_hash(session_id: bytes, k_i2r: bytes, k_r2i: bytes) -> bytes:
    return hashlib.sha256(LABEL_CONFIRM + session_id + k_i2r + k_r2i).digest()


def hello_frame(sequence: int, payload: bytes) -> bytes:
    return _frame.encode_frame(MsgType.HELLO, 0x00, sequence, payload)


def check_handshake_frame(frame, expected_seq: int) -> None:
    """Frame-level checks of section 3.3 (the flags byte is not checked)."""
    if frame.msg_type != MsgType.HELLO:
        raise UnexpectedMessage("Hello", type_name(frame.msg_type))
    if frame.sequence != expected_seq:
        raise HandshakeFailed(f"unexpected handshake sequence: expected {expected_seq}, got {frame.sequence}")


# ---------------------------------------------------------------------------
# State machines
# ---------------------------------------------------------------------------
class _Side:
    role = ""

    def __init__(
        self,
        provider,
        verifier,
        config: SessionConfig,
        *,
        secret_key: Optional[bytes] = None,
        nonce: Optional[bytes] = None,
    ):
        self.provider = provider
        self.verifier = verifier
        self.config = config
        self._sk, self.public_key = sodium.x25519_keypair(secret_key)
        self.nonce = nonce if nonce is not None else sodium.random_bytes(32)
        self.keys: Optional[SessionKeys] = None

    def _own_document(self) -> bytes:
        role = self.config.own_role
        attested_nonce = self.nonce if role is None else role.bind(self.nonce)
        try:
            doc = self.provider.attest(None, attested_nonce, self.public_key)
        except Exception as exc:  # noqa: BLE001 - any provider failure aborts the handshake
            what = (
                "initiator attestation generation failed"
                if self.role == "initiator"
                else "attestation generation failed"
            )
            raise HandshakeFailed(f"{what}: {exc}") from exc
        return bytes(doc)

    def _verify_peer(self, document: bytes, peer_pk: bytes, peer_nonce: bytes):
        """Verify the peer's document and bind it to its hello (section 3.4)."""
        if not document:
            return self._accept_unattested()
        try:
            verified = self.verifier.verify(document)
        except Exception as exc:  # noqa: BLE001 - wrapped as in the reference, cause kept
            what = (
                "attestation verification failed"
                if self.role == "initiator"
                else "initiator attestation verification failed"
            )
            raise HandshakeFailed(f"{what}: {exc}") from exc
        if verified.document_hash != document_hash(document):
            raise VerificationFailed("verifier returned a document_hash other than SHA-256(raw)")
        if verified.public_key is None:
            raise MissingField("public_key")
        if bytes(verified.public_key) != peer_pk:
            raise PublicKeyMismatch()
        if verified.nonce is None:
            raise MissingField("nonce")
        role = self.config.peer_role
        if role is None:
            if bytes(verified.nonce) != peer_nonce:
                raise VerificationFailed("nonce mismatch")
        elif bytes(verified.nonce) != role.bind(peer_nonce):
            if bytes(verified.nonce) == peer_nonce:
                raise RoleMismatch(f"the peer attests no pipeline role; expected {role}")
            raise RoleMismatch(
                f"the peer does not attest the expected role {role} (a skipped, "
                "swapped or duplicated stage, or another pipeline)"
            )
        if self.config.expected_measurements is not None:
            self.config.expected_measurements.verify(verified.measurements)
        return verified

    def _accept_unattested(self) -> VerifiedAttestation:
        """An empty document: a host peer without a TEE (asymmetric attestation).

        Accepted only when the configuration says so, and never when this side
        pins measurements (they could not be checked).  A reference verifier
        rejects an empty document, so this stays fail-closed against it.
        """
        if not self.config.allow_unattested_peer:
            raise HandshakeFailed(
                "peer presented no attestation document "
                "(unattested peers are not allowed by this configuration)"
            )
        if self.config.expected_measurements is not None and len(self.config.expected_measurements):
            raise HandshakeFailed("peer presented no attestation document but its measurements are pinned")
        return VerifiedAttestation(
            document_hash=document_hash(b""),
            public_key=None,
            user_data=None,
            nonce=None,
            measurements={},
            platform="none",
        )

    def _finish(self, peer_pk: bytes, transcript: bytes, verified) -> bytes:
        shared = sodium.x25519(self._sk, peer_pk)
        k_i2r, k_r2i, sid = derive_keys(transcript, shared)
        if self.role == "initiator":
            send, recv = k_i2r, k_r2i
        else:
            send, recv = k_r2i, k_i2r
        self.keys = SessionKeys(
            send_key=send, recv_key=recv, session_id=sid, transcript=transcript, peer_attestation=verified
        )
        self._sk = None
        return confirmation_hash(sid, k_i2r, k_r2i)


class InitiatorHandshake(_Side):
    role = "initiator"

    def start(self) -> bytes:
        """Msg 1 as frame bytes (Hello, seq 0)."""
        self.config.validate_measurements()
        self._doc = self._own_document()
        return hello_frame(0, encode_hello(INITIATOR_HELLO, self.public_key, self.nonce, self._doc))

    def on_responder_hello(self, frame) -> bytes:
        """Check msg 2, derive keys; returns msg 3 as frame bytes (Hello, seq 1)."""
        check_handshake_frame(frame, 0)
        pk_r, nonce_r, doc_r = parse_hello(frame.payload, RESPONDER_HELLO)
        verified = self._verify_peer(doc_r, pk_r, nonce_r)
        transcript = transcript_hash(
            document_hash(self._doc), verified.document_hash, self.public_key, pk_r, self.nonce, nonce_r
        )
        confirm = self._finish(pk_r, transcript, verified)
        return hello_frame(1, bytes([CONFIRMATION]) + confirm)


class ResponderHandshake(_Side):
    role = "responder"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.validate_measurements()
        self._expected_confirmation: Optional[bytes] = None
        self._pending: Optional[SessionKeys] = None

    def on_hello(self, frame) -> bytes:
        """Check msg 1, attest, derive keys; returns msg 2 as frame bytes (Hello, seq 0).

        Unlike the reference, the contributory-DH check runs before msg 2 is
        sent (transport.md 11.13): a low-order key gets no document back.
        """
        check_handshake_frame(frame, 0)
        pk_i, nonce_i, doc_i = parse_hello(frame.payload, INITIATOR_HELLO)
        verified = self._verify_peer(doc_i, pk_i, nonce_i)
        doc_r = self._own_document()
        transcript = transcript_hash(
            document_hash(doc_i), document_hash(doc_r), pk_i, self.public_key, nonce_i, self.nonce
        )
        self._expected_confirmation = self._finish(pk_i, transcript, verified)
        self._pending, self.keys = self.keys, None  # established only after msg 3
        return hello_frame(0, encode_hello(RESPONDER_HELLO, self.public_key, self.nonce, doc_r))

    def on_confirmation(self, frame) -> None:
        check_handshake_frame(frame, 1)
        got = parse_confirmation(frame.payload)
        if self._expected_confirmation is None:
            raise HandshakeFailed("confirmation received before the initiator hello")
        if not sodium.ct_equal(got, self._expected_confirmation):
            raise HandshakeFailed("confirmation hash mismatch: peer derived different keys")
        self.keys, self._pending = self._pending, None
