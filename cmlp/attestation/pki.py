"""X.509 pieces shared by the platform verifiers (Nitro, SEV-SNP, TDX).

* :func:`require_cryptography` - the optional dependency, one clear error;
* :class:`PinnedRoot` / :func:`load_root` - a trust anchor checked against its
  SHA-256 fingerprint and its own signature;
* :func:`validate_path` - explicit path validation root -> ... -> leaf at a
  given instant, done here (not by OpenSSL) so that it behaves the same on
  every ``cryptography`` version: validity windows of every certificate,
  basicConstraints / pathLen / keyUsage, unknown critical extensions,
  signature algorithms and key types from an allow-list, each signature.

Every failure is a :class:`cmlp.errors.VerificationFailed`; hostile DER never
escapes as another exception type.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from cmlp.errors import AttestError, VerificationFailed

if TYPE_CHECKING:  # an optional dependency: imported lazily at run time
    from cryptography import x509


def require_cryptography(feature: str = "AWS Nitro attestation", extra: str = "nitro") -> None:
    try:
        import cryptography.x509  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{feature} needs the 'cryptography' package: pip install 'cmlp[{extra}]'") from exc


def not_before(cert) -> datetime:
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=timezone.utc)


def not_after(cert) -> datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=timezone.utc)


def sha256_hex(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class PinnedRoot:
    der: bytes
    cert: x509.Certificate
    sha256: str


def load_root(data: bytes, expected_sha256: Optional[str] = None) -> PinnedRoot:
    """Parse a root CA (PEM or DER); check its fingerprint (if given) and self-signature."""
    require_cryptography()
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    data = bytes(data)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ValueError(f"root CA is not a PEM certificate: {exc}") from None
    der = cert.public_bytes(serialization.Encoding.DER)
    fingerprint = sha256_hex(der)
    if expected_sha256 is not None and fingerprint != expected_sha256.lower():
        raise VerificationFailed(f"pinned root CA fingerprint {fingerprint} != expected {expected_sha256}")
    try:
        cert.verify_directly_issued_by(cert)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a usable root"
        raise ValueError(f"root CA is not self-signed: {exc}") from None
    return PinnedRoot(der=der, cert=cert, sha256=fingerprint)


def load_der(der: bytes, name: str):
    from cryptography import x509

    try:
        return x509.load_der_x509_certificate(bytes(der))
    except ValueError as exc:
        raise VerificationFailed(f"certificate chain: {name} is not a DER certificate: {exc}") from None


def extension(cert, ext_type):
    from cryptography import x509

    try:
        return cert.extensions.get_extension_for_class(ext_type).value
    except x509.ExtensionNotFound:
        return None


def check_ec_nist_key(cert, name: str) -> None:
    """EC keys on NIST P-256/P-384/P-521 only (Nitro and Intel PKIs)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationFailed(f"certificate chain: {name} key is not an EC key")
    if not isinstance(key.curve, (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)):
        raise VerificationFailed(
            f"certificate chain: {name} key is on {key.curve.name}, expected a NIST P-256/P-384/P-521 curve"
        )


def ecdsa_sha2_oids():
    from cryptography.x509.oid import SignatureAlgorithmOID as S

    return (S.ECDSA_WITH_SHA256, S.ECDSA_WITH_SHA384, S.ECDSA_WITH_SHA512)


def check_signature_algorithm(cert, name: str, allowed=None) -> None:
    allowed = ecdsa_sha2_oids() if allowed is None else allowed
    if cert.signature_algorithm_oid not in allowed:
        raise VerificationFailed(
            f"certificate chain: {name} signature algorithm "
            f"{cert.signature_algorithm_oid.dotted_string} is not allowed here"
        )


def check_extensions(cert, name: str, *, is_ca: bool, cas_below: int, known_critical: Sequence = ()) -> None:
    from cryptography import x509

    known = (x509.BasicConstraints.oid, x509.KeyUsage.oid) + tuple(known_critical)
    for ext in cert.extensions:
        if ext.critical and ext.oid not in known:
            raise VerificationFailed(
                f"certificate chain: {name} has an unsupported critical extension {ext.oid.dotted_string}"
            )
    bc = extension(cert, x509.BasicConstraints)
    ku = extension(cert, x509.KeyUsage)
    if is_ca:
        if bc is None or not bc.ca:
            raise VerificationFailed(f"certificate chain: {name} is not a CA (basicConstraints)")
        if bc.path_length is not None and cas_below > bc.path_length:
            raise VerificationFailed(
                f"certificate chain: {name} pathLenConstraint {bc.path_length} "
                f"exceeded ({cas_below} CA certificates follow)"
            )
        if ku is not None and not ku.key_cert_sign:
            raise VerificationFailed(f"certificate chain: {name} keyUsage lacks keyCertSign")
    else:
        if bc is not None and bc.ca:
            raise VerificationFailed("certificate chain: leaf certificate is a CA")
        if ku is not None and not ku.digital_signature:
            raise VerificationFailed("certificate chain: leaf certificate keyUsage lacks digitalSignature")


def check_validity(cert, name: str, at: datetime) -> None:
    if not not_before(cert) <= at <= not_after(cert):
        raise VerificationFailed(
            f"certificate chain: {name} is not valid at {at.isoformat()} "
            f"(valid {not_before(cert).isoformat()} .. {not_after(cert).isoformat()})"
        )


def verify_issued_by(cert, issuer, name: str, issuer_name: str) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception as exc:  # noqa: BLE001 - name mismatch or bad signature
        raise VerificationFailed(
            f"certificate chain broken: {name} is not issued by {issuer_name} "
            f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})"
        ) from None


def validate_path(
    path: Sequence,
    names: Sequence[str],
    at: datetime,
    *,
    key_check: Optional[Callable] = check_ec_nist_key,
    signature_algorithms=None,
    check_ca_constraints: bool = True,
) -> None:
    """``path[0]`` is the pinned root, ``path[-1]`` the leaf (parsed certificates).

    Checks every validity window at ``at``, the CA/leaf constraints, each key
    (``key_check``), each signature algorithm and each signature.
    """
    try:
        n_cas = len(path) - 1
        for i, cert in enumerate(path):
            check_validity(cert, names[i], at)
            if check_ca_constraints:
                check_extensions(cert, names[i], is_ca=i < n_cas, cas_below=n_cas - 1 - i)
            if key_check is not None:
                key_check(cert, names[i])
        for i in range(1, len(path)):
            check_signature_algorithm(path[i], names[i], signature_algorithms)
            verify_issued_by(path[i], path[i - 1], names[i], names[i - 1])
    except AttestError:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile DER can raise many types
        raise VerificationFailed(f"certificate chain: {type(exc).__name__}: {exc}") from None
