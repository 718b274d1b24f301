"""Azure SEV-SNP (vTPM / HCL) verifier (transport.md 5.7).

Steps: wire document; HCL report (type must be SNP, hash type SHA-256); the
SNP report = HCL bytes [32 .. 32+1184]; the SNP invariants (5.6 step 2);
**REPORT_DATA[0..32] == SHA-256(VarData)** and REPORT_DATA[32..64] zero;
pk / nonce from VarData ``user-data`` (hex, >= 64 bytes: pk = [0..32],
nonce = [32..64], all-zero -> None); then the PEM chain and 5.6 steps 4-12
with the same policy.  Codes: AZSNP_* for the wrapper, HCL and binding;
SNP_* for everything shared with 5.6.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Callable, Iterable, Optional

from cmlp.attestation.az_snp.document import decode_document, pem_to_der_list
from cmlp.attestation.az_snp.hcl import HASH_TYPE_SHA256, REPORT_TYPE_SNP, parse_hcl
from cmlp.attestation.base import VerifiedAttestation, document_hash
from cmlp.attestation.clock import check_at_ms, ms_to_datetime, now_ms
from cmlp.attestation.coded import fail
from cmlp.attestation.pki import require_cryptography
from cmlp.attestation.snp import certs as C
from cmlp.attestation.snp.policy import SnpVerifyPolicy
from cmlp.attestation.snp.report import parse_report
from cmlp.attestation.snp.verifier import (
    _guard,
    check_invariants,
    check_report_and_chain,
    result_details,
    split_binding,
)

PLATFORM = "az-sev-snp"


class AzSnpVerifier:
    platform = PLATFORM

    def __init__(
        self,
        policy: Optional[SnpVerifyPolicy] = None,
        *,
        trusted_arks: Optional[Iterable] = None,
        clock: Optional[Callable[[], int]] = None,
        at_ms: Optional[int] = None,
    ):
        require_cryptography("Azure SEV-SNP attestation", "snp")
        self.policy = policy or SnpVerifyPolicy.production()
        self.trusted_arks = (
            tuple(trusted_arks) if trusted_arks is not None else tuple(C.bundled_roots().ark.values())
        )
        self.clock = clock
        self.at_ms = check_at_ms(at_ms)

    def verify(self, document: bytes) -> VerifiedAttestation:
        raw = bytes(document)
        now = now_ms(self.at_ms, self.clock)
        hcl_bytes, pem = decode_document(raw)
        hcl = parse_hcl(hcl_bytes)
        if hcl.report_type != REPORT_TYPE_SNP:
            raise fail("AZSNP_NOT_SNP_REPORT", f"HCL report type {hcl.report_type} (2 = SNP, 4 = TDX)")
        if hcl.hash_type != HASH_TYPE_SHA256:
            raise fail("AZSNP_HASH_TYPE_UNSUPPORTED", f"HCL hash type {hcl.hash_type} (1 = SHA-256)")
        report = parse_report(hcl.hw_report)
        check_invariants(report, self.policy)
        digest = hashlib.sha256(hcl.var_data).digest()
        if not hmac.compare_digest(report.report_data[:32], digest):
            raise fail("AZSNP_VARDATA_BINDING_MISMATCH", "REPORT_DATA[0..32] != SHA-256(VarData)")
        if any(report.report_data[32:]):
            raise fail("AZSNP_VARDATA_BINDING_MISMATCH", "REPORT_DATA[32..64] is not zero")
        user_data = hcl.user_data()
        pk = nonce = None
        if user_data is not None and len(user_data) >= 64:
            pk, nonce = split_binding(user_data[:64])
        certs_der = _guard(lambda: pem_to_der_list(pem))
        if len(certs_der) < 3:
            raise fail(
                "SNP_CERT_TYPE_MISSING", f"certificate chain holds {len(certs_der)} certificates (3 needed)"
            )
        res = _guard(
            lambda: check_report_and_chain(
                report, certs_der, self.policy, ms_to_datetime(now), self.trusted_arks
            )
        )
        details = result_details(res, now)
        details.update(hcl_version=hcl.version, var_data_sha256=digest.hex())
        return VerifiedAttestation(
            document_hash=document_hash(raw),
            public_key=pk,
            user_data=user_data,
            nonce=nonce,
            measurements={0: report.measurement},
            platform=PLATFORM,
            details=details,
        )
