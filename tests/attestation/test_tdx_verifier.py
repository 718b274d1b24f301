"""TDX verifier (transport.md 5.8): eleven genuine quotes (v4 and v5) with Intel PCS
collateral at their instants, and generated mutants for every stable code
(test PKI in tdx_pki.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from cmlp.attestation.base import ExpectedMeasurements
from cmlp.attestation.coded import CodedVerificationFailed
from cmlp.attestation.tdx import (
    TdxCollateral,
    TdxVerifier,
    TdxVerifyPolicy,
    collateral_from_dcap_qvl_json,
    encode_document,
    load_collateral_dir,
    parse_quote,
)
from cmlp.attestation.tdx.collateral import SignedJson, parse_pcs_body, top_level_spans
from tests.helpers import tdx_pki as T

DATA = Path(__file__).parents[1] / "data" / "tdx-docs"
DAY_MS = 86_400_000
PERMISSIVE = TdxVerifyPolicy.production(
    reject_debug_td=False, accepted_tcb_statuses=frozenset({"UpToDate", "SWHardeningNeeded", "OutOfDate"})
)


def qvl(name):
    return lambda: collateral_from_dcap_qvl_json((DATA / name).read_bytes())


def cdir(name):
    return lambda: load_collateral_dir(str(DATA / name))


# quote, collateral, instant, production code (None = accept), status, MRTD prefix
GENUINE = [
    (
        "dcap-qvl/tdx_quote",
        qvl("dcap-qvl/tdx_quote_collateral.json"),
        1751624191000,
        None,
        "UpToDate",
        "91eb2b44",
    ),
    (
        "dcap-qvl/tdx_quote_outdated",
        qvl("dcap-qvl/tdx_quote_outdated_collateral.json"),
        1772707803000,
        "TDX_TCB_STATUS_UNACCEPTABLE",
        "NoMatch",
        "273828c4",
    ),
    (
        "go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
        cdir("go-tdx-guest"),
        1687939438000,
        "TDX_TCB_STATUS_UNACCEPTABLE",
        "NoMatch",
        "6363b804",
    ),
    (
        "trustee/tdx_quote_4.dat",
        cdir("go-tdx-guest"),
        1687939438000,
        "TDX_DEBUG_TD_REJECTED",
        "UpToDate",
        "705ee938",
    ),
    (
        "go-tdx-guest/quote_v5_sample.dat",
        cdir("tinfoil-verifier"),
        1770174696000,
        None,
        "UpToDate",
        "7348651a",
    ),
    (
        "trustee/tdx_quote_5.dat",
        cdir("tinfoil-verifier"),
        1769529299000,
        "TDX_TCB_STATUS_UNACCEPTABLE",
        "NoMatch",
        "dfba221b",
    ),
    (
        "trustee/tdx_quote_6.dat",
        cdir("tinfoil-verifier"),
        1769530199000,
        "TDX_TCB_STATUS_UNACCEPTABLE",
        "OutOfDate",
        "21e8dead",
    ),
    (
        "dcap-rs/quote_tdx_00806f050000.dat",
        cdir("dcap-rs"),
        1740714290000,
        "TDX_TCB_STATUS_UNACCEPTABLE",
        "OutOfDate",
        "935be774",
    ),
    ("go-tdx-guest/ccel_cos-113-tdx-quote.dat", cdir("dcap-rs"), 1740714290000, None, "UpToDate", "dae67181"),
    (
        "../az-snp-docs/az-tdx__trustee__td-quote.bin",
        cdir("dcap-rs"),
        1740714290000,
        "TDX_TCB_STATUS_UNACCEPTABLE",
        "OutOfDate",
        "024a32b0",
    ),
]
IDS = [g[0].split("/")[-1] for g in GENUINE]


def code_of(fn) -> str:
    with pytest.raises(CodedVerificationFailed) as info:
        fn()
    return info.value.code


def raw_quote(sample) -> bytes:
    return (DATA / sample[0]).read_bytes()


def doc_of(sample) -> bytes:
    """The wire document: the parsed quote only (published files carry padding/text)."""
    return encode_document(parse_quote(raw_quote(sample)).raw)


@pytest.mark.parametrize("sample", GENUINE, ids=IDS)
def test_genuine_quote_at_its_instant(sample):
    col = sample[1]()
    doc = doc_of(sample)
    prod = TdxVerifier(collateral=col, at_ms=sample[2])
    if sample[3] is None:
        v = prod.verify(doc)
        assert v.details["tcb_status"] == sample[4]
    else:
        assert code_of(lambda: prod.verify(doc)) == sample[3]
    if sample[4] != "NoMatch":
        v = TdxVerifier(PERMISSIVE, collateral=col, at_ms=sample[2]).verify(doc)
        assert v.details["tcb_status"] == sample[4]
        assert v.measurements[0].hex().startswith(sample[5])
        assert set(v.measurements) == {0, 1, 2, 3, 4}
    # The signature chain itself verifies for every sample (collateral not evaluated).
    v = TdxVerifier(TdxVerifyPolicy.development(), at_ms=sample[2]).verify(doc)
    assert v.details["tcb_status"].startswith("not evaluated")
    assert v.measurements[0].hex().startswith(sample[5])


@pytest.mark.parametrize("sample", GENUINE, ids=IDS)
def test_genuine_rejected_a_day_after_collateral_expires(sample):
    col = sample[1]()
    doc = doc_of(sample)
    nxt = min(
        T.datetime.fromisoformat(s.body["nextUpdate"].replace("Z", "+00:00"))
        for s in col.tcb_infos + col.qe_identities
    )
    later = int(nxt.timestamp() * 1000) + DAY_MS
    assert (
        code_of(lambda: TdxVerifier(PERMISSIVE, collateral=col, at_ms=later).verify(doc))
        == "TDX_COLLATERAL_STALE"
    )


@pytest.mark.parametrize("sample", GENUINE, ids=IDS)
def test_genuine_wrong_pins(sample):
    doc = doc_of(sample)
    q = parse_quote(raw_quote(sample))
    wrong = bytes([q.td.mrtd[0] ^ 1]) + q.td.mrtd[1:]
    dev = TdxVerifyPolicy.development
    assert (
        code_of(lambda: TdxVerifier(dev(expected_mrtd=wrong), at_ms=sample[2]).verify(doc))
        == "TDX_MRTD_MISMATCH"
    )
    assert (
        code_of(lambda: TdxVerifier(dev(expected_rtmrs={3: b"\x01" * 48}), at_ms=sample[2]).verify(doc))
        == "TDX_RTMR_MISMATCH"
    )
    assert (
        code_of(lambda: TdxVerifier(dev(expected_nonce=b"\x01" * 32), at_ms=sample[2]).verify(doc))
        == "TDX_NONCE_MISMATCH"
    )
    assert (
        code_of(lambda: TdxVerifier(dev(expected_public_key=b"\x01" * 32), at_ms=sample[2]).verify(doc))
        == "TDX_REPORTDATA_BINDING_MISMATCH"
    )
    v = TdxVerifier(
        dev(expected_mrtd=q.td.mrtd, expected_rtmrs=dict(enumerate(q.td.rtmrs))), at_ms=sample[2]
    ).verify(doc)
    with pytest.raises(Exception, match=r"measurement\[0\] mismatch"):
        ExpectedMeasurements({0: wrong}).verify(v.measurements)
    ExpectedMeasurements({0: q.td.mrtd, 4: q.td.rtmrs[3]}).verify(v.measurements)


def test_every_signed_byte_flipped_is_rejected():
    sample = GENUINE[0]
    q = parse_quote(raw_quote(sample))
    verifier = TdxVerifier(collateral=sample[1](), at_ms=sample[2])
    codes = set()
    for off in range(len(q.signed)):
        mutant = bytearray(q.raw)
        mutant[off] ^= 0x01
        codes.add(code_of(lambda mutant=mutant: verifier.verify(encode_document(bytes(mutant)))))
    assert codes <= {"TDX_QUOTE_SIG_INVALID", "TDX_QUOTE_UNSUPPORTED_FORMAT", "TDX_QUOTE_PARSE_FAILED"}, codes
    assert "TDX_QUOTE_SIG_INVALID" in codes


@pytest.mark.parametrize("sample", GENUINE, ids=IDS)
def test_flips_in_the_signature_section(sample):
    q = parse_quote(raw_quote(sample))
    verifier = TdxVerifier(PERMISSIVE, collateral=sample[1](), at_ms=sample[2])
    sig_start = len(q.signed) + 4
    # quote signature, attestation key, QE report, QE signature, auth data, PCK chain PEM
    for off in list(range(sig_start, sig_start + 134 + 384 + 64 + 34, 7)) + list(
        range(sig_start + 134 + 384 + 64 + 34 + 6 + 40, len(q.raw) - 40, 53)
    ):
        mutant = bytearray(q.raw)
        mutant[off] ^= 0x04
        with pytest.raises(CodedVerificationFailed):
            verifier.verify(encode_document(bytes(mutant)))


def test_flipped_collateral_json_is_rejected():
    sample = GENUINE[0]
    doc = doc_of(sample)
    col = sample[1]()
    for attr, code in (("tcb_infos", "TDX_TCB_INFO_INVALID"), ("qe_identities", "TDX_QE_IDENTITY_INVALID")):
        signed = getattr(col, attr)[0]
        for off in range(0, len(signed.inner), 37):
            inner = bytearray(signed.inner)
            inner[off] ^= 0x01
            try:
                body = json.loads(bytes(inner))
            except ValueError:
                continue
            if not isinstance(body, dict):
                continue
            bad = TdxCollateral(**{**col.__dict__, attr: [SignedJson(bytes(inner), signed.signature, body)]})
            got = code_of(lambda bad=bad: TdxVerifier(collateral=bad, at_ms=sample[2]).verify(doc))
            assert got in (code, "TDX_FMSPC_MISMATCH", "TDX_COLLATERAL_INCOMPLETE"), got


def test_padding_and_appended_bytes():
    # 8000-byte zero-padded buffer: the wire document may carry the zero padding.
    padded = GENUINE[7]
    raw = raw_quote(padded)
    assert len(raw) == 8000
    v = TdxVerifier(PERMISSIVE, collateral=padded[1](), at_ms=padded[2]).verify(encode_document(raw))
    assert v.details["quote_bytes"] == 4935
    # Appended text after the signature data (go-tdx-guest SPR_E4): rejected inside a
    # wire document, tolerated when a raw published file is verified as a quote.
    spr = GENUINE[2]
    raw = raw_quote(spr)
    assert raw.endswith(b"\nextra bytes(only for testing purpose)\n")
    dev = TdxVerifier(TdxVerifyPolicy.development(), at_ms=spr[2])
    assert code_of(lambda: dev.verify(encode_document(raw))) == "TDX_QUOTE_PARSE_FAILED"
    v = dev.verify_quote(raw)
    assert v.details["quote_bytes"] == len(raw) - 39


def test_fmspc_mismatch_and_missing_collateral_with_genuine_quote():
    sample = GENUINE[0]
    doc = doc_of(sample)
    wrong = load_collateral_dir(str(DATA / "dcap-rs"))
    # dcap-rs's CRLs are from another month: stale at this instant
    assert (
        code_of(lambda: TdxVerifier(collateral=wrong, at_ms=sample[2]).verify(doc)) == "TDX_COLLATERAL_STALE"
    )
    wrong.pck_crls, wrong.root_crls = [], []
    assert code_of(lambda: TdxVerifier(collateral=wrong, at_ms=sample[2]).verify(doc)) == "TDX_FMSPC_MISMATCH"
    assert code_of(lambda: TdxVerifier(at_ms=sample[2]).verify(doc)) == "TDX_COLLATERAL_MISSING"
    only_tcb = sample[1]()
    only_tcb.qe_identities = []
    assert (
        code_of(lambda: TdxVerifier(collateral=only_tcb, at_ms=sample[2]).verify(doc))
        == "TDX_COLLATERAL_INCOMPLETE"
    )
    early = sample[2] - 40 * DAY_MS
    assert (
        code_of(lambda: TdxVerifier(collateral=sample[1](), at_ms=early).verify(doc))
        == "TDX_COLLATERAL_TIME_INVALID"
    )


def test_pcs_body_spans_are_exact():
    raw = (DATA / "go-tdx-guest" / "sample_tcbInfo_response").read_bytes()
    spans = top_level_spans(raw)
    assert raw.index(spans["tcbInfo"]) == len(b'{"tcbInfo":')
    assert parse_pcs_body(raw).body["fmspc"] == "50806f000000"
    assert parse_pcs_body(b'{"a": 1}') is None and parse_pcs_body(b"\xff") is None


# --------------------------------------------------------------------------
# test PKI: every code
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki():
    return T.make_pki()


def tv(pki, quote=None, col=None, policy=None, at=T.T0_MS, fields=None):
    quote = quote if quote is not None else T.make_quote(pki, fields)
    col = col if col is not None else T.collateral(pki)
    return TdxVerifier(policy, collateral=col, root_der=T.der(pki.root), at_ms=at).verify(
        encode_document(quote)
    )


def tcode(*a, **kw):
    return code_of(lambda: tv(*a, **kw))


def test_synthetic_accepts(pki):
    v = tv(pki)
    assert (v.public_key, v.nonce) == (T.PK, T.NONCE)
    assert v.measurements == {0: T.MRTD, 1: T.RTMRS[0], 2: T.RTMRS[1], 3: T.RTMRS[2], 4: T.RTMRS[3]}
    assert v.details["tcb_status"] == "UpToDate"
    v = tv(pki, fields=T.QuoteFields(version=5, body_type=3))
    assert v.details["quote_version"] == 5 and v.details["body_type"] == 3
    tv(pki, fields=T.QuoteFields(version=5, body_type=2))
    v = tv(pki, fields=T.QuoteFields(reportdata=bytes(64)))
    assert v.public_key is None and v.nonce is None
    # the bundled Intel root does not know the test root
    q = T.make_quote(pki)
    assert (
        code_of(lambda: TdxVerifier(collateral=T.collateral(pki), at_ms=T.T0_MS).verify(encode_document(q)))
        == "TDX_PCK_CHAIN_INVALID"
    )


def test_parse_codes(pki):
    q = T.make_quote(pki)
    v = TdxVerifier(TdxVerifyPolicy.development(), root_der=T.der(pki.root), at_ms=T.T0_MS)
    assert code_of(lambda: v.verify(b"TDX_V2" + bytes(6) + q)) == "TDX_NOT_TDX_DOCUMENT"
    assert code_of(lambda: v.verify(encode_document(q)[:10])) == "TDX_NOT_TDX_DOCUMENT"
    assert code_of(lambda: v.verify(encode_document(q)[:-1])) == "TDX_DOCUMENT_TRUNCATED"
    assert code_of(lambda: v.verify(encode_document(q) + b"\0")) == "TDX_DOCUMENT_TRAILING_DATA"
    assert code_of(lambda: v.verify(encode_document(q + bytes(70000)))) == "TDX_DOCUMENT_TOO_LARGE"
    for cut in (10, 47, 48, 600, 632, 636, 700, len(q) - 1):
        assert code_of(lambda cut=cut: v.verify(encode_document(q[:cut]))) == "TDX_QUOTE_PARSE_FAILED", cut
    for off, val, code in (
        (0, 3, "TDX_QUOTE_UNSUPPORTED_FORMAT"),
        (2, 3, "TDX_QUOTE_UNSUPPORTED_FORMAT"),
        (4, 0x00, "TDX_QUOTE_UNSUPPORTED_FORMAT"),
    ):
        m = bytearray(q)
        m[off] = val
        assert code_of(lambda m=m: v.verify(encode_document(bytes(m)))) == code
    v5 = bytearray(T.make_quote(pki, T.QuoteFields(version=5, body_type=3)))
    v5[48] = 9
    assert code_of(lambda: v.verify(encode_document(bytes(v5)))) == "TDX_QUOTE_UNSUPPORTED_FORMAT"
    v5 = bytearray(T.make_quote(pki, T.QuoteFields(version=5, body_type=3)))
    v5[50] = 1
    assert code_of(lambda: v.verify(encode_document(bytes(v5)))) == "TDX_QUOTE_PARSE_FAILED"
    huge = bytearray(q)
    huge[632:636] = (0xFFFFFFF0).to_bytes(4, "little")
    assert code_of(lambda: v.verify(encode_document(bytes(huge)))) == "TDX_QUOTE_PARSE_FAILED"
    # a bare quote (signature + key only) is self-consistent, but DCAP needs cert data
    bare = T.make_quote(pki, T.QuoteFields(with_cert_data=False))
    v.verify(encode_document(bare))
    assert tcode(pki, bare) == "TDX_PCK_CHAIN_INVALID"


def test_signature_codes(pki):
    import cryptography.hazmat.primitives.asymmetric.ec as ec

    q = bytearray(T.make_quote(pki))
    q[632 + 4] ^= 1  # quote signature r
    assert tcode(pki, bytes(q)) == "TDX_QUOTE_SIG_INVALID"
    q = bytearray(T.make_quote(pki))
    q[632 + 4 + 64 : 632 + 4 + 128] = bytes(64)  # AK not on the curve
    assert tcode(pki, bytes(q)) == "TDX_QUOTE_SIG_INVALID"
    other = ec.generate_private_key(ec.SECP256R1())
    assert tcode(pki, T.make_quote(pki, pck_key=other)) == "TDX_QE_REPORT_SIG_INVALID"
    assert tcode(pki, fields=T.QuoteFields(bind_qe=False)) == "TDX_REPORTDATA_BINDING_MISMATCH"


def test_pck_chain_codes():
    exp = T.make_pki(pck_na=T.T0 - T.DAY)
    assert tcode(exp, T.make_quote(exp), T.collateral(exp)) == "TDX_COLLATERAL_STALE"
    early = T.make_pki(pck_nb=T.T0 + T.DAY)
    assert tcode(early, T.make_quote(early), T.collateral(early)) == "TDX_COLLATERAL_TIME_INVALID"
    p = T.make_pki()
    other = T.make_pki()
    chain = T.pem(p.pck) + T.pem(other.ca) + T.pem(p.root)
    assert tcode(p, fields=T.QuoteFields(pck_chain=chain)) == "TDX_PCK_CHAIN_INVALID"
    assert tcode(p, fields=T.QuoteFields(pck_chain=b"junk")) == "TDX_PCK_CHAIN_INVALID"
    assert tcode(p, fields=T.QuoteFields(pck_chain=T.pem(p.pck) + T.pem(p.ca))) == "TDX_PCK_CHAIN_INVALID"
    no_ext = T.cert(
        T.nm("Intel SGX PCK Certificate"), p.ca.subject, p.ca_key, p.pck_key.public_key(), ca=False
    )
    chain = T.pem(no_ext) + T.pem(p.ca) + T.pem(p.root)
    assert tcode(p, fields=T.QuoteFields(pck_chain=chain)) == "TDX_PCK_CHAIN_INVALID"


def test_crl_codes(pki):
    col = lambda **kw: T.collateral(pki, **kw)  # noqa: E731
    assert (
        tcode(pki, col=col(pck_crl=T.crl(pki.ca, pki.ca_key, revoked=[pki.pck.serial_number])))
        == "TDX_PCK_REVOKED"
    )
    assert (
        tcode(pki, col=col(root_crl=T.crl(pki.root, pki.root_key, revoked=[pki.ca.serial_number])))
        == "TDX_PCK_REVOKED"
    )
    assert tcode(pki, col=col(pck_crl=T.crl(pki.ca, pki.root_key))) == "TDX_CRL_INVALID"
    assert (
        tcode(pki, col=col(pck_crl=T.crl(pki.ca, pki.ca_key, nxt=T.T0 - T.DAY / 2, last=T.T0 - T.DAY)))
        == "TDX_COLLATERAL_STALE"
    )
    assert (
        tcode(pki, col=col(pck_crl=T.crl(pki.ca, pki.ca_key, last=T.T0 + T.DAY / 2)))
        == "TDX_COLLATERAL_TIME_INVALID"
    )
    assert tcode(pki, col=col(pck_crl=T.crl(pki.root, pki.root_key))) == "TDX_COLLATERAL_INCOMPLETE"


def test_collateral_codes(pki):
    assert tcode(pki, col=T.collateral(pki, tcb=T.tcb_info(fmspc=bytes(6)))) == "TDX_FMSPC_MISMATCH"
    bad = T.collateral(pki)
    bad.tcb_infos = [T.sign_json(pki, T.tcb_info(), key=pki.ca_key)]
    assert tcode(pki, col=bad) == "TDX_TCB_INFO_INVALID"
    bad = T.collateral(pki)
    bad.qe_identities = [T.sign_json(pki, T.qe_identity(), key=pki.ca_key)]
    assert tcode(pki, col=bad) == "TDX_QE_IDENTITY_INVALID"
    assert tcode(pki, col=T.collateral(pki, signers=[])) == "TDX_TCB_INFO_INVALID"
    stale = T.make_pki(signer_na=T.T0 - T.DAY)
    assert tcode(stale, T.make_quote(stale), T.collateral(stale)) == "TDX_COLLATERAL_STALE"
    assert tcode(pki, col=T.collateral(pki, tcb=T.tcb_info(nxt=T.T0 - T.DAY / 2))) == "TDX_COLLATERAL_STALE"
    assert (
        tcode(pki, col=T.collateral(pki, qe=T.qe_identity(issue=T.T0 + T.DAY / 2)))
        == "TDX_COLLATERAL_TIME_INVALID"
    )
    broken = T.tcb_info()
    broken["issueDate"] = "yesterday"
    assert tcode(pki, col=T.collateral(pki, tcb=broken)) == "TDX_COLLATERAL_TIME_INVALID"
    for qe in (T.qe_identity(mrsigner=bytes(32)), T.qe_identity(isvprodid=1)):
        assert tcode(pki, col=T.collateral(pki, qe=qe)) == "TDX_QE_IDENTITY_INVALID"
    assert tcode(pki, fields=T.QuoteFields(qe_attributes=bytes(16))) == "TDX_QE_IDENTITY_INVALID"
    broken = T.tcb_info()
    broken["tcbLevels"][0]["tcb"]["sgxtcbcomponents"] = [{"svn": 1}]
    assert tcode(pki, col=T.collateral(pki, tcb=broken)) == "TDX_TCB_INFO_INVALID"
    broken = T.tcb_info()
    broken["tcbLevels"] = []
    assert tcode(pki, col=T.collateral(pki, tcb=broken)) == "TDX_TCB_INFO_INVALID"
    module = {"mrsigner": "11" * 48, "attributes": "00" * 8, "attributesMask": "ff" * 8}
    assert tcode(pki, col=T.collateral(pki, tcb=T.tcb_info(module=module))) == "TDX_TCB_INFO_INVALID"


def test_tcb_status_codes(pki):
    low = T.QuoteFields(tee_tcb_svn=bytes([1, 0, 0]) + bytes(13))
    assert tcode(pki, fields=low) == "TDX_TCB_STATUS_UNACCEPTABLE"  # OutOfDate
    ok = TdxVerifyPolicy(accepted_tcb_statuses=frozenset({"UpToDate", "OutOfDate"}))
    assert tv(pki, fields=low, policy=ok).details["tcb_status"] == "OutOfDate"
    revoked = T.tcb_info(levels=[dict(sgx=[5] * 16, pcesvn=11, tdx=[3, 0, 5] + [0] * 13, status="Revoked")])
    assert tcode(pki, col=T.collateral(pki, tcb=revoked), policy=ok) == "TDX_TCB_REVOKED"
    none = T.tcb_info(levels=[dict(sgx=[9] * 16, pcesvn=11, tdx=[0] * 16, status="UpToDate")])
    assert tcode(pki, col=T.collateral(pki, tcb=none), policy=ok) == "TDX_TCB_STATUS_UNACCEPTABLE"
    # a QE below its UpToDate level makes the whole status OutOfDate
    assert tcode(pki, fields=T.QuoteFields(qe_isvsvn=5)) == "TDX_TCB_STATUS_UNACCEPTABLE"
    assert tv(pki, fields=T.QuoteFields(qe_isvsvn=5), policy=ok).details["qe_tcb_status"] == "OutOfDate"
    qe_revoked = T.qe_identity(levels=((8, "Revoked"),))
    assert tcode(pki, col=T.collateral(pki, qe=qe_revoked), policy=ok) == "TDX_TCB_REVOKED"


def test_debug_td_policy(pki):
    debug = T.QuoteFields(td_attributes=bytes([1]) + bytes(7))
    assert tcode(pki, fields=debug) == "TDX_DEBUG_TD_REJECTED"
    assert tv(pki, fields=debug, policy=TdxVerifyPolicy(reject_debug_td=False)).details["debug"]


def test_reference_default_policy_without_collateral(pki):
    q = T.make_quote(pki)
    v = TdxVerifier(TdxVerifyPolicy.reference_default(), at_ms=T.T0_MS).verify(encode_document(q))
    assert v.details["tcb_status"].startswith("not evaluated")
    with pytest.raises(ValueError):
        TdxVerifyPolicy(accepted_tcb_statuses=frozenset({"Fine"}))
    with pytest.raises(ValueError):
        TdxVerifyPolicy(expected_rtmrs={4: bytes(48)})
