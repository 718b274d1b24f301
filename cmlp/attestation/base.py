"""Attestation interfaces (transport.md section 5.1 and 5.4).

A *provider* produces this side's attestation document, binding the
handshake's X25519 public key and nonce.  A *verifier* checks the peer's
document and returns a :class:`VerifiedAttestation`.  Every verifier must set
``document_hash = SHA-256(raw document)``: it enters the handshake transcript,
so anything else breaks interoperability silently (transport.md section 11.9).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Protocol

from cmlp.errors import MissingField, VerificationFailed


@dataclass(frozen=True)
class VerifiedAttestation:
    document_hash: bytes
    public_key: Optional[bytes]
    user_data: Optional[bytes]
    nonce: Optional[bytes]
    measurements: Mapping[int, bytes] = field(default_factory=dict)
    platform: str = "unknown"
    details: Mapping[str, object] = field(default_factory=dict)


def document_hash(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


class AttestationProvider(Protocol):
    """Produces this side's document.  The handshake calls it with
    ``user_data=None``, the 32-byte hello nonce and the 32-byte public key."""

    def attest(
        self, user_data: Optional[bytes], nonce: Optional[bytes], public_key: Optional[bytes]
    ) -> bytes: ...


class AttestationVerifier(Protocol):
    """Checks a peer document; raises an :class:`cmlp.errors.AttestError`."""

    def verify(self, document: bytes) -> VerifiedAttestation: ...


class ExpectedMeasurements:
    """Pinned register values: index -> exact bytes (section 5.4).

    Entries are checked in ascending index order; a missing index is
    ``MissingField("measurement[i]")``, a different value (length included)
    is ``VerificationFailed("measurement[i] mismatch: ...")``.  Indices not
    listed are ignored.
    """

    def __init__(self, values: Mapping[int, bytes]):
        clean = {}
        for idx, value in values.items():
            if not isinstance(idx, int) or idx < 0:
                raise ValueError(f"measurement index must be a non-negative integer, got {idx!r}")
            clean[idx] = bytes(value)
        self._values = dict(sorted(clean.items()))

    @classmethod
    def from_hex(cls, values: Mapping[Any, str]) -> "ExpectedMeasurements":
        out = {}
        for key, hexval in values.items():
            try:
                idx = int(key)  # str or int keys; anything else raises TypeError below
            except (TypeError, ValueError):
                raise ValueError(f"measurement index {key!r} is not an integer") from None
            if not isinstance(hexval, str):
                raise ValueError(f"measurement[{idx}] must be a hex string")
            try:
                out[idx] = bytes.fromhex(hexval)
            except ValueError:
                raise ValueError(f"measurement[{idx}] is not valid hex: {hexval!r}") from None
        return cls(out)

    def __len__(self) -> int:
        return len(self._values)

    def __bool__(self) -> bool:  # an empty pin set is still "configured"
        return True

    def items(self):
        return self._values.items()

    def verify(self, actual: Mapping[int, bytes]) -> None:
        for idx, expected in self._values.items():
            if idx not in actual:
                raise MissingField(f"measurement[{idx}]")
            got = bytes(actual[idx])
            if got != expected:
                raise VerificationFailed(
                    f"measurement[{idx}] mismatch: expected {expected.hex()}, got {got.hex()}"
                )

    def __repr__(self) -> str:
        return f"ExpectedMeasurements({ {k: v.hex() for k, v in self._values.items()} })"
