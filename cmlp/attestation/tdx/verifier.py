"""Intel TDX quote verifier (transport.md 5.8), steps in the reference's order:

1. wire document; quote header/body/signature section   TDX_NOT_TDX_DOCUMENT, TDX_DOCUMENT_*,
                                                        TDX_QUOTE_PARSE_FAILED,
                                                        TDX_QUOTE_UNSUPPORTED_FORMAT
2. quote signature by the embedded attestation key      TDX_QUOTE_SIG_INVALID
3. DCAP collateral (required by cmlp's production policy, else used when given):
   PCK chain from the quote to the pinned Intel SGX Root CA      TDX_PCK_CHAIN_INVALID,
                                                        TDX_COLLATERAL_STALE (expired),
                                                        TDX_COLLATERAL_TIME_INVALID (not yet)
   PCK CRL / Root CA CRL (issuer, signature, window, serial)     TDX_CRL_INVALID, TDX_PCK_REVOKED
   QE report signed by the PCK leaf; QE REPORTDATA = SHA-256(AK || auth data) || 0^32
                                                        TDX_QE_REPORT_SIG_INVALID,
                                                        TDX_REPORTDATA_BINDING_MISMATCH
   TCB Info / QE Identity: TCB Signing cert <- root, ECDSA over the exact inner JSON bytes,
   issueDate <= now <= nextUpdate                       TDX_TCB_INFO_INVALID,
                                                        TDX_QE_IDENTITY_INVALID,
                                                        TDX_COLLATERAL_STALE/_TIME_INVALID,
                                                        TDX_COLLATERAL_MISSING/_INCOMPLETE
   FMSPC (PCK) == TCB Info fmspc                        TDX_FMSPC_MISMATCH
   QE identity: MRSIGNER, ISVPRODID, masked MISCSELECT and ATTRIBUTES, ISVSVN level
   TDX module (mrsignerseam / seam_attributes) against tdxModule or tdxModuleIdentities
   TCB level: SGX components + PCESVN from the PCK, TDX components from TEE_TCB_SVN
4. TCB status: Revoked -> TDX_TCB_REVOKED; else must be accepted, no matching level
   included                                             TDX_TCB_STATUS_UNACCEPTABLE
5. debug TD rejected by default                         TDX_DEBUG_TD_REJECTED
6. pins: MRTD, RTMR0..3, nonce, public key              TDX_MRTD_MISMATCH, TDX_RTMR_MISMATCH,
                                                        TDX_NONCE_MISMATCH,
                                                        TDX_REPORTDATA_BINDING_MISMATCH
7. measurements {0: MRTD, 1..4: RTMR0..3}; pk / nonce = REPORTDATA halves (zero -> None)
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Callable, List, Optional

from cmlp.attestation.base import VerifiedAttestation, document_hash
from cmlp.attestation.clock import check_at_ms, ms_to_datetime, now_ms
from cmlp.attestation.coded import CodedVerificationFailed, fail
from cmlp.attestation.pki import (
    PinnedRoot,
    check_ec_nist_key,
    load_root,
    not_after,
    not_before,
    require_cryptography,
    validate_path,
)
from cmlp.attestation.tdx.collateral import SignedJson, TdxCollateral, parse_time
from cmlp.attestation.tdx.document import decode_document
from cmlp.attestation.tdx.pck import PckTcb, pck_tcb
from cmlp.attestation.tdx.policy import TdxVerifyPolicy
from cmlp.attestation.tdx.quote import Quote, parse_quote
from cmlp.errors import VerificationFailed

PLATFORM = "tdx"
INTEL_ROOT_RESOURCE = "intel_sgx_root_ca.der"
INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
NO_MATCH = "NoMatch"


@lru_cache(maxsize=1)
def bundled_intel_root() -> PinnedRoot:
    require_cryptography("TDX attestation", "tdx")
    from importlib.resources import files

    der = files("cmlp").joinpath("data").joinpath(INTEL_ROOT_RESOURCE).read_bytes()
    return load_root(der, INTEL_SGX_ROOT_CA_SHA256)


def _p256_key(xy: bytes):
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + bytes(xy))


def _ecdsa_ok(key, rs: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    if len(rs) != 64:
        return False
    r, s = int.from_bytes(rs[:32], "big"), int.from_bytes(rs[32:], "big")
    if not (0 < r and 0 < s):
        return False
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


def _window(cert, name: str, at: datetime) -> None:
    if at < not_before(cert):
        raise fail(
            "TDX_COLLATERAL_TIME_INVALID", f"{name} is not valid before {not_before(cert).isoformat()}"
        )
    if at > not_after(cert):
        raise fail("TDX_COLLATERAL_STALE", f"{name} expired {not_after(cert).isoformat()}")


@dataclass(frozen=True)
class DcapResult:
    tcb_status: str
    platform_status: str
    qe_status: str
    fmspc: str
    advisories: tuple


class TdxVerifier:
    """Verifies ``TDX_V1`` documents (or raw quotes via :meth:`verify_quote`).

    ``collateral``: Intel PCS collateral (offline); ``root_der``: trust anchor
    instead of the bundled Intel SGX Root CA (test PKIs only).
    """

    platform = PLATFORM

    def __init__(
        self,
        policy: Optional[TdxVerifyPolicy] = None,
        *,
        collateral: Optional[TdxCollateral] = None,
        root_der: Optional[bytes] = None,
        clock: Optional[Callable[[], int]] = None,
        at_ms: Optional[int] = None,
    ):
        require_cryptography("TDX attestation", "tdx")
        self.policy = policy or TdxVerifyPolicy.production()
        self.collateral = collateral
        self.root = bundled_intel_root() if root_der is None else load_root(root_der)
        self.clock = clock
        self.at_ms = check_at_ms(at_ms)

    def verify(self, document: bytes) -> VerifiedAttestation:
        raw = bytes(document)
        field = decode_document(raw)
        quote = parse_quote(field)
        if any(field[len(quote.raw) :]):
            raise fail(
                "TDX_QUOTE_PARSE_FAILED",
                "non-zero bytes after the quote in the document's quote field (only zero padding is allowed)",
            )
        return self._verify(quote, raw)

    def verify_quote(self, quote_bytes: bytes, *, hash_of: Optional[bytes] = None):
        """A raw quote (trailing bytes after the parsed quote are the caller's business)."""
        quote = parse_quote(quote_bytes)
        return self._verify(quote, hash_of if hash_of is not None else quote.raw)

    # ------------------------------------------------------------------
    def _verify(self, quote: Quote, hashed: bytes) -> VerifiedAttestation:
        now = now_ms(self.at_ms, self.clock)
        at = ms_to_datetime(now)
        try:  # 2
            ak = _p256_key(quote.attestation_key)
        except ValueError:
            raise fail("TDX_QUOTE_SIG_INVALID", "attestation key is not a P-256 point") from None
        if not _ecdsa_ok(ak, quote.signature, quote.signed):
            raise fail("TDX_QUOTE_SIG_INVALID", "quote signature does not verify with the attestation key")
        col = self.collateral  # 3
        dcap = None
        if col is None or col.empty:
            if self.policy.require_collateral:
                raise fail("TDX_COLLATERAL_MISSING", "no PCS collateral (TCB Info, QE Identity)")
        else:
            if self.policy.require_collateral and not (col.tcb_infos and col.qe_identities):
                raise fail("TDX_COLLATERAL_INCOMPLETE", "TCB Info and QE Identity are required")
            dcap = _guard(lambda: self._dcap(quote, col, at))
        if dcap is not None:  # 4
            if dcap.tcb_status == "Revoked":
                raise fail("TDX_TCB_REVOKED", "the platform TCB is revoked")
            if dcap.tcb_status not in self.policy.accepted_tcb_statuses:
                what = (
                    "no TCB level matches the platform (TCB level not supported)"
                    if dcap.tcb_status == NO_MATCH
                    else f"TCB status {dcap.tcb_status}"
                )
                raise fail(
                    "TDX_TCB_STATUS_UNACCEPTABLE",
                    f"{what}; accepted: {sorted(self.policy.accepted_tcb_statuses)}",
                )
        td = quote.td
        if self.policy.reject_debug_td and td.debug:  # 5
            raise fail("TDX_DEBUG_TD_REJECTED", "TDATTRIBUTES.DEBUG is set (debug TD)")
        p = self.policy  # 6
        if p.expected_mrtd is not None and not hmac.compare_digest(td.mrtd, p.expected_mrtd):
            raise fail("TDX_MRTD_MISMATCH", f"MRTD {td.mrtd.hex()} != expected {p.expected_mrtd.hex()}")
        for idx, want in sorted(p.expected_rtmrs.items()):
            if not hmac.compare_digest(td.rtmrs[idx], want):
                raise fail("TDX_RTMR_MISMATCH", f"RTMR{idx} {td.rtmrs[idx].hex()} != expected {want.hex()}")
        pk, nonce = td.reportdata[:32], td.reportdata[32:]
        if p.expected_nonce is not None and not hmac.compare_digest(nonce, p.expected_nonce):
            raise fail("TDX_NONCE_MISMATCH", "REPORTDATA[32..64] is not the expected nonce")
        if p.expected_public_key is not None and not hmac.compare_digest(pk, p.expected_public_key):
            raise fail("TDX_REPORTDATA_BINDING_MISMATCH", "REPORTDATA[0..32] is not the expected public key")
        details = {
            "quote_version": quote.version,
            "body_type": quote.body_type,
            "debug": td.debug,
            "td_attributes": td.td_attributes.hex(),
            "tee_tcb_svn": td.tee_tcb_svn.hex(),
            "mrseam": td.mrseam.hex(),
            "reportdata": td.reportdata.hex(),
            "verified_at_ms": now,
            "quote_bytes": len(quote.raw),
            "tcb_status": dcap.tcb_status if dcap else "not evaluated (no collateral)",
        }
        if dcap:
            details.update(
                platform_tcb_status=dcap.platform_status,
                qe_tcb_status=dcap.qe_status,
                fmspc=dcap.fmspc,
                advisory_ids=list(dcap.advisories),
            )
        return VerifiedAttestation(
            document_hash=document_hash(hashed),
            public_key=pk if any(pk) else None,
            user_data=None,
            nonce=nonce if any(nonce) else None,
            measurements={0: td.mrtd, 1: td.rtmrs[0], 2: td.rtmrs[1], 3: td.rtmrs[2], 4: td.rtmrs[3]},
            platform=PLATFORM,
            details=details,
        )

    # ------------------------------------------------------------------
    def _dcap(self, quote: Quote, col: TdxCollateral, at: datetime) -> DcapResult:
        from cryptography import x509

        # the QE report, its signature and auth data are parsed together (tdx/quote.py)
        if (
            quote.qe_report is None
            or quote.qe_report_signature is None
            or quote.qe_auth_data is None
            or quote.pck_chain_pem is None
        ):
            raise fail("TDX_PCK_CHAIN_INVALID", "the quote carries no QE report / PCK certificate chain")
        try:
            chain = x509.load_pem_x509_certificates(quote.pck_chain_pem.replace(b"\x00", b""))
        except ValueError as exc:
            raise fail("TDX_PCK_CHAIN_INVALID", f"PCK chain PEM does not parse: {exc}") from None
        root = self.root
        from cryptography.hazmat.primitives import serialization

        ders = [c.public_bytes(serialization.Encoding.DER) for c in chain]
        if not 2 <= len(chain) <= 4 or ders[-1] != root.der:
            raise fail("TDX_PCK_CHAIN_INVALID", "PCK chain must be leaf .. CA .. pinned Intel SGX Root CA")
        path = [root.cert] + list(reversed(chain[:-1]))  # root, CA(s), leaf
        names = ["root"] + [f"CA{i}" for i in range(1, len(path) - 1)] + ["PCK leaf"]
        for cert, name in zip(path, names, strict=True):
            _window(cert, f"PCK chain {name}", at)
        try:
            validate_path(path, names, at, key_check=check_ec_nist_key)
        except VerificationFailed as exc:
            raise fail("TDX_PCK_CHAIN_INVALID", exc.detail) from None
        leaf, pck_ca = path[-1], path[-2]
        tcb = pck_tcb(leaf)

        self._check_crls(col, root, pck_ca, leaf, at)

        qe = quote.qe_report  # QE report
        if not _ecdsa_ok(leaf.public_key(), quote.qe_report_signature, qe.raw):
            raise fail(
                "TDX_QE_REPORT_SIG_INVALID", "QE report signature does not verify with the PCK certificate"
            )
        want = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
        if not hmac.compare_digest(qe.reportdata, want):
            raise fail(
                "TDX_REPORTDATA_BINDING_MISMATCH",
                "QE REPORTDATA != SHA-256(attestation key || QE auth data) || 0^32",
            )

        fmspc = tcb.fmspc.hex()
        tcb_infos = [t for t in col.tcb_infos if t.body.get("id") == "TDX"]
        if not tcb_infos:
            raise fail("TDX_COLLATERAL_INCOMPLETE", "no TDX TCB Info in the collateral")
        matching = [t for t in tcb_infos if str(t.body.get("fmspc", "")).lower() == fmspc]
        if not matching:
            raise fail(
                "TDX_FMSPC_MISMATCH",
                f"PCK FMSPC {fmspc} matches no TCB Info "
                f"({', '.join(str(t.body.get('fmspc')) for t in tcb_infos)})",
            )
        qe_ids = [q for q in col.qe_identities if q.body.get("id") == "TD_QE"]
        if not qe_ids:
            raise fail("TDX_COLLATERAL_INCOMPLETE", "no TD_QE QE Identity in the collateral")
        tcb_info = self._signed(_latest(matching), col, root, at, "TDX_TCB_INFO_INVALID", "TCB Info")
        qe_id = self._signed(_latest(qe_ids), col, root, at, "TDX_QE_IDENTITY_INVALID", "QE Identity")
        qe_status = _qe_identity_status(qe_id, qe)
        platform_status, advisories = _tcb_status(tcb_info, tcb, quote)
        status = _combine(platform_status, qe_status)
        return DcapResult(status, platform_status, qe_status, fmspc, advisories)

    def _check_crls(self, col, root, pck_ca, leaf, at) -> None:
        from cryptography import x509

        for der_list, issuer, subject, what in (
            (col.root_crls, root.cert, pck_ca, "Root CA CRL"),
            (col.pck_crls, pck_ca, leaf, "PCK CRL"),
        ):
            crls = [x509.load_der_x509_crl(d) for d in der_list]
            relevant = [c for c in crls if c.issuer == issuer.subject]
            if crls and not relevant:
                raise fail(
                    "TDX_COLLATERAL_INCOMPLETE", f"no {what} issued by {issuer.subject.rfc4514_string()}"
                )
            for crl in relevant:
                if not crl.is_signature_valid(issuer.public_key()):
                    raise fail("TDX_CRL_INVALID", f"{what} signature does not verify")
                last, nxt = crl.last_update_utc, crl.next_update_utc
                if last > at:
                    raise fail("TDX_COLLATERAL_TIME_INVALID", f"{what} thisUpdate is in the future")
                if nxt is None or nxt < at:
                    raise fail("TDX_COLLATERAL_STALE", f"{what} nextUpdate {nxt} has passed")
                if crl.get_revoked_certificate_by_serial_number(subject.serial_number):
                    raise fail("TDX_PCK_REVOKED", f"{what} revokes serial {subject.serial_number}")

    def _signed(self, doc: SignedJson, col, root, at, code: str, what: str) -> dict:
        from cryptography import x509

        ok = False
        for der in col.signing_certs:
            if der == root.der:
                continue
            try:
                cert = x509.load_der_x509_certificate(der)
            except ValueError:
                continue
            if cert.issuer != root.cert.subject or cert.subject == cert.issuer:
                continue
            if not _ecdsa_ok(cert.public_key(), doc.signature, doc.inner):
                continue
            _window(cert, f"{what} signing certificate", at)
            try:
                validate_path([root.cert, cert], ["root", "TCB Signing"], at, key_check=check_ec_nist_key)
            except VerificationFailed as exc:
                raise fail(code, f"{what} signing chain: {exc.detail}") from None
            ok = True
            break
        if not ok:
            raise fail(
                code,
                f"{what} signature does not verify with any TCB Signing "
                "certificate issued by the Intel SGX Root CA",
            )
        body = doc.body
        issue = parse_time(body.get("issueDate"), f"{what} issueDate")
        nxt = parse_time(body.get("nextUpdate"), f"{what} nextUpdate")
        if issue > at:
            raise fail("TDX_COLLATERAL_TIME_INVALID", f"{what} issueDate {issue} is in the future")
        if nxt < at:
            raise fail("TDX_COLLATERAL_STALE", f"{what} nextUpdate {nxt.isoformat()} has passed")
        return body


def _latest(docs: List[SignedJson]) -> SignedJson:
    return max(docs, key=lambda d: str(d.body.get("issueDate", "")))


def _hex(body: dict, key: str, size: int, code: str) -> bytes:
    try:
        value = bytes.fromhex(body[key])
    except (KeyError, TypeError, ValueError):
        raise fail(code, f"{key} missing or not hex") from None
    if len(value) != size:
        raise fail(code, f"{key} is {len(value)} bytes (expected {size})")
    return value


def _levels(body: dict, code: str) -> list:
    levels = body.get("tcbLevels")
    if not isinstance(levels, list) or not levels or not all(isinstance(x, dict) for x in levels):
        raise fail(code, "tcbLevels missing or empty")
    return levels


def _qe_identity_status(body: dict, qe) -> str:
    code = "TDX_QE_IDENTITY_INVALID"
    if not hmac.compare_digest(qe.mrsigner, _hex(body, "mrsigner", 32, code)):
        raise fail(code, "QE MRSIGNER does not match the QE Identity")
    if qe.isvprodid != body.get("isvprodid"):
        raise fail(code, f"QE ISVPRODID {qe.isvprodid} != {body.get('isvprodid')}")
    misc = int.from_bytes(_hex(body, "miscselect", 4, code), "big")
    misc_mask = int.from_bytes(_hex(body, "miscselectMask", 4, code), "big")
    if qe.miscselect & misc_mask != misc & misc_mask:
        raise fail(code, "QE MISCSELECT does not match the QE Identity")
    attrs = _hex(body, "attributes", 16, code)
    mask = _hex(body, "attributesMask", 16, code)
    if any((a & m) != (e & m) for a, e, m in zip(qe.attributes, attrs, mask, strict=True)):
        raise fail(code, "QE ATTRIBUTES do not match the QE Identity")
    for level in _levels(body, code):
        tcb = level.get("tcb")
        if not isinstance(tcb, dict) or type(tcb.get("isvsvn")) is not int:
            raise fail(code, "QE Identity TCB level without isvsvn")
        if qe.isvsvn >= tcb["isvsvn"]:
            return _status(level, code)
    return NO_MATCH


def _status(level: dict, code: str) -> str:
    status = level.get("tcbStatus")
    if not isinstance(status, str):
        raise fail(code, "TCB level without tcbStatus")
    return status


def _svns(components, code: str, what: str) -> list:
    if not isinstance(components, list) or len(components) != 16:
        raise fail(code, f"{what} must list 16 components")
    out = []
    for comp in components:
        if not isinstance(comp, dict) or type(comp.get("svn")) is not int:
            raise fail(code, f"{what} component without an integer svn")
        out.append(comp["svn"])
    return out


def _tcb_status(body: dict, pck: PckTcb, quote: Quote):
    code = "TDX_TCB_INFO_INVALID"
    td = quote.td
    tee_svn = td.tee_tcb_svn
    module_major = tee_svn[1]
    # TDX module identity (tcbInfo v3): tdxModule for module 1.0, tdxModuleIdentities beyond.
    if module_major == 0 and isinstance(body.get("tdxModule"), dict):
        _check_module(body["tdxModule"], td, code)
    elif module_major > 0 and isinstance(body.get("tdxModuleIdentities"), list):
        ident_id = f"TDX_{module_major:02X}"
        idents = [
            m
            for m in body["tdxModuleIdentities"]
            if isinstance(m, dict) and str(m.get("id", "")).upper() == ident_id
        ]
        if idents:
            _check_module(idents[0], td, code)
    for level in _levels(body, code):
        tcb = level.get("tcb")
        if not isinstance(tcb, dict):
            raise fail(code, "TCB level without tcb")
        sgx = _svns(tcb.get("sgxtcbcomponents"), code, "sgxtcbcomponents")
        tdx = _svns(tcb.get("tdxtcbcomponents"), code, "tdxtcbcomponents")
        if type(tcb.get("pcesvn")) is not int:
            raise fail(code, "TCB level without pcesvn")
        if any(p < s for p, s in zip(pck.sgx_svns, sgx, strict=True)) or pck.pcesvn < tcb["pcesvn"]:
            continue
        start = 2 if module_major > 0 else 0
        if any(tee_svn[i] < tdx[i] for i in range(start, 16)):
            continue
        advisories = level.get("advisoryIDs") or ()
        return _status(level, code), tuple(str(a) for a in advisories)
    return NO_MATCH, ()


def _check_module(module: dict, td, code: str) -> None:
    mrsigner = _hex(module, "mrsigner", 48, code)
    if not hmac.compare_digest(td.mrsignerseam, mrsigner):
        raise fail(code, "MRSIGNERSEAM does not match the TDX module identity")
    attrs = _hex(module, "attributes", 8, code)
    mask = _hex(module, "attributesMask", 8, code)
    if any((a & m) != (e & m) for a, e, m in zip(td.seam_attributes, attrs, mask, strict=True)):
        raise fail(code, "SEAM attributes do not match the TDX module identity")


_SEVERITY = {
    "UpToDate": 0,
    "SWHardeningNeeded": 1,
    "ConfigurationNeeded": 2,
    "ConfigurationAndSWHardeningNeeded": 3,
    "OutOfDate": 4,
    "OutOfDateConfigurationNeeded": 5,
    NO_MATCH: 6,
    "Revoked": 7,
}


def _combine(platform: str, qe: str) -> str:
    """The worse of the platform and QE statuses (a QE OutOfDate makes the whole OutOfDate)."""
    return max((platform, qe), key=lambda s: _SEVERITY.get(s, 6))


def _guard(fn):
    try:
        return fn()
    except CodedVerificationFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile DER / JSON can raise many types
        raise fail("TDX_COLLATERAL_INCOMPLETE", f"{type(exc).__name__}: {exc}") from None
