"""SEV-SNP verifier (transport.md 5.6): genuine Milan reports (VCEK and VLEK) and
generated mutants for every stable error code (test PKI in snp_pki.py)."""

from __future__ import annotations

import struct
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cmlp.attestation.base import ExpectedMeasurements
from cmlp.attestation.coded import CodedVerificationFailed
from cmlp.attestation.pki import not_after
from cmlp.attestation.snp import SnpVerifier, SnpVerifyPolicy, encode_document, parse_report
from cmlp.attestation.snp import certs as C
from cmlp.attestation.snp.document import document_from_vendor_files
from cmlp.errors import MissingField, VerificationFailed
from tests.helpers import snp_pki as P

DATA = Path(__file__).parents[1] / "data" / "snp-docs"
DAY_MS = 86_400_000

# (report, key cert, instant, production verdict, policy that accepts, measurement)
GENUINE = [
    (
        "milan-v2__go-sev-guest__attestation.bin",
        "milan-v2__go-sev-guest__vcek.der",
        1663981000000,
        "SNP_DEBUG_GUEST_REJECTED",
        dict(reject_debug=False),
        "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01",
    ),
    (
        "milan-v2__virtee-sev__report_milan.hex",
        "milan-v2__virtee-sev__vcek_milan.der",
        1680550000000,
        None,
        {},
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f",
    ),
    (
        "milan-v2__trustee__test-report.bin",
        "milan-v2__trustee__test-vcek.der",
        1674584000000,
        None,
        {},
        "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c",
    ),
    (
        "milan-v3-vlek__trustee__test-vlek-report.bin",
        "milan-v3-vlek__trustee__test-vlek.der",
        1733869000000,
        "SNP_VMPL_MISMATCH",
        dict(require_vmpl=1),
        "8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0",
    ),
]


def read_report(name: str) -> bytes:
    raw = (DATA / name).read_bytes()
    return bytes.fromhex(raw.decode().strip()) if name.endswith(".hex") else raw


def genuine_doc(sample) -> bytes:
    return document_from_vendor_files(read_report(sample[0]), (DATA / sample[1]).read_bytes())


def code_of(fn) -> str:
    with pytest.raises(CodedVerificationFailed) as info:
        fn()
    return info.value.code


def policy_for(sample, **more) -> SnpVerifyPolicy:
    return SnpVerifyPolicy.production(**sample[4], **more)


# --------------------------------------------------------------------------
# genuine evidence
# --------------------------------------------------------------------------
@pytest.mark.parametrize("sample", GENUINE, ids=lambda s: s[0].split("__")[1])
def test_genuine_report_at_its_instant(sample):
    doc = genuine_doc(sample)
    verified = SnpVerifier(policy_for(sample), at_ms=sample[2]).verify(doc)
    assert verified.measurements == {0: bytes.fromhex(sample[5])}
    assert verified.details["product"] == "Milan"
    assert verified.document_hash == __import__("hashlib").sha256(doc).digest()
    report = parse_report(read_report(sample[0]))
    assert verified.public_key == (report.report_data[:32] if any(report.report_data[:32]) else None)
    # The production policy's answer (debug guest / VMPL 1) or an accept.
    if sample[3] is None:
        SnpVerifier(at_ms=sample[2]).verify(doc)
    else:
        assert code_of(lambda: SnpVerifier(at_ms=sample[2]).verify(doc)) == sample[3]
    SnpVerifier(SnpVerifyPolicy.development(), at_ms=sample[2]).verify(doc)


@pytest.mark.parametrize("sample", GENUINE, ids=lambda s: s[0].split("__")[1])
def test_genuine_rejected_a_day_after_the_key_cert_expires(sample):
    vek = C.load_certificate((DATA / sample[1]).read_bytes())
    after = int(not_after(vek).timestamp() * 1000) + DAY_MS
    doc = genuine_doc(sample)
    assert code_of(lambda: SnpVerifier(policy_for(sample), at_ms=after).verify(doc)) == "SNP_VEK_EXPIRED"
    before = int(vek.not_valid_before_utc.timestamp() * 1000) - DAY_MS
    assert (
        code_of(lambda: SnpVerifier(policy_for(sample), at_ms=before).verify(doc)) == "SNP_VEK_NOT_YET_VALID"
    )


@pytest.mark.parametrize("sample", GENUINE, ids=lambda s: s[0].split("__")[1])
def test_genuine_wrong_measurement_pin(sample):
    doc = genuine_doc(sample)
    wrong = bytearray.fromhex(sample[5])
    wrong[47] ^= 1
    pol = policy_for(sample, expected_measurement=bytes(wrong))
    assert code_of(lambda: SnpVerifier(pol, at_ms=sample[2]).verify(doc)) == "SNP_MEASUREMENT_MISMATCH"
    verified = SnpVerifier(policy_for(sample), at_ms=sample[2]).verify(doc)
    with pytest.raises(VerificationFailed, match=r"measurement\[0\] mismatch"):
        ExpectedMeasurements({0: bytes(wrong)}).verify(verified.measurements)
    with pytest.raises(MissingField):
        ExpectedMeasurements({1: bytes(48)}).verify(verified.measurements)
    ExpectedMeasurements({0: bytes.fromhex(sample[5])}).verify(verified.measurements)


def test_every_signed_byte_flipped_is_rejected():
    sample = GENUINE[2]
    report = read_report(sample[0])
    vek_der = (DATA / sample[1]).read_bytes()
    verifier = SnpVerifier(policy_for(sample), at_ms=sample[2])
    codes = set()
    for off in list(range(0x2A0)) + list(range(0x2A0, 0x2A0 + 144, 5)):
        mutant = bytearray(report)
        mutant[off] ^= 0x01
        doc = document_from_vendor_files(bytes(mutant), vek_der)
        codes.add(code_of(lambda doc=doc: verifier.verify(doc)))
    assert "SNP_REPORT_SIG_INVALID" in codes
    assert codes <= {
        "SNP_REPORT_SIG_INVALID",
        "SNP_REPORT_VERSION_TOO_OLD",
        "SNP_UNSUPPORTED_SIGNATURE_ALGO",
        "SNP_MASK_CHIP_KEY_ENABLED",
        "SNP_SIGNING_KEY_UNSUPPORTED",
        "SNP_REPORT_VERSION_UNSUPPORTED",
    }, codes


@pytest.mark.parametrize("sample", GENUINE, ids=lambda s: s[0].split("__")[1])
def test_flipped_bytes_in_every_genuine_sample(sample):
    report, vek_der = read_report(sample[0]), (DATA / sample[1]).read_bytes()
    verifier = SnpVerifier(policy_for(sample), at_ms=sample[2])
    for off in range(0, 0x2A0 + 144, 11):
        mutant = bytearray(report)
        mutant[off] ^= 0x80
        doc = document_from_vendor_files(bytes(mutant), vek_der)
        with pytest.raises(CodedVerificationFailed):
            verifier.verify(doc)


def test_flipped_bytes_in_the_vcek_are_rejected():
    sample = GENUINE[1]
    report, vek_der = read_report(sample[0]), (DATA / sample[1]).read_bytes()
    verifier = SnpVerifier(policy_for(sample), at_ms=sample[2])
    for off in range(4, len(vek_der), 13):
        mutant = bytearray(vek_der)
        mutant[off] ^= 0x01
        try:
            doc = document_from_vendor_files(report, bytes(mutant))
        except VerificationFailed:
            continue
        with pytest.raises(VerificationFailed):
            verifier.verify(doc)


def test_bundled_roots_are_pinned_and_the_genuine_chains():
    roots = C.bundled_roots()
    assert set(roots.ark) == {"Milan", "Genoa", "Turin"}
    for product in roots.ark:
        roots.ark[product].verify_directly_issued_by(roots.ark[product])
        roots.ask[product].verify_directly_issued_by(roots.ark[product])
        roots.asvk[product].verify_directly_issued_by(roots.ark[product])
    turin = C.load_certificate((DATA / "turin-vcek-only__virtee-sev__vcek_turin.der").read_bytes())
    turin.verify_directly_issued_by(roots.ask["Turin"])
    ext = C.vek_extensions(turin, "VCEK")
    assert ext.product_name == "Turin" and len(ext.hwid) == 8 and ext.fmc_spl == 0


def test_bundled_root_tampering_is_detected(monkeypatch):
    C.bundled_roots.cache_clear()
    monkeypatch.setitem(C.AMD_ARK_SHA256, "Milan", "00" * 32)
    try:
        with pytest.raises(ValueError, match="missing or altered"):
            C.bundled_roots()
    finally:
        C.bundled_roots.cache_clear()


# --------------------------------------------------------------------------
# test PKI: every code
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki():
    return P.make_pki()


def verify(pki, report=None, chain=None, policy=None, at=P.T0_MS, arks=None):
    report = report if report is not None else P.make_report(pki)
    doc = encode_document(report, chain if chain is not None else pki.chain())
    return SnpVerifier(policy, trusted_arks=arks or [pki.ark], at_ms=at).verify(doc)


def vcode(*args, **kw) -> str:
    return code_of(lambda: verify(*args, **kw))


def test_synthetic_accepts_and_binds(pki):
    v = verify(pki)
    assert v.public_key == P.PK and v.nonce == P.NONCE and v.user_data is None
    assert v.measurements == {0: P.MEASUREMENT} and v.platform == "sev-snp"
    # chain order does not matter
    verify(pki, chain=pki.chain(("vek", "ark", "ask")))
    # all-zero slices -> None
    v = verify(pki, P.make_report(pki, P.ReportFields(report_data=bytes(64))))
    assert v.public_key is None and v.nonce is None


@pytest.mark.parametrize("version", [2, 3, 5])
def test_report_versions(pki, version):
    f = P.ReportFields(version=version)
    if version == 5:
        f.extra = {0x1F8: struct.pack("<QQ", 3, 7)}
    v = verify(pki, P.make_report(pki, f))
    assert v.details["report_version"] == version
    if version == 5:
        assert parse_report(P.make_report(pki, f)).current_mit_vector == 7


def test_wire_document_codes(pki):
    good = encode_document(P.make_report(pki), pki.chain())
    sv = SnpVerifier(trusted_arks=[pki.ark], at_ms=P.T0_MS)
    assert code_of(lambda: sv.verify(b"XEV_SNP_V1\0\0" + good[12:])) == "SNP_NOT_SNP_DOCUMENT"
    for cut in (5, 14, 100, 1200, 1203, len(good) - 1):
        assert code_of(lambda cut=cut: sv.verify(good[:cut])) in (
            "SNP_DOCUMENT_TRUNCATED",
            "SNP_NOT_SNP_DOCUMENT",
        ), cut
    assert code_of(lambda: sv.verify(good + b"\0")) == "SNP_DOCUMENT_TRAILING_DATA"
    assert code_of(lambda: sv.verify(good + bytes(70000))) == "SNP_DOCUMENT_TOO_LARGE"
    short = encode_document(P.make_report(pki)[:1000], pki.chain())
    assert code_of(lambda: sv.verify(short)) == "SNP_REPORT_SIZE_INVALID"
    huge_len = good[:12] + struct.pack("<I", 0xFFFFFFFF) + good[16:]
    assert code_of(lambda: sv.verify(huge_len)) == "SNP_DOCUMENT_TRUNCATED"


@pytest.mark.parametrize(
    "fields,code",
    [
        (dict(version=1), "SNP_REPORT_VERSION_TOO_OLD"),
        (dict(version=6), "SNP_REPORT_VERSION_UNSUPPORTED"),
        (dict(sig_algo=2), "SNP_UNSUPPORTED_SIGNATURE_ALGO"),
        (dict(key_info=0b10), "SNP_MASK_CHIP_KEY_ENABLED"),
        (dict(key_info=7 << 2), "SNP_SIGNING_KEY_UNSUPPORTED"),
        (dict(key_info=1 << 2), "SNP_VEK_KIND_MISMATCH"),
        (dict(vmpl=0xFFFFFFFF), "SNP_HOST_REQUESTED_REPORT_REJECTED"),
        (dict(vmpl=2), "SNP_VMPL_MISMATCH"),
        (dict(policy=0x30000 | 1 << 19), "SNP_DEBUG_GUEST_REJECTED"),
        (dict(policy=0x30000 | 1 << 18), "SNP_MIGRATABLE_GUEST_REJECTED"),
        (dict(reported_tcb=bytes([2, 0, 0, 0, 0, 0, 8, 115])), "SNP_TCB_BOOTLOADER_MISMATCH"),
        (dict(reported_tcb=bytes([3, 1, 0, 0, 0, 0, 8, 115])), "SNP_TCB_TEE_MISMATCH"),
        (dict(reported_tcb=bytes([3, 0, 0, 0, 0, 0, 9, 115])), "SNP_TCB_SNP_MISMATCH"),
        (dict(reported_tcb=bytes([3, 0, 0, 0, 0, 0, 8, 116])), "SNP_TCB_MICROCODE_MISMATCH"),
        (dict(chip_id=bytes(range(2, 66))), "SNP_CHIP_ID_MISMATCH"),
        (dict(cpuid=bytes([0x19, 0x11, 0x01])), "SNP_PRODUCT_MISMATCH"),  # Genoa CPU, Milan VCEK
        (dict(version=2, extra={0x180: bytes(8)}), "SNP_TCB_BOOTLOADER_MISMATCH"),
    ],
)
def test_report_field_codes(pki, fields, code):
    assert vcode(pki, P.make_report(pki, P.ReportFields(**fields))) == code


def test_policy_knobs(pki):
    dev = SnpVerifyPolicy.development()
    # development accepts what production rejects
    for f in (
        dict(vmpl=2),
        dict(policy=0x30000 | 1 << 19),
        dict(policy=0x30000 | 1 << 18),
        dict(reported_tcb=bytes([2, 0, 0, 0, 0, 0, 8, 115])),
        dict(chip_id=bytes(range(2, 66))),
    ):
        verify(pki, P.make_report(pki, P.ReportFields(**f)), policy=dev)
    # host-requested is rejected even in development
    assert (
        vcode(pki, P.make_report(pki, P.ReportFields(vmpl=0xFFFFFFFF)), policy=dev)
        == "SNP_HOST_REQUESTED_REPORT_REJECTED"
    )
    assert vcode(pki, policy=SnpVerifyPolicy(require_smt=False)) == "SNP_SMT_MISMATCH"
    verify(pki, policy=SnpVerifyPolicy(require_smt=True))
    assert vcode(pki, policy=SnpVerifyPolicy(require_single_socket=True)) == "SNP_SINGLE_SOCKET_MISMATCH"
    assert (
        vcode(pki, policy=SnpVerifyPolicy(accepted_products=frozenset({"Genoa"}))) == "SNP_PRODUCT_MISMATCH"
    )
    verify(pki, policy=SnpVerifyPolicy(accepted_products=frozenset({"Milan"})))
    assert vcode(pki, policy=SnpVerifyPolicy(expected_measurement=bytes(48))) == "SNP_MEASUREMENT_MISMATCH"
    verify(pki, policy=SnpVerifyPolicy(expected_measurement=P.MEASUREMENT))
    # masked chip id (all zero) skips the hwID comparison
    verify(pki, P.make_report(pki, P.ReportFields(chip_id=bytes(64))))
    with pytest.raises(ValueError):
        SnpVerifyPolicy(accepted_products=frozenset({"Naples"}))


def test_chain_codes(pki):
    assert vcode(pki, chain=b"") == "SNP_CERT_CHAIN_EMPTY"
    assert vcode(pki, chain=b"\x31\x00") == "SNP_CERT_CHAIN_MALFORMED"
    assert vcode(pki, chain=pki.chain()[:-5]) == "SNP_CERT_CHAIN_MALFORMED"
    assert vcode(pki, chain=b"\x30\x85" + bytes(5)) == "SNP_CERT_CHAIN_MALFORMED"
    assert vcode(pki, chain=b"\x30\x03abc" * 3) == "SNP_CERT_CHAIN_MALFORMED"
    assert vcode(pki, chain=pki.chain(("ark", "vek"))) == "SNP_CERT_TYPE_MISSING"
    assert vcode(pki, chain=pki.chain(("ark", "ark", "vek"))) == "SNP_CERT_TYPE_DUPLICATE"
    assert vcode(pki, chain=pki.chain(("ark", "ask", "ask"))) == "SNP_CERT_TYPE_DUPLICATE"
    assert vcode(pki, chain=pki.chain(("ask", "ask", "vek"))) == "SNP_CERT_TYPE_DUPLICATE"
    odd = P.make_pki(ask_cn="Intermediate")
    assert vcode(odd, chain=odd.chain()) == "SNP_CERT_TYPE_UNKNOWN"
    assert vcode(pki, arks=[P.make_pki(ark_tag="other").ark]) == "SNP_ARK_NOT_KNOWN"
    # the real AMD ARKs do not know the test ARK either
    doc = encode_document(P.make_report(pki), pki.chain())
    assert code_of(lambda: SnpVerifier(at_ms=P.T0_MS).verify(doc)) == "SNP_ARK_NOT_KNOWN"


def test_validity_codes():
    d = timedelta(days=1)
    late = P.make_pki(ask_na=P.T0 - d)
    assert vcode(late, chain=late.chain()) == "SNP_ASK_EXPIRED"
    early = P.make_pki(ask_nb=P.T0 + d)
    assert vcode(early, chain=early.chain()) == "SNP_ASK_NOT_YET_VALID"
    vek = P.make_pki(vek_na=P.T0 - d)
    assert vcode(vek, P.make_report(vek), chain=vek.chain()) == "SNP_VEK_EXPIRED"
    vek = P.make_pki(vek_nb=P.T0 + d)
    assert vcode(vek, P.make_report(vek), chain=vek.chain()) == "SNP_VEK_NOT_YET_VALID"
    pki = P.make_pki()
    assert vcode(pki, at=P.T0_MS + 11 * 365 * DAY_MS) == "SNP_ARK_EXPIRED"
    assert vcode(pki, at=P.T0_MS - 11 * 365 * DAY_MS) == "SNP_ARK_NOT_YET_VALID"


def test_signature_codes(pki):
    # ARK not self-signed: same name, signed by another key
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad_ark = P.build_cert(
        pki.ark.subject,
        pki.ark.subject,
        other,
        pki.ark_key.public_key(),
        ca=True,
        nb=P.T0 - 10 * P.YEAR,
        na=P.T0 + 10 * P.YEAR,
    )
    chain = P.SnpPki(pki.ark_key, pki.ask_key, pki.vek_key, bad_ark, pki.ask, pki.vek).chain()
    assert vcode(pki, chain=chain) == "SNP_ARK_SIG_INVALID"
    bad_ask = P.build_cert(
        pki.ask.subject,
        pki.ark.subject,
        other,
        pki.ask_key.public_key(),
        ca=True,
        nb=P.T0 - P.YEAR,
        na=P.T0 + P.YEAR,
    )
    chain = P.SnpPki(pki.ark_key, pki.ask_key, pki.vek_key, pki.ark, bad_ask, pki.vek).chain()
    assert vcode(pki, chain=chain) == "SNP_ASK_SIG_INVALID"
    bad_vek = P.build_cert(
        pki.vek.subject,
        pki.ask.subject,
        other,
        pki.vek_key.public_key(),
        ca=False,
        nb=P.T0 - P.YEAR,
        na=P.T0 + P.YEAR,
        exts=P.vcek_extensions(),
    )
    chain = P.SnpPki(pki.ark_key, pki.ask_key, pki.vek_key, pki.ark, pki.ask, bad_vek).chain()
    assert vcode(pki, chain=chain) == "SNP_VEK_SIG_INVALID"
    stranger = ec.generate_private_key(ec.SECP384R1())
    assert vcode(pki, P.make_report(pki, sign_key=stranger)) == "SNP_REPORT_SIG_INVALID"
    p256 = P.make_pki(vek_curve=ec.SECP256R1())
    assert vcode(p256, P.make_report(p256, sign_key=stranger), chain=p256.chain()) == "SNP_VEK_KEY_INVALID"
    zero_sig = bytearray(P.make_report(pki))
    zero_sig[0x2A0 : 0x2A0 + 144] = bytes(144)
    assert vcode(pki, bytes(zero_sig)) == "SNP_REPORT_SIG_INVALID"


def test_extension_codes():
    for drop in ("3.1", "3.2", "3.3", "3.8", "2", "4"):
        p = P.make_pki(vek_exts=P.vcek_extensions(drop=(drop,)))
        assert vcode(p, P.make_report(p), chain=p.chain()) == "SNP_VEK_EXTENSION_MISSING", drop
    bad_int = [P.amd_ext("3.1", b"\x02\x01\xff")] + P.vcek_extensions(drop=("3.1",))
    p = P.make_pki(vek_exts=bad_int)
    assert vcode(p, P.make_report(p), chain=p.chain()) == "SNP_VEK_EXTENSION_INVALID"
    p = P.make_pki(vek_exts=P.vcek_extensions(hwid=bytes(10)))
    assert vcode(p, P.make_report(p), chain=p.chain()) == "SNP_VEK_EXTENSION_INVALID"
    p = P.make_pki(vek_exts=P.vcek_extensions(product="Rome"))
    assert vcode(p, P.make_report(p, P.ReportFields(version=2)), chain=p.chain()) == "SNP_PRODUCT_UNKNOWN"


def test_vlek_and_turin_and_genoa():
    vlek = P.make_pki(kind="VLEK")
    report = P.make_report(vlek, P.ReportFields(key_info=1 << 2, chip_id=bytes(64)))
    v = verify(vlek, report, chain=vlek.chain())
    assert v.details["signing_key"] == "VLEK" and v.details["csp_id"] == "CN=test-csp"
    assert vcode(vlek, P.make_report(vlek), chain=vlek.chain()) == "SNP_VEK_KIND_MISMATCH"

    turin_exts = P.vcek_extensions(product="Turin", hwid=P.CHIP_ID[:8], fmc=1, bl=2, tee=3, snp=4, ucode=5)
    turin = P.make_pki(product="Turin", vek_exts=turin_exts)
    f = P.ReportFields(
        cpuid=bytes([0x1A, 0x11, 0]),
        reported_tcb=bytes([1, 2, 3, 4, 0, 0, 0, 5]),
        chip_id=P.CHIP_ID[:8] + bytes(56),
    )
    assert verify(turin, P.make_report(turin, f), chain=turin.chain()).details["product"] == "Turin"
    bad = replace(f, reported_tcb=bytes([9, 2, 3, 4, 0, 0, 0, 5]))
    assert vcode(turin, P.make_report(turin, bad), chain=turin.chain()) == "SNP_TCB_FMC_MISMATCH"
    # the Milan layout would read this TCB differently: Turin layout is what binds
    milan_layout = replace(f, reported_tcb=bytes([2, 3, 0, 0, 0, 0, 4, 5]))
    assert vcode(turin, P.make_report(turin, milan_layout), chain=turin.chain()).startswith("SNP_TCB_")

    genoa = P.make_pki(product="Genoa")
    g = P.ReportFields(cpuid=bytes([0x19, 0x11, 0x01]))
    assert verify(genoa, P.make_report(genoa, g), chain=genoa.chain()).details["product"] == "Genoa"
    siena = P.ReportFields(cpuid=bytes([0x19, 0xA0, 0x00]))
    verify(genoa, P.make_report(genoa, siena), chain=genoa.chain())


def test_crl_codes(pki):
    def pol(crl):
        return SnpVerifyPolicy(crl_der=crl)

    verify(pki, policy=pol(P.make_crl(pki)))
    assert vcode(pki, policy=pol(b"junk")) == "SNP_CRL_MALFORMED"
    assert vcode(pki, policy=pol(P.make_crl(pki, issuer=pki.ask.subject))) == "SNP_CRL_ISSUER_MISMATCH"
    assert vcode(pki, policy=pol(P.make_crl(pki, key=pki.ask_key))) == "SNP_CRL_SIG_INVALID"
    assert vcode(pki, policy=pol(P.make_crl(pki, last=P.T0 + timedelta(hours=1)))) == "SNP_CRL_NOT_YET_VALID"
    assert vcode(pki, policy=pol(P.make_crl(pki, nxt=P.T0 - timedelta(hours=1)))) == "SNP_CRL_EXPIRED"
    assert vcode(pki, policy=pol(P.make_crl(pki, revoked=[pki.vek.serial_number]))) == "SNP_VEK_REVOKED"
    assert vcode(pki, policy=pol(P.make_crl(pki, revoked=[pki.ask.serial_number]))) == "SNP_ASK_REVOKED"


def test_handshake_binding_with_snp(pki):
    """The generic handshake check: the verified pk/nonce are REPORT_DATA's halves."""
    v = verify(pki)
    assert (v.public_key, v.nonce) == (P.PK, P.NONCE)


def test_the_matched_builtin_ark_names_the_product(pki):
    from cmlp.attestation.snp.verifier import _bundled_ark_product

    roots = C.bundled_roots()
    for product, ark in roots.ark.items():
        assert _bundled_ark_product(C.spki_der(ark)) == product
    assert _bundled_ark_product(C.spki_der(pki.ark)) is None
