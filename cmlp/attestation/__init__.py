"""Attestation providers and verifiers (transport.md section 5)."""

from cmlp.attestation.base import (
    AttestationProvider,
    AttestationVerifier,
    ExpectedMeasurements,
    VerifiedAttestation,
    document_hash,
)
from cmlp.attestation.mock import (
    MockProvider,
    MockVerifier,
    MockVerifierWithMeasurements,
    decode_mock_document,
    encode_mock_document,
)

__all__ = [
    "AttestationProvider",
    "AttestationVerifier",
    "ExpectedMeasurements",
    "VerifiedAttestation",
    "document_hash",
    "MockProvider",
    "MockVerifier",
    "MockVerifierWithMeasurements",
    "decode_mock_document",
    "encode_mock_document",
]
