"""AMD SEV-SNP attestation (transport.md 5.6): report parsing (v2, v3, v5),
VCEK/VLEK chains to the built-in AMD roots, TCB binding, CRL, policy."""

from cmlp.attestation.snp.document import MARKER, decode_document, encode_document
from cmlp.attestation.snp.policy import SnpVerifyPolicy
from cmlp.attestation.snp.report import REPORT_SIZE, SnpReport, parse_report
from cmlp.attestation.snp.verifier import PLATFORM, SnpVerifier

__all__ = [
    "MARKER",
    "decode_document",
    "encode_document",
    "SnpVerifyPolicy",
    "REPORT_SIZE",
    "SnpReport",
    "parse_report",
    "PLATFORM",
    "SnpVerifier",
]
