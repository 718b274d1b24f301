"""COSE_Sign1 (RFC 9052 section 4.2) as AWS Nitro uses it: ES384 over P-384.

Parsing keeps the protected header as the received byte string (it is
signed); :func:`verify_cose_signature` checks the protected ``alg`` (ES384),
rejects ``crit`` and a repeated ``alg`` in the unprotected header, and
verifies the 96-byte r || s signature over the Sig_structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from cmlp.attestation.nitro.cbor import CborError, cbor_head, decode_cbor
from cmlp.errors import VerificationFailed

COSE_SIGN1_TAG = 18
COSE_HEADER_ALG = 1
COSE_HEADER_CRIT = 2
COSE_ALG_ES384 = -35
ES384_SIGNATURE_SIZE = 96  # r || s, 48 bytes each, big-endian


@dataclass(frozen=True)
class CoseSign1:
    protected_bytes: bytes  # the received bstr, exactly: it is signed
    protected: dict
    unprotected: dict
    payload: Optional[bytes]  # None = detached (nil)
    signature: bytes


def parse_cose_sign1(raw: bytes) -> CoseSign1:
    """Step 1: the COSE_Sign1 array, tagged (18) or not."""

    def bad(why: str) -> VerificationFailed:
        return VerificationFailed(f"invalid COSE_Sign1: {why}")

    try:
        obj = decode_cbor(raw, allow_tag=COSE_SIGN1_TAG)
    except CborError as exc:
        raise bad(str(exc)) from None
    if type(obj) is not list or len(obj) != 4:
        raise bad("expected an array of 4 elements")
    protected_bytes, unprotected, payload, signature = obj
    if type(protected_bytes) is not bytes:
        raise bad("protected header is not a byte string")
    if protected_bytes:
        try:
            protected = decode_cbor(protected_bytes)
        except CborError as exc:
            raise bad(f"protected header: {exc}") from None
        if type(protected) is not dict:
            raise bad("protected header is not a map")
    else:
        protected = {}  # RFC 9052: a zero-length bstr encodes the empty map
    if type(unprotected) is not dict:
        raise bad("unprotected header is not a map")
    if payload is not None and type(payload) is not bytes:
        raise bad("payload is neither a byte string nor nil")
    if type(signature) is not bytes:
        raise bad("signature is not a byte string")
    return CoseSign1(protected_bytes, protected, unprotected, payload, signature)


def sig_structure(protected_bytes: bytes, payload: bytes) -> bytes:
    """``["Signature1", protected, h'', payload]`` in deterministic CBOR."""
    return b"".join(
        (
            b"\x84",
            cbor_head(3, 10),
            b"Signature1",
            cbor_head(2, len(protected_bytes)),
            protected_bytes,
            b"\x40",
            cbor_head(2, len(payload)),
            payload,
        )
    )


def verify_cose_signature(cose: CoseSign1, leaf) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    alg = cose.protected.get(COSE_HEADER_ALG)
    if type(alg) is not int or alg != COSE_ALG_ES384:
        raise VerificationFailed(f"COSE protected header alg must be ES384 (-35), got {alg!r}")
    if COSE_HEADER_CRIT in cose.protected:
        raise VerificationFailed("COSE protected header lists critical parameters (crit)")
    if COSE_HEADER_ALG in cose.unprotected:
        raise VerificationFailed("COSE alg must only appear in the protected header")
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationFailed("leaf certificate key is not P-384 (secp384r1)")
    if len(cose.signature) != ES384_SIGNATURE_SIZE:
        raise VerificationFailed(f"COSE signature is {len(cose.signature)} bytes (ES384 needs 96: r || s)")
    if cose.payload is None:  # the verifier rejects this first (its step 2); never sign-check nil
        raise VerificationFailed("COSE_Sign1 payload is detached (nil)")
    r = int.from_bytes(cose.signature[:48], "big")
    s = int.from_bytes(cose.signature[48:], "big")
    try:
        key.verify(
            encode_dss_signature(r, s),
            sig_structure(cose.protected_bytes, cose.payload),
            ec.ECDSA(hashes.SHA384()),
        )
    except InvalidSignature:
        raise VerificationFailed("COSE_Sign1 signature does not verify") from None
