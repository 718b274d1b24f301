"""The SEV-SNP wire document (transport.md 5.6), all lengths u32 LE:

    "SEV_SNP_V1\\0\\0" (12) | report_size | report (1184) | chain_size | DER certs

cmlp rejects bytes after the chain (the reference ignores them; its
provider never writes any), so the hashed document is exactly what was parsed.
"""

from __future__ import annotations

import struct
from typing import Tuple

from cmlp.attestation.coded import fail
from cmlp.attestation.snp.report import REPORT_SIZE
from cmlp.errors import VerificationFailed

MARKER = b"SEV_SNP_V1\x00\x00"
MAX_DOCUMENT_SIZE = 65536


def encode_document(report: bytes, chain_der: bytes) -> bytes:
    report, chain_der = bytes(report), bytes(chain_der)
    return b"".join(
        (MARKER, struct.pack("<I", len(report)), report, struct.pack("<I", len(chain_der)), chain_der)
    )


def read_lv(raw: bytes, pos: int, what: str, kind: str) -> Tuple[bytes, int]:
    """u32 LE length + bytes at ``pos``; truncation -> ``<kind>_DOCUMENT_TRUNCATED``."""
    if len(raw) - pos < 4:
        raise fail(
            f"{kind}_DOCUMENT_TRUNCATED",
            f"truncated {kind_name(kind)} document (no {what} length at offset {pos})",
        )
    (size,) = struct.unpack_from("<I", raw, pos)
    pos += 4
    if size > len(raw) - pos:
        raise fail(
            f"{kind}_DOCUMENT_TRUNCATED",
            f"truncated {kind_name(kind)} document ({what} claims {size} bytes, {len(raw) - pos} left)",
        )
    return raw[pos : pos + size], pos + size


def kind_name(kind: str) -> str:
    return {"SNP": "SEV-SNP", "AZSNP": "Azure SEV-SNP", "TDX": "TDX"}.get(kind, kind)


def decode_document(raw: bytes) -> Tuple[bytes, bytes]:
    """-> (report, chain DER stream)."""
    raw = bytes(raw)
    if len(raw) > MAX_DOCUMENT_SIZE:
        raise fail(
            "SNP_DOCUMENT_TOO_LARGE", f"SEV-SNP document is {len(raw)} bytes (max {MAX_DOCUMENT_SIZE})"
        )
    if raw[: len(MARKER)] != MARKER:
        raise fail("SNP_NOT_SNP_DOCUMENT", "not a SEV-SNP attestation document")
    report, pos = read_lv(raw, len(MARKER), "report", "SNP")
    if len(report) != REPORT_SIZE:
        raise fail(
            "SNP_REPORT_SIZE_INVALID",
            f"attestation report is {len(report)} bytes (must be exactly {REPORT_SIZE})",
        )
    chain, pos = read_lv(raw, pos, "certificate chain", "SNP")
    if pos != len(raw):
        raise fail("SNP_DOCUMENT_TRAILING_DATA", f"{len(raw) - pos} bytes after the certificate chain")
    return report, chain


def document_from_vendor_files(report: bytes, vek_der: bytes) -> bytes:
    """A raw report plus its VCEK/VLEK DER (as AMD KDS and public repositories ship
    them) -> a wire document whose chain adds the built-in ASK/ASVK and ARK for the
    VEK's product.  The result is verified like any other document."""
    from cmlp.attestation.snp import certs as C

    report, vek_der = bytes(report), bytes(vek_der)
    try:
        vek = C.load_certificate(vek_der)
        kind = C.common_name(vek)[4:]
        product = C.product_from_name(C.vek_extensions(vek, kind).product_name)
    except VerificationFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile DER can raise many types
        raise fail("SNP_CERT_CHAIN_MALFORMED", f"VCEK/VLEK does not parse: {exc}") from None
    if product is None or kind not in ("VCEK", "VLEK"):
        raise fail("SNP_PRODUCT_UNKNOWN", "cannot tell the AMD product of this VCEK/VLEK")
    from cryptography.hazmat.primitives import serialization

    roots = C.bundled_roots()
    inter = C.intermediate_for(product, kind)
    chain = (
        b"".join(c.public_bytes(serialization.Encoding.DER) for c in (roots.ark[product], inter)) + vek_der
    )
    return encode_document(report, chain)
