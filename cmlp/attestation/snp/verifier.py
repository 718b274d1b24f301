"""AMD SEV-SNP verifier (transport.md 5.6), steps in the reference's order:

 1. wire document; the 1184-byte report            SNP_NOT_SNP_DOCUMENT, SNP_DOCUMENT_*,
                                                   SNP_REPORT_SIZE_INVALID, SNP_REPORT_VERSION_*
 2. invariants: version >= min, sig_algo == 1,     SNP_REPORT_VERSION_TOO_OLD,
    MASK_CHIP_KEY == 0, signing key VCEK/VLEK      SNP_UNSUPPORTED_SIGNATURE_ALGO,
                                                   SNP_MASK_CHIP_KEY_ENABLED, SNP_SIGNING_KEY_*
 3. chain split (DER stream), >= 3 certificates    SNP_CERT_CHAIN_EMPTY/_MALFORMED
 4. roles by CN: ARK-*, SEV-VCEK/SEV-VLEK, SEV-*   SNP_CERT_TYPE_MISSING/_DUPLICATE/_UNKNOWN
 5. validity of ARK, ASK, VEK at "now"             SNP_{ARK,ASK,VEK}_EXPIRED / _NOT_YET_VALID
 6. VEK extensions (SPLs, productName, hwID)       SNP_VEK_EXTENSION_MISSING/_INVALID
 7. signatures ARK->ARK, ARK->ASK, ASK->VEK (RSA-  SNP_{ARK,ASK,VEK}_SIG_INVALID,
    PSS/SHA-384), VEK->report (ECDSA P-384)        SNP_VEK_KEY_INVALID, SNP_REPORT_SIG_INVALID
 8. ARK key == a built-in AMD ARK                  SNP_ARK_NOT_KNOWN
 9. TCB binding: VEK SPLs == REPORTED_TCB, hwID    SNP_TCB_{BOOTLOADER,TEE,SNP,MICROCODE,FMC}
    == CHIP_ID prefix                              _MISMATCH, SNP_CHIP_ID_MISMATCH
10. optional CRL signed by the ARK                 SNP_CRL_*, SNP_VEK_REVOKED, SNP_ASK_REVOKED
11. policy                                         SNP_HOST_REQUESTED_REPORT_REJECTED,
                                                   SNP_VMPL_MISMATCH, SNP_DEBUG_GUEST_REJECTED,
                                                   SNP_MIGRATABLE_GUEST_REJECTED,
                                                   SNP_SMT_MISMATCH, SNP_SINGLE_SOCKET_MISMATCH,
                                                   SNP_PRODUCT_MISMATCH, SNP_PRODUCT_UNKNOWN
12. pk/nonce from REPORT_DATA, {0: MEASUREMENT}    SNP_MEASUREMENT_MISMATCH

Stricter than the reference: the report's KEY_INFO.SIGNING_KEY must name the
certificate kind that signed it (SNP_VEK_KIND_MISMATCH); the VEK-reported
product (productName) must agree with the report's CPUID product when the
report carries one; the ASK is checked against the CRL too.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterable, List, Optional, Tuple, cast

from cmlp.attestation.base import VerifiedAttestation, document_hash
from cmlp.attestation.clock import check_at_ms, ms_to_datetime, now_ms
from cmlp.attestation.coded import CodedVerificationFailed, fail
from cmlp.attestation.pki import not_after, not_before, require_cryptography
from cmlp.attestation.snp import certs as C
from cmlp.attestation.snp.document import decode_document
from cmlp.attestation.snp.policy import SnpVerifyPolicy
from cmlp.attestation.snp.report import (
    POLICY_DEBUG,
    POLICY_MIGRATE_MA,
    POLICY_SINGLE_SOCKET,
    POLICY_SMT,
    PRODUCTS,
    SIG_ALGO_ECDSA_P384_SHA384,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    TURIN,
    VMPL_HOST_REQUESTED,
    SnpReport,
    parse_report,
)

PLATFORM = "sev-snp"


def split_binding(report_data: bytes):
    """REPORT_DATA[0..32] = pk, [32..64] = nonce; an all-zero slice is None."""
    pk, nonce = report_data[:32], report_data[32:64]
    return (pk if any(pk) else None), (nonce if any(nonce) else None)


@dataclass(frozen=True)
class SnpCheckResult:
    report: SnpReport
    product: str
    vek_kind: str
    vek: object
    extensions: C.VekExtensions


def check_invariants(report: SnpReport, policy: SnpVerifyPolicy) -> None:
    if report.version < policy.min_report_version:
        raise fail(
            "SNP_REPORT_VERSION_TOO_OLD",
            f"report version {report.version} < minimum {policy.min_report_version}",
        )
    if report.sig_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise fail(
            "SNP_UNSUPPORTED_SIGNATURE_ALGO",
            f"signature algorithm {report.sig_algo} (only 1 = ECDSA P-384/SHA-384)",
        )
    if report.mask_chip_key:
        raise fail("SNP_MASK_CHIP_KEY_ENABLED", "KEY_INFO.MASK_CHIP_KEY is set: the report is not signed")
    if report.signing_key not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK):
        raise fail(
            "SNP_SIGNING_KEY_UNSUPPORTED", f"KEY_INFO.SIGNING_KEY = {report.signing_key} (0 = VCEK, 1 = VLEK)"
        )


def _window(cert, role: str, at: datetime) -> None:
    if at < not_before(cert):
        raise fail(
            f"SNP_{role}_NOT_YET_VALID",
            f"{role} is valid from {not_before(cert).isoformat()}, now {at.isoformat()}",
        )
    if at > not_after(cert):
        raise fail(
            f"SNP_{role}_EXPIRED", f"{role} expired {not_after(cert).isoformat()}, now {at.isoformat()}"
        )


def _issued_by(cert, issuer, role: str) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception as exc:  # noqa: BLE001 - name mismatch, bad signature, odd algorithm
        raise fail(
            f"SNP_{role}_SIG_INVALID",
            f"{role} certificate signature does not verify "
            f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})",
        ) from None


def verify_report_signature(report: SnpReport, vek) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    key = vek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise fail("SNP_VEK_KEY_INVALID", "VCEK/VLEK key is not EC P-384")
    r, s = report.signature_rs
    if not (0 < r < 1 << 384 and 0 < s < 1 << 384):
        raise fail("SNP_REPORT_SIG_INVALID", "report signature r/s out of range")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise fail("SNP_REPORT_SIG_INVALID", "report signature does not verify with the VCEK/VLEK") from None


def _check_crl(crl_der: bytes, chain: C.AmdChain, at: datetime) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

    try:
        crl = x509.load_der_x509_crl(bytes(crl_der))
    except ValueError as exc:
        raise fail("SNP_CRL_MALFORMED", f"CRL does not parse: {exc}") from None
    if crl.issuer != chain.ark.subject:
        raise fail("SNP_CRL_ISSUER_MISMATCH", "CRL issuer is not the ARK")
    try:
        # a key type that cannot issue (X25519, ...) raises TypeError: caught as invalid
        ok = crl.is_signature_valid(cast(CertificateIssuerPublicKeyTypes, chain.ark.public_key()))
    except Exception:  # noqa: BLE001 - unsupported algorithm = invalid here
        ok = False
    if not ok:
        raise fail("SNP_CRL_SIG_INVALID", "CRL signature does not verify with the ARK")
    last = getattr(crl, "last_update_utc", None) or crl.last_update.replace(tzinfo=at.tzinfo)
    nxt = getattr(crl, "next_update_utc", None)
    if nxt is None and crl.next_update is not None:
        nxt = crl.next_update.replace(tzinfo=at.tzinfo)
    if last > at:
        raise fail("SNP_CRL_NOT_YET_VALID", f"CRL lastUpdate {last.isoformat()} is in the future")
    if nxt is None or nxt < at:
        raise fail("SNP_CRL_EXPIRED", f"CRL nextUpdate {nxt} has passed (now {at.isoformat()})")
    for cert, role in ((chain.vek, "VEK"), (chain.ask, "ASK")):
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise fail(f"SNP_{role}_REVOKED", f"{role} serial {cert.serial_number} is revoked")


def check_report_and_chain(
    report: SnpReport, certs_der: List[bytes], policy: SnpVerifyPolicy, at: datetime, trusted_arks: Iterable
) -> SnpCheckResult:
    """Steps 2-11 for a parsed report and its chain (shared with Azure SNP)."""
    check_invariants(report, policy)  # 2
    chain = C.classify(certs_der)  # 3-4
    for cert, role in ((chain.ark, "ARK"), (chain.ask, "ASK"), (chain.vek, "VEK")):  # 5
        _window(cert, role, at)
    ext = C.vek_extensions(chain.vek, chain.vek_kind)  # 6
    _issued_by(chain.ark, chain.ark, "ARK")  # 7
    _issued_by(chain.ask, chain.ark, "ASK")
    _issued_by(chain.vek, chain.ask, "VEK")
    verify_report_signature(report, chain.vek)
    ark_spki = C.spki_der(chain.ark)  # 8
    if not any(hmac.compare_digest(ark_spki, C.spki_der(a)) for a in trusted_arks):
        raise fail("SNP_ARK_NOT_KNOWN", "ARK key is not a built-in AMD Milan, Genoa or Turin ARK")
    want_kind = "VLEK" if report.signing_key == SIGNING_KEY_VLEK else "VCEK"
    if chain.vek_kind != want_kind:
        raise fail(
            "SNP_VEK_KIND_MISMATCH",
            f"report KEY_INFO names a {want_kind}, the chain carries a {chain.vek_kind}",
        )

    name_product = C.product_from_name(ext.product_name)
    cpu_product = report.cpuid_product
    if cpu_product is not None and name_product is not None and cpu_product != name_product:
        raise fail(
            "SNP_PRODUCT_MISMATCH",
            f"report CPUID says {cpu_product}, {chain.vek_kind} productName says {ext.product_name}",
        )
    product = cpu_product or name_product
    if product is None:
        raise fail(
            "SNP_PRODUCT_UNKNOWN",
            f"cannot tell the product (CPUID {report.cpuid_fam:#x}/{report.cpuid_mod:#x}, "
            f"productName {ext.product_name!r})",
        )

    if policy.check_tcb_binding:  # 9
        tcb = report.reported_tcb(product)
        pairs: List[Tuple[str, int, Optional[int]]] = [
            ("BOOTLOADER", ext.bl_spl, tcb.bootloader),
            ("TEE", ext.tee_spl, tcb.tee),
            ("SNP", ext.snp_spl, tcb.snp),
            ("MICROCODE", ext.ucode_spl, tcb.microcode),
        ]
        if product == TURIN and ext.fmc_spl is not None:
            pairs.append(("FMC", ext.fmc_spl, tcb.fmc))
        for name, cert_value, report_value in pairs:
            if cert_value != report_value:
                raise fail(
                    f"SNP_TCB_{name}_MISMATCH",
                    f"{chain.vek_kind} {name.lower()} SPL {cert_value} != REPORTED_TCB {report_value}",
                )
        if (
            ext.hwid is not None
            and any(report.chip_id)
            and not hmac.compare_digest(ext.hwid, report.chip_id[: len(ext.hwid)])
        ):
            raise fail("SNP_CHIP_ID_MISMATCH", "VCEK hwID does not match the report CHIP_ID")

    if policy.crl_der is not None:  # 10
        _check_crl(policy.crl_der, chain, at)

    if report.vmpl == VMPL_HOST_REQUESTED:  # 11
        raise fail(
            "SNP_HOST_REQUESTED_REPORT_REJECTED",
            "VMPL 0xFFFFFFFF: the report was requested by the host, not the guest",
        )
    if policy.require_vmpl is not None and report.vmpl != policy.require_vmpl:
        raise fail("SNP_VMPL_MISMATCH", f"VMPL {report.vmpl}, policy requires {policy.require_vmpl}")
    if policy.reject_debug and report.policy & POLICY_DEBUG:
        raise fail("SNP_DEBUG_GUEST_REJECTED", "guest POLICY.DEBUG is set")
    if policy.reject_migratable and report.policy & POLICY_MIGRATE_MA:
        raise fail("SNP_MIGRATABLE_GUEST_REJECTED", "guest POLICY.MIGRATE_MA is set")
    if policy.require_smt is not None and bool(report.policy & POLICY_SMT) != policy.require_smt:
        raise fail(
            "SNP_SMT_MISMATCH",
            f"POLICY.SMT is {bool(report.policy & POLICY_SMT)}, policy requires {policy.require_smt}",
        )
    if (
        policy.require_single_socket is not None
        and bool(report.policy & POLICY_SINGLE_SOCKET) != policy.require_single_socket
    ):
        raise fail(
            "SNP_SINGLE_SOCKET_MISMATCH",
            f"POLICY.SINGLE_SOCKET is {bool(report.policy & POLICY_SINGLE_SOCKET)}",
        )
    ark_product = _bundled_ark_product(ark_spki)
    if ark_product is not None and ark_product != product:
        raise fail(
            "SNP_PRODUCT_MISMATCH", f"the chain ends in the {ark_product} ARK, the report is from a {product}"
        )
    if set(policy.accepted_products) != set(PRODUCTS) and product not in policy.accepted_products:
        raise fail("SNP_PRODUCT_MISMATCH", f"{product} is not an accepted product")
    if policy.expected_measurement is not None and not hmac.compare_digest(
        report.measurement, policy.expected_measurement
    ):
        raise fail(
            "SNP_MEASUREMENT_MISMATCH",
            f"MEASUREMENT {report.measurement.hex()} != expected {policy.expected_measurement.hex()}",
        )
    return SnpCheckResult(report, product, chain.vek_kind, chain.vek, ext)


def _bundled_ark_product(spki: bytes) -> Optional[str]:
    """Which built-in ARK this key is (None for an ARK trusted by a test PKI)."""
    for product, ark in C.bundled_roots().ark.items():
        if hmac.compare_digest(spki, C.spki_der(ark)):
            return product
    return None


def result_details(res: SnpCheckResult, now: int) -> dict:
    r = res.report
    return {
        "product": res.product,
        "report_version": r.version,
        "signing_key": res.vek_kind,
        "vmpl": r.vmpl,
        "policy": r.policy,
        "guest_svn": r.guest_svn,
        "reported_tcb": r.reported_tcb_raw.hex(),
        "chip_id": r.chip_id.hex(),
        "host_data": r.host_data.hex(),
        "report_data": r.report_data.hex(),
        "verified_at_ms": now,
        "product_name": res.extensions.product_name,
        "csp_id": res.extensions.csp_id,
    }


class SnpVerifier:
    """Verifies ``SEV_SNP_V1`` documents.

    ``policy`` defaults to production.  ``trusted_arks``: ARK certificates to
    accept (default: the built-in AMD Milan, Genoa and Turin ARKs; tests pass
    their own).  ``at_ms`` / ``clock``: the verification instant.
    """

    platform = PLATFORM

    def __init__(
        self,
        policy: Optional[SnpVerifyPolicy] = None,
        *,
        trusted_arks: Optional[Iterable] = None,
        clock: Optional[Callable[[], int]] = None,
        at_ms: Optional[int] = None,
    ):
        require_cryptography("SEV-SNP attestation", "snp")
        self.policy = policy or SnpVerifyPolicy.production()
        self.trusted_arks = (
            tuple(trusted_arks) if trusted_arks is not None else tuple(C.bundled_roots().ark.values())
        )
        self.clock = clock
        self.at_ms = check_at_ms(at_ms)

    def verify(self, document: bytes) -> VerifiedAttestation:
        raw = bytes(document)
        now = now_ms(self.at_ms, self.clock)
        report_bytes, chain = decode_document(raw)  # 1
        report = parse_report(report_bytes)
        certs_der = C.split_der_stream(chain)  # 3
        res = _guard(
            lambda: check_report_and_chain(
                report, certs_der, self.policy, ms_to_datetime(now), self.trusted_arks
            )
        )
        pk, nonce = split_binding(report.report_data)  # 12
        return VerifiedAttestation(
            document_hash=document_hash(raw),
            public_key=pk,
            user_data=None,
            nonce=nonce,
            measurements={0: report.measurement},
            platform=PLATFORM,
            details=result_details(res, now),
        )


def _guard(fn):
    """Coded errors pass through; anything else from hostile input becomes a coded one."""
    try:
        return fn()
    except CodedVerificationFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile DER can raise many types
        raise fail("SNP_CERT_CHAIN_MALFORMED", f"{type(exc).__name__}: {exc}") from None
