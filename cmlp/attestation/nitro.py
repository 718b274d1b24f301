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
or where the spec is silent, the safe choice is taken:

* CBOR is decoded by the small strict reader below, not by ``cbor2``: the
  reader rejects duplicate map keys, trailing bytes (after the COSE array, the
  protected header or the payload map), every CBOR tag except a top-level
  tag 18, reserved encodings, invalid UTF-8, more than MAX_CBOR_DEPTH nested
  containers and more than MAX_CBOR_ITEMS items.  cbor2 (>= 5.4, the
  declared minimum) collapses duplicate keys silently and interprets semantic
  tags (regular expressions, shared references), which is attack surface a
  verifier does not need.  Byte strings are returned as the exact received
  bytes, so the signature always covers what arrived (nothing is re-encoded).
* Optional fields (public_key, user_data, nonce): a byte string -> value,
  CBOR null or absent -> None, **any other type -> VerificationFailed** (the
  reference maps it to None silently).  Each is at most 1024 bytes (the AWS
  attestation document specification).
* PCR indices 0..31 and 1..32 entries (AWS specification: ``index = 0..31``);
  the reference table says 0..15, which real NSMs return today.  Accepting
  the documented range is harmless: pins are by index.
* The protected header must carry ``alg`` = ES384 (-35), no ``crit`` and
  ``alg`` must not be repeated in the unprotected header (which must be a
  map).  The reference does not inspect ``alg`` at all.
* ``cabundle`` must be in the documented order (root first, each entry issued
  by the previous one, the leaf by the last); no path building, no unused
  certificates.  At most MAX_CABUNDLE entries, each at most MAX_CERT_SIZE.
* Path validation is done here (not by OpenSSL) so that it is the same on
  every cryptography version: ECDSA-SHA2 signatures with EC keys on
  P-256/P-384/P-521 only, validity at the verification time for every
  certificate including the root, basicConstraints cA=TRUE for every issuer,
  pathLenConstraint, keyCertSign when keyUsage is present, unknown critical
  extensions rejected, leaf must not be a CA and, when keyUsage is present,
  must allow digitalSignature.
* The whole document is bounded to MAX_DOCUMENT_SIZE (64 KiB, the largest
  document a handshake hello can carry).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Mapping, Optional

from cmlp.attestation.base import VerifiedAttestation, document_hash
from cmlp.errors import (AttestError, Expired, MissingField, PublicKeyMismatch,
                         VerificationFailed)

PLATFORM = "nitro"

# AWS Nitro Enclaves root G1 (bundled as package data, pinned by fingerprint).
AWS_NITRO_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
AWS_NITRO_ROOT_RESOURCE = "aws_nitro_root_g1.pem"

# Bounds: every byte of a document is hostile.
MAX_DOCUMENT_SIZE = 65536      # same cap as a handshake hello's document
MAX_CBOR_DEPTH = 16            # real documents nest 3 deep
MAX_CBOR_ITEMS = 4096          # real documents hold < 100 items
MAX_CABUNDLE = 8               # real documents carry 4 (root + 3 CAs)
MAX_CERT_SIZE = 4096           # AWS specifies 1..1024; real ones are < 800
MAX_OPTIONAL_FIELD = 1024      # public_key, user_data, nonce (AWS spec)
MAX_PCRS = 32
PCR_SIZES = (32, 48, 64)

COSE_SIGN1_TAG = 18
COSE_HEADER_ALG = 1
COSE_HEADER_CRIT = 2
COSE_ALG_ES384 = -35
ES384_SIGNATURE_SIZE = 96      # r || s, 48 bytes each, big-endian

MAX_TIME_MS = 253_402_300_799_999   # 9999-12-31T23:59:59.999Z, the datetime limit
DEFAULT_MAX_AGE_SECS = 300.0
DEFAULT_FUTURE_SKEW_SECS = 60.0


# --------------------------------------------------------------------------
# Strict, bounded CBOR reader (RFC 8949 subset)
# --------------------------------------------------------------------------
class CborError(ValueError):
    """Malformed or out-of-profile CBOR.  Callers turn it into a typed AttestError."""


class _Undefined:
    """CBOR ``undefined`` (simple value 23), kept distinct from null."""

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED = _Undefined()
_BREAK = object()


class _Reader:
    __slots__ = ("data", "pos", "items", "max_depth", "max_items")

    def __init__(self, data: bytes, max_depth: int, max_items: int):
        self.data = data
        self.pos = 0
        self.items = 0
        self.max_depth = max_depth
        self.max_items = max_items

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise CborError(f"truncated: needs {n} bytes at offset {self.pos}, "
                            f"{len(self.data) - self.pos} left")
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def head(self):
        """One initial byte plus argument: ``(major, argument or None if indefinite)``."""
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info
        if info <= 27:
            return major, info, int.from_bytes(self.take(1 << (info - 24)), "big")
        if info == 31:
            return major, info, None
        raise CborError(f"reserved additional information {info} at offset {self.pos - 1}")

    def count_item(self) -> None:
        self.items += 1
        if self.items > self.max_items:
            raise CborError(f"more than {self.max_items} CBOR items")

    def item(self, depth: int, allow_break: bool = False):
        self.count_item()
        major, info, arg = self.head()
        if major == 0:
            if arg is None:
                raise CborError("indefinite-length integer")
            return arg
        if major == 1:
            if arg is None:
                raise CborError("indefinite-length integer")
            return -1 - arg
        if major in (2, 3):
            return self.string(major, arg)
        if major in (4, 5):
            if depth >= self.max_depth:
                raise CborError(f"nesting deeper than {self.max_depth}")
            return self.array(arg, depth + 1) if major == 4 else self.map(arg, depth + 1)
        if major == 6:
            raise CborError(f"CBOR tag {arg} not allowed here")
        return self.simple(info, arg, allow_break)

    def string(self, major: int, length: Optional[int]):
        if length is not None:
            raw = self.take(length)
        else:   # indefinite: definite chunks of the same major type, then break
            chunks = []
            while True:
                self.count_item()
                c_major, c_info, c_len = self.head()
                if c_major == 7 and c_info == 31:
                    break
                if c_major != major or c_len is None:
                    raise CborError("bad chunk in indefinite-length string")
                chunks.append(self.take(c_len))
            raw = b"".join(chunks)
        if major == 2:
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CborError("text string is not valid UTF-8") from None

    def array(self, length: Optional[int], depth: int) -> list:
        out = []
        if length is None:
            while True:
                value = self.item(depth, allow_break=True)
                if value is _BREAK:
                    return out
                out.append(value)
        if length > len(self.data) - self.pos:   # each item takes >= 1 byte
            raise CborError(f"array of {length} items exceeds the input")
        for _ in range(length):
            out.append(self.item(depth))
        return out

    def map(self, length: Optional[int], depth: int) -> dict:
        out: dict = {}
        if length is not None and 2 * length > len(self.data) - self.pos:
            raise CborError(f"map of {length} entries exceeds the input")
        n = 0
        while length is None or n < length:
            key = self.item(depth, allow_break=length is None)
            if key is _BREAK:
                break
            # Only int/text/bytes keys: no float/bool aliasing (1 == 1.0 == True).
            if type(key) not in (int, str, bytes):
                raise CborError(f"unsupported map key type {type(key).__name__}")
            if key in out:
                raise CborError(f"duplicate map key {key!r}")
            out[key] = self.item(depth)
            n += 1
        return out

    def simple(self, info: int, arg, allow_break: bool):
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 23:
            return UNDEFINED
        if info == 25:
            return struct.unpack(">e", arg.to_bytes(2, "big"))[0]
        if info == 26:
            return struct.unpack(">f", arg.to_bytes(4, "big"))[0]
        if info == 27:
            return struct.unpack(">d", arg.to_bytes(8, "big"))[0]
        if info == 31:
            if allow_break:
                return _BREAK
            raise CborError("unexpected break")
        raise CborError(f"unsupported simple value {arg}")


def decode_cbor(data: bytes, *, allow_tag: Optional[int] = None,
                max_depth: int = MAX_CBOR_DEPTH, max_items: int = MAX_CBOR_ITEMS):
    """Decode exactly one CBOR item spanning all of ``data``.

    ``allow_tag`` permits that one tag number on the top-level item only.
    Maps become dicts, arrays lists, byte strings ``bytes`` (exact input
    bytes), text ``str``, null ``None``, undefined :data:`UNDEFINED`.
    Raises :class:`CborError`.
    """
    data = bytes(data)
    reader = _Reader(data, max_depth, max_items)
    if allow_tag is not None and data and data[0] >> 5 == 6:
        _, _, tag = reader.head()
        if tag != allow_tag:
            raise CborError(f"CBOR tag {tag} not allowed here")
    value = reader.item(0)
    if reader.pos != len(data):
        raise CborError(f"{len(data) - reader.pos} trailing bytes")
    return value


# --------------------------------------------------------------------------
# COSE_Sign1 (RFC 9052 section 4.2)
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class CoseSign1:
    protected_bytes: bytes        # the received bstr, exactly: it is signed
    protected: dict
    unprotected: dict
    payload: Optional[bytes]      # None = detached (nil)
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
        protected = {}   # RFC 9052: a zero-length bstr encodes the empty map
    if type(unprotected) is not dict:
        raise bad("unprotected header is not a map")
    if payload is not None and type(payload) is not bytes:
        raise bad("payload is neither a byte string nor nil")
    if type(signature) is not bytes:
        raise bad("signature is not a byte string")
    return CoseSign1(protected_bytes, protected, unprotected, payload, signature)


def sig_structure(protected_bytes: bytes, payload: bytes) -> bytes:
    """``["Signature1", protected, h'', payload]`` in deterministic CBOR."""
    return b"".join((b"\x84", _cbor_head(3, 10), b"Signature1",
                     _cbor_head(2, len(protected_bytes)), protected_bytes,
                     b"\x40", _cbor_head(2, len(payload)), payload))


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([(major << 5) | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([(major << 5) | info]) + n.to_bytes(size, "big")
    raise ValueError("CBOR argument too large")


# --------------------------------------------------------------------------
# Attestation document payload (step 3)
# --------------------------------------------------------------------------
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
        raise VerificationFailed(
            f"{name} must be a byte string or null, got {_cbor_type(value)}")
    if len(value) > MAX_OPTIONAL_FIELD:
        raise VerificationFailed(
            f"{name} is {len(value)} bytes (max {MAX_OPTIONAL_FIELD})")
    return value


def _cbor_type(value) -> str:
    if value is None:
        return "null"
    if value is UNDEFINED:
        return "undefined"
    return {bool: "bool", int: "integer", float: "float", str: "text string",
            bytes: "byte string", list: "array", dict: "map"}.get(type(value), "value")


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
        raise VerificationFailed(
            f"certificate is {len(certificate)} bytes (allowed 1..{MAX_CERT_SIZE})")
    cabundle = _required(fields, "cabundle", list, "an array of byte strings")
    if len(cabundle) > MAX_CABUNDLE:
        raise VerificationFailed(
            f"cabundle has {len(cabundle)} certificates (max {MAX_CABUNDLE})")
    for i, der in enumerate(cabundle):
        if type(der) is not bytes:
            raise VerificationFailed(
                f"cabundle[{i}] must be a byte string, got {_cbor_type(der)}")
        if not 1 <= len(der) <= MAX_CERT_SIZE:
            raise VerificationFailed(
                f"cabundle[{i}] is {len(der)} bytes (allowed 1..{MAX_CERT_SIZE})")
    raw_pcrs = _required(fields, "pcrs", dict, "a map")
    if not 1 <= len(raw_pcrs) <= MAX_PCRS:
        raise VerificationFailed(f"pcrs has {len(raw_pcrs)} entries (allowed 1..{MAX_PCRS})")
    pcrs = {}
    for idx, value in raw_pcrs.items():   # duplicates were rejected by the reader
        if type(idx) is not int or not 0 <= idx < MAX_PCRS:
            raise VerificationFailed(f"pcrs key {idx!r} is not an index in 0..{MAX_PCRS - 1}")
        if type(value) is not bytes:
            raise VerificationFailed(f"PCR{idx} must be a byte string, got {_cbor_type(value)}")
        if len(value) not in PCR_SIZES:
            raise VerificationFailed(f"PCR{idx} is {len(value)} bytes (allowed 32, 48 or 64)")
        pcrs[idx] = value
    return NitroDocument(
        module_id=module_id, digest=digest, timestamp_ms=timestamp,
        certificate=certificate, cabundle=tuple(cabundle), pcrs=dict(sorted(pcrs.items())),
        public_key=_optional_bytes(fields, "public_key"),
        user_data=_optional_bytes(fields, "user_data"),
        nonce=_optional_bytes(fields, "nonce"))


# --------------------------------------------------------------------------
# cryptography (optional dependency, imported lazily)
# --------------------------------------------------------------------------
def _require_cryptography() -> None:
    try:
        import cryptography.x509  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "AWS Nitro attestation needs the 'cryptography' package: "
            "pip install 'cmlp[nitro]'") from exc


def _not_before(cert) -> datetime:
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=timezone.utc)


def _not_after(cert) -> datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class PinnedRoot:
    der: bytes
    cert: object          # cryptography.x509.Certificate
    sha256: str


def load_root(pem: bytes, expected_sha256: Optional[str] = None) -> PinnedRoot:
    """Parse a root CA PEM; check its fingerprint (if given) and self-signature."""
    _require_cryptography()
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    try:
        cert = x509.load_pem_x509_certificate(bytes(pem))
    except ValueError as exc:
        raise ValueError(f"root CA is not a PEM certificate: {exc}") from None
    der = cert.public_bytes(serialization.Encoding.DER)
    fingerprint = hashlib.sha256(der).hexdigest()
    if expected_sha256 is not None and fingerprint != expected_sha256.lower():
        raise VerificationFailed(
            f"pinned root CA fingerprint {fingerprint} != expected {expected_sha256}")
    try:
        cert.verify_directly_issued_by(cert)
    except Exception as exc:   # noqa: BLE001 - any failure means "not a usable root"
        raise ValueError(f"root CA is not self-signed: {exc}") from None
    return PinnedRoot(der=der, cert=cert, sha256=fingerprint)


def load_bundled_root() -> PinnedRoot:
    """The AWS Nitro root G1 shipped in cmlp/data, checked against its fingerprint."""
    from importlib.resources import files
    pem = files("cmlp").joinpath("data").joinpath(AWS_NITRO_ROOT_RESOURCE).read_bytes()
    return load_root(pem, AWS_NITRO_ROOT_G1_SHA256)


# --------------------------------------------------------------------------
# X.509 path validation (step 8)
# --------------------------------------------------------------------------
def validate_chain(leaf_der: bytes, cabundle, root: PinnedRoot, at: datetime):
    """Validate leaf <- cabundle[-1] <- ... <- cabundle[1] <- cabundle[0] == root.

    Returns the leaf certificate.  Raises VerificationFailed.
    """
    if not cabundle:
        raise VerificationFailed("certificate chain is empty (cabundle has no root)")
    if bytes(cabundle[0]) != root.der:
        raise VerificationFailed("cabundle root does not match pinned AWS Nitro root CA")
    try:
        return _validate_path(leaf_der, cabundle, root, at)
    except AttestError:
        raise
    except Exception as exc:   # noqa: BLE001 - hostile DER can raise many types
        raise VerificationFailed(
            f"certificate chain: {type(exc).__name__}: {exc}") from None


def _validate_path(leaf_der, cabundle, root: PinnedRoot, at: datetime):
    from cryptography import x509

    names = ["root"] + [f"cabundle[{i}]" for i in range(1, len(cabundle))] + ["leaf"]
    path = [root.cert]
    for i, der in enumerate(cabundle[1:], start=1):
        path.append(_load_der(x509, der, f"cabundle[{i}]"))
    leaf = _load_der(x509, leaf_der, "leaf certificate")
    path.append(leaf)
    n_cas = len(path) - 1

    for i, cert in enumerate(path):
        name = names[i]
        if not _not_before(cert) <= at <= _not_after(cert):
            raise VerificationFailed(
                f"certificate chain: {name} is not valid at {at.isoformat()} "
                f"(valid {_not_before(cert).isoformat()} .. {_not_after(cert).isoformat()})")
        _check_extensions(x509, cert, name, is_ca=i < n_cas, cas_below=n_cas - 1 - i)
        _check_key(cert, name)

    for i in range(1, len(path)):
        _check_signature_algorithm(x509, path[i], names[i])
        try:
            path[i].verify_directly_issued_by(path[i - 1])
        except Exception as exc:   # noqa: BLE001 - name mismatch or bad signature
            raise VerificationFailed(
                f"certificate chain broken: {names[i]} is not issued by {names[i - 1]} "
                f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})") from None

    if leaf.subject == leaf.issuer:
        raise VerificationFailed("certificate chain: leaf certificate is self-issued")
    return leaf


def _load_der(x509, der: bytes, name: str):
    try:
        return x509.load_der_x509_certificate(bytes(der))
    except ValueError as exc:
        raise VerificationFailed(f"certificate chain: {name} is not a DER certificate: {exc}") \
            from None


def _check_extensions(x509, cert, name: str, *, is_ca: bool, cas_below: int) -> None:
    known_critical = (x509.BasicConstraints.oid, x509.KeyUsage.oid)
    for ext in cert.extensions:
        if ext.critical and ext.oid not in known_critical:
            raise VerificationFailed(
                f"certificate chain: {name} has an unsupported critical extension "
                f"{ext.oid.dotted_string}")
    bc = _extension(x509, cert, x509.BasicConstraints)
    ku = _extension(x509, cert, x509.KeyUsage)
    if is_ca:
        if bc is None or not bc.ca:
            raise VerificationFailed(f"certificate chain: {name} is not a CA (basicConstraints)")
        if bc.path_length is not None and cas_below > bc.path_length:
            raise VerificationFailed(
                f"certificate chain: {name} pathLenConstraint {bc.path_length} "
                f"exceeded ({cas_below} CA certificates follow)")
        if ku is not None and not ku.key_cert_sign:
            raise VerificationFailed(f"certificate chain: {name} keyUsage lacks keyCertSign")
    else:
        if bc is not None and bc.ca:
            raise VerificationFailed("certificate chain: leaf certificate is a CA")
        if ku is not None and not ku.digital_signature:
            raise VerificationFailed(
                "certificate chain: leaf certificate keyUsage lacks digitalSignature")


def _extension(x509, cert, ext_type):
    try:
        return cert.extensions.get_extension_for_class(ext_type).value
    except x509.ExtensionNotFound:
        return None


def _check_key(cert, name: str) -> None:
    # The leaf's P-384 requirement is step 9's (COSE ES384); here: EC on NIST curves.
    from cryptography.hazmat.primitives.asymmetric import ec
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationFailed(f"certificate chain: {name} key is not an EC key")
    if not isinstance(key.curve, (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)):
        raise VerificationFailed(
            f"certificate chain: {name} key is on {key.curve.name}, "
            "expected a NIST P-256/P-384/P-521 curve")


def _check_signature_algorithm(x509, cert, name: str) -> None:
    from cryptography.x509.oid import SignatureAlgorithmOID as S
    if cert.signature_algorithm_oid not in (S.ECDSA_WITH_SHA256, S.ECDSA_WITH_SHA384,
                                            S.ECDSA_WITH_SHA512):
        raise VerificationFailed(
            f"certificate chain: {name} signature algorithm "
            f"{cert.signature_algorithm_oid.dotted_string} is not ECDSA with SHA-2")


# --------------------------------------------------------------------------
# COSE signature (step 9)
# --------------------------------------------------------------------------
def verify_cose_signature(cose: CoseSign1, leaf) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    alg = cose.protected.get(COSE_HEADER_ALG)
    if type(alg) is not int or alg != COSE_ALG_ES384:
        raise VerificationFailed(
            f"COSE protected header alg must be ES384 (-35), got {alg!r}")
    if COSE_HEADER_CRIT in cose.protected:
        raise VerificationFailed("COSE protected header lists critical parameters (crit)")
    if COSE_HEADER_ALG in cose.unprotected:
        raise VerificationFailed("COSE alg must only appear in the protected header")
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationFailed("leaf certificate key is not P-384 (secp384r1)")
    if len(cose.signature) != ES384_SIGNATURE_SIZE:
        raise VerificationFailed(
            f"COSE signature is {len(cose.signature)} bytes (ES384 needs 96: r || s)")
    r = int.from_bytes(cose.signature[:48], "big")
    s = int.from_bytes(cose.signature[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), sig_structure(cose.protected_bytes, cose.payload),
                   ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise VerificationFailed("COSE_Sign1 signature does not verify") from None


# --------------------------------------------------------------------------
# The verifier
# --------------------------------------------------------------------------
def _ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)


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

    def __init__(self, expected_pcrs: Optional[Mapping[int, bytes]] = None, *,
                 root_pem: Optional[bytes] = None,
                 max_age_secs: float = DEFAULT_MAX_AGE_SECS,
                 future_skew_secs: float = DEFAULT_FUTURE_SKEW_SECS,
                 clock: Optional[Callable[[], int]] = None,
                 at_ms: Optional[int] = None):
        _require_cryptography()
        self.expected_pcrs = self._check_pins(expected_pcrs or {})
        for what, value in (("max_age_secs", max_age_secs), ("future_skew_secs", future_skew_secs)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{what} must be a finite non-negative number, got {value!r}")
        self.max_age_ms = int(max_age_secs * 1000)
        self.future_skew_ms = int(future_skew_secs * 1000)
        if at_ms is not None and (type(at_ms) is not int or not 0 <= at_ms <= MAX_TIME_MS):
            raise ValueError(f"at_ms must be an integer in 0..{MAX_TIME_MS}, got {at_ms!r}")
        self.at_ms = at_ms
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
        if self.at_ms is not None:
            return self.at_ms
        if self.clock is not None:
            now = int(self.clock())
            if not 0 <= now <= MAX_TIME_MS:
                raise VerificationFailed(f"clock returned an impossible time: {now} ms")
            return now
        return time.time_ns() // 1_000_000

    def verify(self, document: bytes) -> VerifiedAttestation:
        raw = bytes(document)
        if len(raw) > MAX_DOCUMENT_SIZE:
            raise VerificationFailed(
                f"attestation document is {len(raw)} bytes (max {MAX_DOCUMENT_SIZE})")
        now = self.now_ms()

        cose = parse_cose_sign1(raw)                                   # 1
        if cose.payload is None:                                       # 2
            raise MissingField("COSE_Sign1 payload")
        doc = parse_payload(cose.payload)                              # 3
        if doc.digest != "SHA384":                                     # 4
            raise VerificationFailed(f"digest must be SHA384, got {doc.digest!r}")
        if doc.timestamp_ms == 0:                                      # 5
            raise VerificationFailed("timestamp is zero")
        self._check_freshness(doc.timestamp_ms, now)                   # 6
        if not doc.module_id:                                          # 7
            raise MissingField("module_id")
        leaf = validate_chain(doc.certificate, doc.cabundle, self.root,   # 8
                              _ms_to_datetime(now))
        verify_cose_signature(cose, leaf)                              # 9
        self._check_pcrs(doc.pcrs)                                     # 10
        return VerifiedAttestation(                                    # 11
            document_hash=document_hash(raw), public_key=doc.public_key,
            user_data=doc.user_data, nonce=doc.nonce, measurements=dict(doc.pcrs),
            platform=PLATFORM,
            details={"module_id": doc.module_id, "timestamp_ms": doc.timestamp_ms,
                     "digest": doc.digest, "verified_at_ms": now,
                     "leaf_subject": leaf.subject.rfc4514_string(),
                     "cabundle_len": len(doc.cabundle)})

    def verify_with_binding(self, document: bytes, public_key: bytes,
                            nonce: bytes) -> VerifiedAttestation:
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
                f"in the future (allowed skew {self.future_skew_ms} ms)")
        age = now_ms - timestamp_ms
        if age > self.max_age_ms:
            raise Expired(f"attestation document expired: {age} ms old "
                          f"(max age {self.max_age_ms} ms)")

    def _check_pcrs(self, pcrs: Mapping[int, bytes]) -> None:
        for idx, expected in self.expected_pcrs.items():
            if idx not in pcrs:
                raise MissingField(f"PCR{idx}")
            if not hmac.compare_digest(pcrs[idx], expected):
                raise VerificationFailed(
                    f"PCR{idx} mismatch: expected {expected.hex()}, got {pcrs[idx].hex()}")

    def __repr__(self) -> str:
        pins = ", ".join(f"PCR{i}" for i in self.expected_pcrs) or "none"
        return (f"NitroVerifier(root sha256={self.root.sha256[:16]}..., pins: {pins}, "
                f"max_age_ms={self.max_age_ms})")
