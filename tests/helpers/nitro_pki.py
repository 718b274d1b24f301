"""Test PKI and synthetic AWS Nitro attestation documents (no hardware).

``make_pki()`` builds root -> intermediate -> leaf on P-384 with the same
extension profile as the real AWS chain; ``make_document()`` signs a
COSE_Sign1 (ES384) over a payload built from ``default_fields()``.  Every
knob needed by the rejection tests is a keyword argument.  Encoding uses
cbor2 on purpose: it is independent of the verifier's own CBOR reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

T0_MS = 1_900_000_000_000  # 2030-03-17T17:46:40Z
T0 = datetime.fromtimestamp(T0_MS / 1000, tz=timezone.utc)
HOUR = timedelta(hours=1)
PUBLIC_KEY = bytes(range(32))
NONCE = bytes(range(100, 132))
MODULE_ID = "i-0123456789abcdef0-enc0123456789abcdef"

CA_USAGE = dict(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
LEAF_USAGE = dict(CA_USAGE, content_commitment=True, key_cert_sign=False, crl_sign=False)


def name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cmlp-test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_cert(
    subject: x509.Name,
    issuer: x509.Name,
    issuer_key,
    public_key,
    *,
    ca: bool,
    path_length=None,
    not_before: datetime,
    not_after: datetime,
    key_usage=None,
    basic_constraints: bool = True,
    extra_extensions=(),
    hash_alg=None,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if basic_constraints:
        b = b.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if key_usage is not None:
        b = b.add_extension(x509.KeyUsage(**key_usage), critical=True)
    for ext, critical in extra_extensions:
        b = b.add_extension(ext, critical=critical)
    return b.sign(issuer_key, hash_alg or hashes.SHA384())


@dataclass
class Pki:
    root_key: object
    root_cert: x509.Certificate
    inter_key: object
    inter_cert: x509.Certificate
    leaf_key: object
    leaf_cert: x509.Certificate

    @property
    def root_pem(self) -> bytes:
        return self.root_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def root_der(self) -> bytes:
        return self.root_cert.public_bytes(serialization.Encoding.DER)

    @property
    def inter_der(self) -> bytes:
        return self.inter_cert.public_bytes(serialization.Encoding.DER)

    @property
    def leaf_der(self) -> bytes:
        return self.leaf_cert.public_bytes(serialization.Encoding.DER)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def make_pki(
    *,
    root_key=None,
    root_name="cmlp-test-root",
    leaf_curve=None,
    leaf_validity=(-HOUR, 2 * HOUR),
    inter_validity=(-240 * HOUR, 240 * HOUR),
    root_validity=(-10000 * HOUR, 10000 * HOUR),
    inter_path_length=0,
    inter_key_usage=CA_USAGE,
    inter_ca=True,
    leaf_key_usage=LEAF_USAGE,
    leaf_ca=False,
    leaf_subject=None,
    leaf_extra_extensions=(),
    leaf_hash=None,
) -> Pki:
    root_key = root_key or ec.generate_private_key(ec.SECP384R1())
    root = make_cert(
        name(root_name),
        name(root_name),
        root_key,
        root_key.public_key(),
        ca=True,
        not_before=T0 + root_validity[0],
        not_after=T0 + root_validity[1],
        key_usage=CA_USAGE,
    )
    inter_key = ec.generate_private_key(ec.SECP384R1())
    inter = make_cert(
        name("cmlp-test-intermediate"),
        root.subject,
        root_key,
        inter_key.public_key(),
        ca=inter_ca,
        path_length=inter_path_length,
        not_before=T0 + inter_validity[0],
        not_after=T0 + inter_validity[1],
        key_usage=inter_key_usage,
    )
    leaf_key = ec.generate_private_key(leaf_curve or ec.SECP384R1())
    leaf = make_cert(
        leaf_subject or name("cmlp-test-enclave"),
        inter.subject,
        inter_key,
        leaf_key.public_key(),
        ca=leaf_ca,
        not_before=T0 + leaf_validity[0],
        not_after=T0 + leaf_validity[1],
        key_usage=leaf_key_usage,
        extra_extensions=leaf_extra_extensions,
        hash_alg=leaf_hash,
    )
    return Pki(root_key, root, inter_key, inter, leaf_key, leaf)


def default_fields(pki: Pki, *, timestamp_ms: int = T0_MS) -> dict:
    return {
        "module_id": MODULE_ID,
        "digest": "SHA384",
        "timestamp": timestamp_ms,
        "pcrs": {i: bytes([i]) * 48 for i in range(16)},
        "certificate": pki.leaf_der,
        "cabundle": [pki.root_der, pki.inter_der],
        "public_key": PUBLIC_KEY,
        "user_data": None,
        "nonce": NONCE,
    }


def sign1(
    payload: bytes,
    key,
    *,
    protected=None,
    unprotected=None,
    tagged: bool = False,
    hash_alg=None,
    detached: bool = False,
) -> bytes:
    """COSE_Sign1 over ``payload`` with an EC ``key``; r||s at the curve's size."""
    if protected is None:
        protected = {1: -35}
    protected_bytes = protected if isinstance(protected, bytes) else cbor2.dumps(protected)
    tbs = cbor2.dumps(["Signature1", protected_bytes, b"", payload])
    r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hash_alg or hashes.SHA384())))
    n = (key.curve.key_size + 7) // 8
    signature = r.to_bytes(n, "big") + s.to_bytes(n, "big")
    body = [
        protected_bytes,
        {} if unprotected is None else unprotected,
        None if detached else payload,
        signature,
    ]
    return cbor2.dumps(cbor2.CBORTag(18, body) if tagged else body)


def make_document(pki: Pki, *, fields=None, drop=(), key=None, **overrides) -> bytes:
    """A signed document; ``overrides`` replace payload fields, ``drop`` removes them."""
    f = dict(default_fields(pki) if fields is None else fields)
    f.update(overrides)
    for k in drop:
        f.pop(k, None)
    return sign1(cbor2.dumps(f), key or pki.leaf_key)


def split_cose(document: bytes):
    """``(protected_bytes, unprotected, payload, signature)`` of an untagged document."""
    return cbor2.loads(document)


def join_cose(protected_bytes, unprotected, payload, signature) -> bytes:
    return cbor2.dumps([protected_bytes, unprotected, payload, signature])
