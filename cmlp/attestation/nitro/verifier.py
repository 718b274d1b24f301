"""AWS Nitro Enclaves attestation verifier (transport.md section 5.5).

A Nitro attestation document is a COSE_Sign1 structure (RFC 9052, ES384)
whose payload is a CBOR map produced by the Nitro Secure Module.  The leaf
``certificate`` inside the payload signs the document and must chain, through
``cabundle[1:]``, to the pinned AWS Nitro root G1 (``cabundle[0]``).

Verification order (spec steps 1-11; every failure is a typed AttestError):

 1. decode COSE_Sign1 (tag 18 or untagged 4-element array)
 2. payload present                         -> MissingField("COSE_Sign1 payload")
 3. payload map, field presence and types   -> MissingField / VerificationFailed
 4. digest == "SHA384"
 5. timestamp != 0
 6. freshness: > skew in the future -> VerificationFailed("... in the future"),
    older than max_age -> Expired
 7. module_id non-empty                     -> MissingField("module_id")
 8. X.509 path leaf <- cabundle[-1] <- ... <- cabundle[0] == pinned root,
    at the verification time; leaf subject != issuer
 9. COSE signature: alg ES384, leaf key P-384, 96-byte r||s over the
    Sig_structure built from the bytes exactly as received
10. PCR pinning: MissingField("PCR<i>") / VerificationFailed("PCR<i> mismatch: ...")
11. result: document_hash = SHA-256(raw), all PCRs as measurements

Where this module is stricter than the reference (transport.md section 11.15)
or where the spec is silent, see the package docstring (cmlp.attestation.nitro).
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from cmlp.attestation.base import VerifiedAttestation, document_hash
from cmlp.attestation.clock import check_at_ms, ms_to_datetime
from cmlp.attestation.clock import now_ms as _clock_now_ms
from cmlp.attestation.nitro.cbor import UNDEFINED, CborError, decode_cbor
from cmlp.attestation.nitro.cose import parse_cose_sign1, verify_cose_signature
from cmlp.attestation.nitro.x509 import load_bundled_root, validate_chain
from cmlp.attestation.pki import load_root, require_cryptography
from cmlp.errors import Expired, MissingField, PublicKeyMismatch, VerificationFailed

PLATFORM = "nitro"

# Bounds: every byte of a document is hostile.
MAX_DOCUMENT_SIZE = 65536  # same cap as a handshake hello's document
MAX_CABUNDLE = 8  # real documents carry 4 (root + 3 CAs)
MAX_CERT_SIZE = 4096  # AWS specifies 1..1024; real ones are < 800
MAX_OPTIONAL_FIELD = 1024  # public_key, user_data, nonce (AWS spec)
MAX_PCRS = 32
PCR_SIZES = (32, 48, 64)

DEFAULT_MAX_AGE_SECS = 300.0
DEFAULT_FUTURE_SKEW_SECS = 60.0

_ms_to_datetime = ms_to_datetime
_require_cryptography = require_cryptography


@dataclass(frozen=True)
class NitroDocument:
    module_id: str
    digest: str
    timestamp_ms: int
    certificate: bytes
    cabundle: tuple
    pcrs: Mapping[int, bytes]
    public_key: Optional[bytes]
    user_data: Optional[bytes]
    nonce: Optional[bytes]


def _required(fields: dict, name: str, kind, kind_name: str):
    if name not in fields:
        raise MissingField(name)
    value = fields[name]
    if type(value) is not kind:
        raise VerificationFailed(f"{name} must be {kind_name}, got {_cbor_type(value)}")
    return value


def _optional_bytes(fields: dict, name: str) -> Optional[bytes]:
    value = fields.get(name)
    if value is None:
        return None
    if type(value) is not bytes:
        raise VerificationFailed(f"{name} must be a byte string or null, got {_cbor_type(value)}")
    if len(value) > MAX_OPTIONAL_FIELD:
        raise VerificationFailed(f"{name} is {len(value)} bytes (max {MAX_OPTIONAL_FIELD})")
    return value


def _cbor_type(value) -> str:
    if value is None:
        return "null"
    if value is UNDEFINED:
        return "undefined"
    return {
        bool: "bool",
        int: "integer",
        float: "float",
        str: "text string",
        bytes: "byte string",
        list: "array",
        dict: "map",
    }.get(type(value), "value")


def parse_payload(payload: bytes) -> NitroDocument:
    """Step 3: decode the payload map and type-check every field, in spec order."""
    try:
        fields = decode_cbor(payload)
    except CborError as exc:
        raise VerificationFailed(f"invalid attestation document payload: {exc}") from None
    if type(fields) is not dict:
        raise VerificationFailed("attestation document payload is not a CBOR map")

    module_id = _required(fields, "module_id", str, "a text string")
    digest = _required(fields, "digest", str, "a text string")
    timestamp = _required(fields, "timestamp", int, "an unsigned integer")
    if timestamp < 0:
        raise VerificationFailed("timestamp must be an unsigned integer, got a negative one")
    certificate = _required(fields, "certificate", bytes, "a byte string")
    if not 1 <= len(certificate) <= MAX_CERT_SIZE:
        raise VerificationFailed(f"certificate is {len(certificate)} bytes (allowed 1..{MAX_CERT_SIZE})")
    cabundle = _required(fields, "cabundle", list, "an array of byte strings")
    if len(cabundle) > MAX_CABUNDLE:
        raise VerificationFailed(f"cabundle has {len(cabundle)} certificates (max {MAX_CABUNDLE})")
    for i, der in enumerate(cabundle):
        if type(der) is not bytes:
            raise VerificationFailed(f"cabundle[{i}] must be a byte string, got {_cbor_type(der)}")
        if not 1 <= len(der) <= MAX_CERT_SIZE:
            raise VerificationFailed(f"cabundle[{i}] is {len(der)} bytes (allowed 1..{MAX_CERT_SIZE})")
    raw_pcrs = _required(fields, "pcrs", dict, "a map")
    if not 1 <= len(raw_pcrs) <= MAX_PCRS:
        raise VerificationFailed(f"pcrs has {len(raw_pcrs)} entries (allowed 1..{MAX_PCRS})")
    pcrs = {}
    for idx, value in raw_pcrs.items():  # duplicates were rejected by the reader
        if type(idx) is not int or not 0 <= idx < MAX_PCRS:
            raise VerificationFailed(f"pcrs key {idx!r} is not an index in 0..{MAX_PCRS - 1}")
        if type(value) is not bytes:
            raise VerificationFailed(f"PCR{idx} must be a byte string, got {_cbor_type(value)}")
        if len(value) not in PCR_SIZES:
            raise VerificationFailed(f"PCR{idx} is {len(value)} bytes (allowed 32, 48 or 64)")
        pcrs[idx] = value
    return NitroDocument(
        module_id=module_id,
        digest=digest,
        timestamp_ms=timestamp,
        certificate=certificate,
        cabundle=tuple(cabundle),
        pcrs=dict(sorted(pcrs.items())),
        public_key=_optional_bytes(fields, "public_key"),
        user_data=_optional_bytes(fields, "user_data"),
        nonce=_optional_bytes(fields, "nonce"),
    )


class NitroVerifier:
    """Verifies AWS Nitro attestation documents (see the module docstring).

    ``expected_pcrs``: index -> exact bytes, checked after the signature.
    ``root_pem``: trust anchor; default the bundled AWS Nitro root G1
    (checked against its SHA-256 fingerprint when loaded).
    ``clock``: returns "now" in ms since the epoch (default: system time).
    ``at_ms``: verify as of this instant (offline replay); overrides ``clock``
    for both freshness and certificate validity.
    """

    platform = PLATFORM

    def __init__(
        self,
        expected_pcrs: Optional[Mapping[int, bytes]] = None,
        *,
        root_pem: Optional[bytes] = None,
        max_age_secs: float = DEFAULT_MAX_AGE_SECS,
        future_skew_secs: float = DEFAULT_FUTURE_SKEW_SECS,
        clock: Optional[Callable[[], int]] = None,
        at_ms: Optional[int] = None,
    ):
        _require_cryptography()
        self.expected_pcrs = self._check_pins(expected_pcrs or {})
        for what, value in (("max_age_secs", max_age_secs), ("future_skew_secs", future_skew_secs)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{what} must be a finite non-negative number, got {value!r}")
        self.max_age_ms = int(max_age_secs * 1000)
        self.future_skew_ms = int(future_skew_secs * 1000)
        self.at_ms = check_at_ms(at_ms)
        self.clock = clock
        self.root = load_bundled_root() if root_pem is None else load_root(root_pem)

    @staticmethod
    def _check_pins(pins: Mapping[int, bytes]) -> dict:
        out = {}
        for idx, value in pins.items():
            if type(idx) is not int or not 0 <= idx < MAX_PCRS:
                raise ValueError(f"PCR index must be an integer in 0..{MAX_PCRS - 1}, got {idx!r}")
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ValueError(f"expected PCR{idx} must be bytes")
            out[idx] = bytes(value)
        return dict(sorted(out.items()))

    def now_ms(self) -> int:
        return _clock_now_ms(self.at_ms, self.clock)

    def verify(self, document: bytes) -> VerifiedAttestation:
        raw = bytes(document)
        if len(raw) > MAX_DOCUMENT_SIZE:
            raise VerificationFailed(f"attestation document is {len(raw)} bytes (max {MAX_DOCUMENT_SIZE})")
        now = self.now_ms()

        cose = parse_cose_sign1(raw)  # 1
        if cose.payload is None:  # 2
            raise MissingField("COSE_Sign1 payload")
        doc = parse_payload(cose.payload)  # 3
        if doc.digest != "SHA384":  # 4
            raise VerificationFailed(f"digest must be SHA384, got {doc.digest!r}")
        if doc.timestamp_ms == 0:  # 5
            raise VerificationFailed("timestamp is zero")
        self._check_freshness(doc.timestamp_ms, now)  # 6
        if not doc.module_id:  # 7
            raise MissingField("module_id")
        leaf = validate_chain(
            doc.certificate,
            doc.cabundle,
            self.root,  # 8
            _ms_to_datetime(now),
        )
        verify_cose_signature(cose, leaf)  # 9
        self._check_pcrs(doc.pcrs)  # 10
        return VerifiedAttestation(  # 11
            document_hash=document_hash(raw),
            public_key=doc.public_key,
            user_data=doc.user_data,
            nonce=doc.nonce,
            measurements=dict(doc.pcrs),
            platform=PLATFORM,
            details={
                "module_id": doc.module_id,
                "timestamp_ms": doc.timestamp_ms,
                "digest": doc.digest,
                "verified_at_ms": now,
                "leaf_subject": leaf.subject.rfc4514_string(),
                "cabundle_len": len(doc.cabundle),
            },
        )

    def verify_with_binding(self, document: bytes, public_key: bytes, nonce: bytes) -> VerifiedAttestation:
        """``verify`` plus the handshake binding check of transport.md section 3.4."""
        verified = self.verify(document)
        if verified.public_key is None:
            raise MissingField("public_key")
        if not hmac.compare_digest(verified.public_key, bytes(public_key)):
            raise PublicKeyMismatch()
        if verified.nonce is None:
            raise MissingField("nonce")
        if not hmac.compare_digest(verified.nonce, bytes(nonce)):
            raise VerificationFailed("nonce mismatch")
        return verified

    def _check_freshness(self, timestamp_ms: int, now_ms: int) -> None:
        if timestamp_ms - now_ms > self.future_skew_ms:
            raise VerificationFailed(
                f"attestation timestamp {timestamp_ms} is {timestamp_ms - now_ms} ms "
                f"in the future (allowed skew {self.future_skew_ms} ms)"
            )
        age = now_ms - timestamp_ms
        if age > self.max_age_ms:
            raise Expired(f"attestation document expired: {age} ms old (max age {self.max_age_ms} ms)")

    def _check_pcrs(self, pcrs: Mapping[int, bytes]) -> None:
        for idx, expected in self.expected_pcrs.items():
            if idx not in pcrs:
                raise MissingField(f"PCR{idx}")
            if not hmac.compare_digest(pcrs[idx], expected):
                raise VerificationFailed(
                    f"PCR{idx} mismatch: expected {expected.hex()}, got {pcrs[idx].hex()}"
                )

    def __repr__(self) -> str:
        pins = ", ".join(f"PCR{i}" for i in self.expected_pcrs) or "none"
        return (
            f"NitroVerifier(root sha256={self.root.sha256[:16]}..., pins: {pins}, "
            f"max_age_ms={self.max_age_ms})"
        )
