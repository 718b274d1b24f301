"""Mock attestation (``MOCK_ATT_V1``, transport.md section 5.2).  No security.

Document layout (lengths are u32 little-endian)::

    "MOCK_ATT_V1\\0" | len | user_data | len | nonce | len | public_key | [extension]

A zero length means the field is absent (None).  cmlp adds one optional,
wire-compatible extension after the third field so that measurement pinning
can be exercised without TEE hardware::

    "MEAS" | u32 count | count x (u32 index | u32 length | bytes)

The reference verifier ignores bytes after the third field, so documents with
the extension still verify there.  Unlike the reference, cmlp's verifier
rejects any other trailing bytes (transport.md section 11.12: the safe choice).
"""

from __future__ import annotations

import struct
from typing import Mapping, Optional

from cmlp.attestation.base import VerifiedAttestation, document_hash
from cmlp.errors import VerificationFailed

PREFIX = b"MOCK_ATT_V1\x00"
EXT_MAGIC = b"MEAS"
MAX_MEASUREMENTS = 64
MAX_MEASUREMENT_LEN = 1024


def encode_mock_document(
    user_data: Optional[bytes],
    nonce: Optional[bytes],
    public_key: Optional[bytes],
    measurements: Optional[Mapping[int, bytes]] = None,
) -> bytes:
    parts = [PREFIX]
    for value in (user_data, nonce, public_key):
        value = value or b""
        parts.append(struct.pack("<I", len(value)))
        parts.append(bytes(value))
    if measurements:
        parts.append(EXT_MAGIC + struct.pack("<I", len(measurements)))
        for idx, value in sorted(measurements.items()):
            parts.append(struct.pack("<II", idx, len(value)) + bytes(value))
    return b"".join(parts)


def _read_u32(doc: bytes, pos: int, what: str) -> int:
    if pos + 4 > len(doc):
        raise VerificationFailed(f"truncated mock document ({what})")
    return struct.unpack_from("<I", doc, pos)[0]


def decode_mock_document(doc: bytes):
    """Parse a mock document: ``(user_data, nonce, public_key, measurements)``."""
    doc = bytes(doc)
    if not doc.startswith(PREFIX):
        raise VerificationFailed("not a mock attestation document")
    pos = len(PREFIX)
    fields = []
    for what in ("user_data", "nonce", "public_key"):
        n = _read_u32(doc, pos, what)
        pos += 4
        if n > len(doc) - pos:
            raise VerificationFailed("truncated mock document")
        fields.append(doc[pos : pos + n] if n else None)
        pos += n
    measurements = {}
    if pos < len(doc):
        if doc[pos : pos + 4] != EXT_MAGIC:
            raise VerificationFailed("unexpected trailing bytes in mock document")
        pos += 4
        count = _read_u32(doc, pos, "measurement count")
        pos += 4
        if count > MAX_MEASUREMENTS:
            raise VerificationFailed(f"too many mock measurements ({count})")
        for _ in range(count):
            idx = _read_u32(doc, pos, "measurement index")
            n = _read_u32(doc, pos + 4, "measurement length")
            pos += 8
            if n > MAX_MEASUREMENT_LEN or n > len(doc) - pos:
                raise VerificationFailed("truncated mock document (measurement value)")
            if idx in measurements:
                raise VerificationFailed(f"duplicate mock measurement index {idx}")
            measurements[idx] = doc[pos : pos + n]
            pos += n
        if pos != len(doc):
            raise VerificationFailed("unexpected trailing bytes in mock document")
    return fields[0], fields[1], fields[2], measurements


class MockProvider:
    """Emits MOCK_ATT_V1 documents, optionally claiming measurement values."""

    platform = "mock"

    def __init__(self, measurements: Optional[Mapping[int, bytes]] = None):
        self.measurements = dict(measurements or {})

    def attest(self, user_data, nonce, public_key) -> bytes:
        return encode_mock_document(user_data, nonce, public_key, self.measurements)


class MockVerifier:
    """Accepts any well-formed mock document (no security at all)."""

    platform = "mock"

    def verify(self, document: bytes) -> VerifiedAttestation:
        user_data, nonce, public_key, measurements = decode_mock_document(document)
        return VerifiedAttestation(
            document_hash=document_hash(bytes(document)),
            public_key=public_key,
            user_data=user_data,
            nonce=nonce,
            measurements=measurements,
            platform="mock",
        )


class MockVerifierWithMeasurements(MockVerifier):
    """Mock verify, then report a configured measurement map (reference test helper)."""

    def __init__(self, measurements: Mapping[int, bytes]):
        self.measurements = dict(measurements)

    def verify(self, document: bytes) -> VerifiedAttestation:
        v = super().verify(document)
        return VerifiedAttestation(
            document_hash=v.document_hash,
            public_key=v.public_key,
            user_data=v.user_data,
            nonce=v.nonce,
            measurements=dict(self.measurements),
            platform="mock",
        )
