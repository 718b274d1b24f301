"""Azure SEV-SNP (vTPM / HCL) verifier (transport.md 5.7): genuine Azure HCL
reports from trustee, and generated mutants (test PKI in snp_pki.py)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from cmlp.attestation.az_snp import AzSnpVerifier, encode_document, parse_hcl
from cmlp.attestation.az_snp.document import pem_to_der_list
from cmlp.attestation.az_snp.files import document_from_evidence_json, document_from_files
from cmlp.attestation.coded import CodedVerificationFailed
from cmlp.attestation.pki import not_after
from cmlp.attestation.snp import SnpVerifyPolicy
from cmlp.attestation.snp import certs as C
from tests.helpers import snp_pki as P

DATA = Path(__file__).parents[1] / "data" / "az-snp-docs"
DAY_MS = 86_400_000

# name, loader, instant, MEASUREMENT prefix, product
GENUINE = [
    (
        "hcl-report.bin",
        lambda: document_from_files(
            (DATA / "az-snp__trustee__hcl-report.bin").read_bytes(),
            (DATA / "az-snp__trustee__vcek.pem").read_bytes(),
        ),
        1683063000000,
        "9ac48fca",
        "Milan",
    ),
    (
        "evidence-v0",
        lambda: document_from_evidence_json((DATA / "az-snp__trustee__evidence-v0.json").read_bytes()),
        1738082000000,
        "6a063be9",
        "Milan",
    ),
    (
        "evidence-v1",
        lambda: document_from_evidence_json((DATA / "az-snp__trustee__evidence-v1.json").read_bytes()),
        1738082000000,
        "6a063be9",
        "Milan",
    ),
    (
        "evidence-v2",
        lambda: document_from_evidence_json((DATA / "az-snp__trustee__evidence-v2.json").read_bytes()),
        1738083000000,
        "5b0ce64a",
        "Milan",
    ),
    (
        "evidence-genoa",
        lambda: document_from_evidence_json((DATA / "az-snp__trustee__evidence-genoa.json").read_bytes()),
        1737686000000,
        "f57dc09a",
        "Genoa",
    ),
]


def code_of(fn) -> str:
    with pytest.raises(CodedVerificationFailed) as info:
        fn()
    return info.value.code


def split(doc: bytes):
    (n,) = struct.unpack_from("<I", doc, 12)
    hcl = doc[16 : 16 + n]
    (m,) = struct.unpack_from("<I", doc, 16 + n)
    return hcl, doc[20 + n : 20 + n + m]


@pytest.mark.parametrize("sample", GENUINE, ids=lambda s: s[0])
def test_genuine_accepted_at_its_instant(sample):
    doc = sample[1]()
    v = AzSnpVerifier(at_ms=sample[2]).verify(doc)
    assert v.measurements[0].hex().startswith(sample[3])
    assert v.details["product"] == sample[4] and v.platform == "az-sev-snp"
    hcl, _ = split(doc)
    parsed = parse_hcl(hcl)
    assert v.details["var_data_sha256"] == hashlib.sha256(parsed.var_data).hexdigest()
    ud = bytes.fromhex(parsed.var_json["user-data"])
    assert v.user_data == ud
    assert v.public_key == (ud[:32] if any(ud[:32]) else None)
    assert v.nonce == (ud[32:64] if any(ud[32:64]) else None)


@pytest.mark.parametrize("sample", GENUINE, ids=lambda s: s[0])
def test_genuine_rejected_after_expiry_with_wrong_pin_and_flips(sample):
    doc = sample[1]()
    hcl, pem = split(doc)
    vek = C.load_certificate(pem_to_der_list(pem)[0])
    after = int(not_after(vek).timestamp() * 1000) + DAY_MS
    assert code_of(lambda: AzSnpVerifier(at_ms=after).verify(doc)) == "SNP_VEK_EXPIRED"
    pol = SnpVerifyPolicy(expected_measurement=bytes(48))
    assert code_of(lambda: AzSnpVerifier(pol, at_ms=sample[2]).verify(doc)) == "SNP_MEASUREMENT_MISMATCH"
    verifier = AzSnpVerifier(at_ms=sample[2])
    var_size = struct.unpack_from("<I", hcl, 0x4C0 + 16)[0]
    offsets = list(range(0x20, 0x20 + 0x2A0, 17)) + list(range(0x4D4, 0x4D4 + var_size, 97))
    for off in offsets:
        mutant = bytearray(hcl)
        mutant[off] ^= 0x01
        with pytest.raises(CodedVerificationFailed):
            verifier.verify(encode_document(bytes(mutant), pem))


def test_the_tdx_hcl_report_is_not_snp():
    hcl = (DATA / "az-tdx__trustee__hcl-report.bin").read_bytes()
    pem = (DATA / "az-snp__trustee__vcek.pem").read_bytes()
    assert (
        code_of(lambda: AzSnpVerifier(at_ms=1683063000000).verify(encode_document(hcl, pem)))
        == "AZSNP_NOT_SNP_REPORT"
    )


# --------------------------------------------------------------------------
# synthetic HCL reports signed by the test VCEK
# --------------------------------------------------------------------------
def make_hcl(
    pki,
    *,
    user_data: bytes = P.PK + P.NONCE,
    var: bytes = None,
    pad: int = 2600,
    report_type: int = 2,
    hash_type: int = 1,
    bind: bool = True,
    fields=None,
):
    if var is None:
        var = json.dumps({"keys": [], "user-data": user_data.hex().upper()}).encode()
    rd = hashlib.sha256(var).digest() + bytes(32) if bind else bytes(64)
    f = fields or P.ReportFields()
    f.report_data = rd
    report = P.make_report(pki, f)
    head = b"HCLA" + struct.pack("<IIII", 1, 0x4D4 + len(var), 2, 0) + bytes(12)
    runtime = struct.pack("<IIIII", 20 + len(var), 1, report_type, hash_type, len(var))
    body = head + report + runtime + var
    return body + bytes(max(0, pad - len(body)))


def pem_chain(pki) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (pki.vek, pki.ask, pki.ark))


@pytest.fixture(scope="module")
def pki():
    return P.make_pki()


def az(pki, hcl, pem=None, policy=None):
    doc = encode_document(hcl, pem if pem is not None else pem_chain(pki))
    return AzSnpVerifier(policy, trusted_arks=[pki.ark], at_ms=P.T0_MS).verify(doc)


def acode(*args, **kw):
    return code_of(lambda: az(*args, **kw))


def test_synthetic_binding(pki):
    v = az(pki, make_hcl(pki))
    assert (v.public_key, v.nonce) == (P.PK, P.NONCE)
    v = az(pki, make_hcl(pki, user_data=bytes(64)))
    assert (v.public_key, v.nonce) == (None, None)
    v = az(pki, make_hcl(pki, user_data=b"\x01" * 20))  # short user-data: no pk/nonce
    assert (v.public_key, v.nonce, v.user_data) == (None, None, b"\x01" * 20)
    v = az(pki, make_hcl(pki, var=b'{"keys": []}'))
    assert v.user_data is None


def test_codes(pki):
    good = make_hcl(pki)
    assert acode(pki, make_hcl(pki, bind=False)) == "AZSNP_VARDATA_BINDING_MISMATCH"
    assert acode(pki, make_hcl(pki, report_type=4)) == "AZSNP_NOT_SNP_REPORT"
    assert acode(pki, make_hcl(pki, hash_type=2)) == "AZSNP_HASH_TYPE_UNSUPPORTED"
    assert acode(pki, make_hcl(pki, var=b"not json")) == "AZSNP_VARDATA_INVALID"
    assert acode(pki, make_hcl(pki, var=b"[1, 2]")) == "AZSNP_VARDATA_INVALID"
    assert acode(pki, make_hcl(pki, var=b'{"user-data": "zz"}')) == "AZSNP_USER_DATA_INVALID"
    assert acode(pki, make_hcl(pki, var=b'{"user-data": 5}')) == "AZSNP_USER_DATA_INVALID"
    assert acode(pki, good[:-1] + b"\x01") == "AZSNP_HCL_MALFORMED"  # non-zero padding
    assert acode(pki, b"HCLB" + good[4:]) == "AZSNP_HCL_MALFORMED"
    assert acode(pki, good[:1000]) == "AZSNP_HCL_MALFORMED"
    bad_size = bytearray(good)
    struct.pack_into("<I", bad_size, 0x4C0 + 16, 5000)
    assert acode(pki, bytes(bad_size)) == "AZSNP_HCL_MALFORMED"
    bad_size = bytearray(good)
    struct.pack_into("<I", bad_size, 0x4C0, 7)
    assert acode(pki, bytes(bad_size)) == "AZSNP_HCL_MALFORMED"
    bad_size = bytearray(good)
    struct.pack_into("<I", bad_size, 8, 7)
    assert acode(pki, bytes(bad_size)) == "AZSNP_HCL_MALFORMED"
    assert acode(pki, good, pem=b"") == "SNP_CERT_CHAIN_EMPTY"
    assert acode(pki, good, pem=b"-----BEGIN CERTIFICATE-----\nabc\n") == "SNP_CERT_CHAIN_MALFORMED"
    from cryptography.hazmat.primitives import serialization

    two = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (pki.vek, pki.ark))
    assert acode(pki, good, pem=two) == "SNP_CERT_TYPE_MISSING"
    assert (
        acode(pki, make_hcl(pki, fields=P.ReportFields(policy=0x30000 | 1 << 19)))
        == "SNP_DEBUG_GUEST_REJECTED"
    )
    assert acode(pki, make_hcl(pki, fields=P.ReportFields(sig_algo=0))) == "SNP_UNSUPPORTED_SIGNATURE_ALGO"
    v = AzSnpVerifier(trusted_arks=[pki.ark], at_ms=P.T0_MS)
    doc = encode_document(good, pem_chain(pki))
    assert code_of(lambda: v.verify(b"AZ_SNP_V2" + doc[9:])) == "AZSNP_NOT_AZSNP_DOCUMENT"
    assert code_of(lambda: v.verify(doc[:20])) == "AZSNP_DOCUMENT_TRUNCATED"
    assert code_of(lambda: v.verify(doc + b"x")) == "AZSNP_DOCUMENT_TRAILING_DATA"
    assert code_of(lambda: v.verify(doc + bytes(70000))) == "AZSNP_DOCUMENT_TOO_LARGE"


def test_evidence_json_errors():
    for bad in (
        b"\xff",
        b"[]",
        b'{"report": [1, 300], "vcek": "x"}',
        b'{"vcek": "x"}',
        b'{"hcl_report": "AAAA"}',
    ):
        with pytest.raises(CodedVerificationFailed):
            document_from_evidence_json(bad)
