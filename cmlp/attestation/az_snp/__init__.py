"""Azure SEV-SNP confidential VMs (vTPM / HCL report), transport.md 5.7."""

from cmlp.attestation.az_snp.document import MARKER, decode_document, encode_document
from cmlp.attestation.az_snp.hcl import HclReport, parse_hcl
from cmlp.attestation.az_snp.verifier import PLATFORM, AzSnpVerifier

__all__ = [
    "MARKER",
    "decode_document",
    "encode_document",
    "HclReport",
    "parse_hcl",
    "PLATFORM",
    "AzSnpVerifier",
]
