"""Nitro certificate chain (transport.md section 5.5 step 8).

``cabundle`` must be in the documented order: root first (byte-equal to the
pinned AWS Nitro root G1), each entry issued by the previous one, the leaf by
the last; no path building, no unused certificates.  The path checks
themselves are the shared ones in :mod:`cmlp.attestation.pki` (EC keys on
NIST curves, ECDSA-SHA2 signatures, CA constraints, validity at ``at``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from cmlp.attestation.pki import (
    PinnedRoot,
    load_der,
    load_root,
    require_cryptography,
    validate_path,
)
from cmlp.errors import AttestError, VerificationFailed

# AWS Nitro Enclaves root G1 (bundled as package data, pinned by fingerprint).
AWS_NITRO_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
AWS_NITRO_ROOT_RESOURCE = "aws_nitro_root_g1.pem"


def load_bundled_root(expected_sha256: Optional[str] = None) -> PinnedRoot:
    """The AWS Nitro root G1 shipped in cmlp/data, checked against its fingerprint.

    The default fingerprint is read from the package namespace at call time,
    so ``cmlp.attestation.nitro.AWS_NITRO_ROOT_G1_SHA256`` is the one pin.
    """
    require_cryptography()
    if expected_sha256 is None:
        from cmlp.attestation import nitro as package

        expected_sha256 = package.AWS_NITRO_ROOT_G1_SHA256
    from importlib.resources import files

    pem = files("cmlp").joinpath("data").joinpath(AWS_NITRO_ROOT_RESOURCE).read_bytes()
    return load_root(pem, expected_sha256)


def validate_chain(leaf_der: bytes, cabundle, root: PinnedRoot, at: datetime):
    """Validate leaf <- cabundle[-1] <- ... <- cabundle[1] <- cabundle[0] == root.

    Returns the leaf certificate.  Raises VerificationFailed.
    """
    if not cabundle:
        raise VerificationFailed("certificate chain is empty (cabundle has no root)")
    if bytes(cabundle[0]) != root.der:
        raise VerificationFailed("cabundle root does not match pinned AWS Nitro root CA")
    try:
        names = ["root"] + [f"cabundle[{i}]" for i in range(1, len(cabundle))] + ["leaf"]
        path = [root.cert]
        for i, der in enumerate(cabundle[1:], start=1):
            path.append(load_der(der, f"cabundle[{i}]"))
        leaf = load_der(leaf_der, "leaf certificate")
        path.append(leaf)
        validate_path(path, names, at)
        if leaf.subject == leaf.issuer:
            raise VerificationFailed("certificate chain: leaf certificate is self-issued")
        return leaf
    except AttestError:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile DER can raise many types
        raise VerificationFailed(f"certificate chain: {type(exc).__name__}: {exc}") from None
