"""The Azure SEV-SNP wire document (transport.md 5.7), lengths u32 LE:

    "AZ_SNP_V1\\0\\0\\0" (12) | hcl_size | HCL report | cert_size | PEM text

The PEM text is the VCEK, then the IMDS ``certificateChain`` (ASK + ARK).
Bytes after the chain are rejected (cmlp is stricter than the reference).
"""

from __future__ import annotations

import struct
import warnings
from typing import List, Tuple

from cmlp.attestation.coded import fail
from cmlp.attestation.snp.document import read_lv

MARKER = b"AZ_SNP_V1\x00\x00\x00"
MAX_DOCUMENT_SIZE = 65536
MAX_PEM_CERTS = 8


def encode_document(hcl: bytes, pem_chain: bytes) -> bytes:
    hcl, pem_chain = bytes(hcl), bytes(pem_chain)
    return b"".join((MARKER, struct.pack("<I", len(hcl)), hcl, struct.pack("<I", len(pem_chain)), pem_chain))


def decode_document(raw: bytes) -> Tuple[bytes, bytes]:
    raw = bytes(raw)
    if len(raw) > MAX_DOCUMENT_SIZE:
        raise fail(
            "AZSNP_DOCUMENT_TOO_LARGE",
            f"Azure SEV-SNP document is {len(raw)} bytes (max {MAX_DOCUMENT_SIZE})",
        )
    if raw[: len(MARKER)] != MARKER:
        raise fail("AZSNP_NOT_AZSNP_DOCUMENT", "not an Azure SEV-SNP attestation document")
    hcl, pos = read_lv(raw, len(MARKER), "HCL report", "AZSNP")
    chain, pos = read_lv(raw, pos, "certificate chain", "AZSNP")
    if pos != len(raw):
        raise fail("AZSNP_DOCUMENT_TRAILING_DATA", f"{len(raw) - pos} bytes after the certificate chain")
    return hcl, chain


def pem_to_der_list(pem: bytes) -> List[bytes]:
    """PEM certificates -> DER list (SNP_CERT_CHAIN_EMPTY / _MALFORMED)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if not pem.strip():
        raise fail("SNP_CERT_CHAIN_EMPTY", "certificate chain is empty")
    try:
        with warnings.catch_warnings():  # AMD VCEKs carry serial 0
            warnings.simplefilter("ignore")
            certs = x509.load_pem_x509_certificates(bytes(pem))
    except ValueError as exc:
        raise fail("SNP_CERT_CHAIN_MALFORMED", f"PEM chain does not parse: {exc}") from None
    if len(certs) > MAX_PEM_CERTS:
        raise fail("SNP_CERT_CHAIN_MALFORMED", f"more than {MAX_PEM_CERTS} certificates")
    return [c.public_bytes(serialization.Encoding.DER) for c in certs]
