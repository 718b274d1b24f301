"""Azure evidence as published (trustee ``az-snp-vtpm`` JSON, raw HCL + VCEK files)
-> the AZ_SNP_V1 wire document.  Only the HCL report and the VCEK are taken;
the ASK and ARK always come from the built-in AMD set (never from the file)."""

from __future__ import annotations

import base64
import json

from cmlp.attestation.az_snp.document import encode_document, pem_to_der_list
from cmlp.attestation.coded import fail
from cmlp.attestation.snp import certs as C
from cmlp.errors import VerificationFailed


def _b64(text: str) -> bytes:
    text = text.strip()
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise fail("AZSNP_EVIDENCE_INVALID", "base64url field does not decode") from None


def _vcek_der(vcek: bytes) -> bytes:
    """The VCEK from a DER file, a PEM file or a VCEK+ASK+ARK PEM bundle."""
    if vcek.lstrip().startswith(b"-----BEGIN"):
        for der in pem_to_der_list(vcek):
            try:
                cn = C.common_name(C.load_certificate(der))
            except Exception:  # noqa: BLE001 - hostile DER
                continue
            if cn == "SEV-VCEK":
                return der
        raise fail("SNP_CERT_TYPE_MISSING", "no SEV-VCEK certificate in the PEM file")
    return vcek


def document_from_files(hcl: bytes, vcek: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    vek_der = _vcek_der(bytes(vcek))
    try:
        vek = C.load_certificate(vek_der)
        product = C.product_from_name(C.vek_extensions(vek, "VCEK").product_name)
    except VerificationFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile DER can raise many types
        raise fail("SNP_CERT_CHAIN_MALFORMED", f"VCEK does not parse: {exc}") from None
    if product is None:
        raise fail("SNP_PRODUCT_UNKNOWN", "cannot tell the AMD product of this VCEK")
    roots = C.bundled_roots()
    pem = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (vek, roots.ask[product], roots.ark[product])
    )
    return encode_document(hcl, pem)


def document_from_evidence_json(data: bytes) -> bytes:
    """trustee evidence: v0 (``report`` as an integer array, ``vcek`` PEM) or
    v1/v2 (``hcl_report`` and ``vcek`` base64url)."""
    try:
        obj = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise fail("AZSNP_EVIDENCE_INVALID", "evidence is not UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise fail("AZSNP_EVIDENCE_INVALID", "evidence is not a JSON object")
    if isinstance(obj.get("report"), list):
        values = obj["report"]
        if not all(type(v) is int and 0 <= v <= 255 for v in values):
            raise fail("AZSNP_EVIDENCE_INVALID", "report is not a byte array")
        hcl = bytes(values)
    elif isinstance(obj.get("hcl_report"), str):
        hcl = _b64(obj["hcl_report"])
    else:
        raise fail("AZSNP_EVIDENCE_INVALID", "no report / hcl_report field")
    vcek = obj.get("vcek")
    if not isinstance(vcek, str):
        raise fail("AZSNP_EVIDENCE_INVALID", "no vcek field")
    vcek_bytes = vcek.encode() if "-----BEGIN" in vcek else _b64(vcek)
    return document_from_files(hcl, vcek_bytes)
