"""NitroVerifier on genuine AWS Nitro documents (tests/data/nitro-docs, see its README).

Each genuine document is verified at its own timestamp (its leaf certificate
lives 3 hours), with the bundled AWS Nitro root G1.
"""

import hashlib
from pathlib import Path

import pytest

pytest.importorskip("cbor2")
pytest.importorskip("cryptography")

import cbor2

from cmlp.attestation import nitro
from cmlp.attestation.nitro import NitroVerifier
from cmlp.errors import AttestError, Expired, MissingField, VerificationFailed

DOCS = Path(__file__).parents[1] / "data" / "nitro-docs"
HOURS_4 = 4 * 3600 * 1000

# file -> (timestamp ms, non-zero PCR indices, public_key/user_data/nonce sizes or None)
GENUINE = {
    "blocky-nitrite__nitro_attestation.cbor": (1725719859545, {0, 1, 2, 4}, (1024, 1024, 1024)),
    "blocky-nitrite__nitro_attestation_debug.cbor": (1725719886508, {4}, (1024, 1024, 1024)),
    "eternis-rav__example_attestation.cbor": (1725911352400, {3, 4}, (5, 68, 20)),
    "capeprivacy-cape-js__cape_spec_attestationDocument.cbor": (
        1663263808848,
        {0, 1, 2, 3, 4, 8},
        (32, 250, 12),
    ),
    "capeprivacy-cape-js__isomorphic_attestation_bin.cbor": (1657831567740, {4}, (32, None, 6)),
    "worldcoin-pontifex__real-attestation-doc.cbor": (1758628609915, {0, 1, 2, 4, 8}, (32, None, None)),
}
REJECTED = {
    "eternis-rav__invalid_attestation.cbor": 1721770180771,
    "blocky-nitrite__selfsigned_attestation.cbor": 1713379906,
    "worldcoin-pontifex__mock-attestation-doc.cose.cbor": 1748469829761,
}


def load(name: str) -> bytes:
    return (DOCS / name).read_bytes()


def test_fixture_set_is_complete():
    names = {p.name for p in DOCS.glob("*.cbor")}
    assert names == set(GENUINE) | set(REJECTED)
    assert (DOCS / "README.md").is_file()


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_genuine_document_is_accepted_at_its_timestamp(name):
    ts, nonzero, sizes = GENUINE[name]
    raw = load(name)
    v = NitroVerifier(at_ms=ts).verify(raw)
    assert v.platform == "nitro"
    assert v.document_hash == hashlib.sha256(raw).digest()
    assert v.details["timestamp_ms"] == ts
    assert v.details["module_id"].startswith("i-")
    assert sorted(v.measurements) == list(range(16))
    assert all(len(pcr) == 48 for pcr in v.measurements.values())
    assert {i for i, pcr in v.measurements.items() if any(pcr)} == nonzero
    got = tuple(None if x is None else len(x) for x in (v.public_key, v.user_data, v.nonce))
    assert got == sizes


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_genuine_document_within_max_age_is_accepted(name):
    ts = GENUINE[name][0]
    NitroVerifier(at_ms=ts + 299_000).verify(load(name))
    NitroVerifier(clock=lambda: ts + 1000).verify(load(name))


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_genuine_document_four_hours_later_is_rejected(name):
    ts = GENUINE[name][0]
    with pytest.raises(Expired):
        NitroVerifier(at_ms=ts + HOURS_4).verify(load(name))
    # Even with a generous max age, the 3-hour leaf certificate has expired.
    with pytest.raises(VerificationFailed, match="leaf is not valid"):
        NitroVerifier(at_ms=ts + HOURS_4, max_age_secs=86400).verify(load(name))


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_genuine_document_today_is_rejected(name):
    with pytest.raises(AttestError):
        NitroVerifier().verify(load(name))


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_genuine_document_with_wrong_pcr_pin_is_rejected(name):
    ts = GENUINE[name][0]
    raw = load(name)
    actual = NitroVerifier(at_ms=ts).verify(raw).measurements
    NitroVerifier({0: actual[0], 4: actual[4]}, at_ms=ts).verify(raw)
    wrong = bytes(b ^ 0xFF for b in actual[0])
    with pytest.raises(VerificationFailed, match="PCR0 mismatch"):
        NitroVerifier({0: wrong}, at_ms=ts).verify(raw)
    with pytest.raises(MissingField, match="PCR31"):
        NitroVerifier({31: bytes(48)}, at_ms=ts).verify(raw)


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_genuine_document_with_another_root_is_rejected(name):
    from tests.helpers.nitro_pki import make_pki

    ts = GENUINE[name][0]
    with pytest.raises(VerificationFailed, match="root"):
        NitroVerifier(root_pem=make_pki().root_pem, at_ms=ts).verify(load(name))


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_genuine_document_binding(name):
    ts = GENUINE[name][0]
    raw = load(name)
    v = NitroVerifier(at_ms=ts)
    got = v.verify(raw)
    if got.public_key is not None and got.nonce is not None:
        v.verify_with_binding(raw, got.public_key, got.nonce)
        with pytest.raises(AttestError):
            v.verify_with_binding(raw, got.public_key, bytes(len(got.nonce)))
    else:
        with pytest.raises(MissingField):
            v.verify_with_binding(raw, got.public_key or b"", got.nonce or b"")


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_genuine_document_with_trailing_byte_is_rejected(name):
    ts = GENUINE[name][0]
    with pytest.raises(VerificationFailed, match="trailing"):
        NitroVerifier(at_ms=ts).verify(load(name) + b"\x00")


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_genuine_document_tagged_is_accepted(name):
    # COSE tag 18 in front of an otherwise untouched genuine document.
    ts = GENUINE[name][0]
    NitroVerifier(at_ms=ts).verify(b"\xd2" + load(name))


def test_tampered_document_is_rejected():
    with pytest.raises(VerificationFailed, match="signature does not verify"):
        NitroVerifier(at_ms=1721770180771).verify(load("eternis-rav__invalid_attestation.cbor"))


def test_selfsigned_document_is_rejected():
    raw = load("blocky-nitrite__selfsigned_attestation.cbor")
    for at in (1713379906, 1713379906 * 1000):
        with pytest.raises(AttestError):
            NitroVerifier(at_ms=at).verify(raw)
    # Its unprotected header is CBOR null; repaired (it is not signed), the
    # document still fails: its cabundle is null, no chain to the AWS root.
    prot, _, payload, sig = cbor2.loads(raw)
    repaired = cbor2.dumps([prot, {}, payload, sig])
    with pytest.raises(VerificationFailed, match="cabundle must be an array"):
        NitroVerifier(at_ms=1713379906).verify(repaired)


def test_synthetic_es256_document_is_rejected():
    raw = load("worldcoin-pontifex__mock-attestation-doc.cose.cbor")
    with pytest.raises(VerificationFailed, match="certificate chain is empty"):
        NitroVerifier(at_ms=1748469829761).verify(raw)


def test_bundled_root_equals_cabundle_root_of_every_genuine_document():
    root = nitro.load_bundled_root()
    for name in GENUINE:
        payload = cbor2.loads(cbor2.loads(load(name))[2])
        assert payload["cabundle"][0] == root.der
    assert hashlib.sha256(root.der).hexdigest() == nitro.AWS_NITRO_ROOT_G1_SHA256


def test_real_document_unprotected_header_change_keeps_signature_valid():
    # The unprotected header is not signed; a non-alg entry there is harmless.
    name = "eternis-rav__example_attestation.cbor"
    prot, _, payload, sig = cbor2.loads(load(name))
    NitroVerifier(at_ms=GENUINE[name][0]).verify(cbor2.dumps([prot, {4: b"kid"}, payload, sig]))


def test_real_document_payload_bit_flip_is_rejected():
    name = "capeprivacy-cape-js__cape_spec_attestationDocument.cbor"
    prot, unprot, payload, sig = cbor2.loads(load(name))
    fields = cbor2.loads(payload)
    pos = payload.index(fields["nonce"])
    flipped = payload[:pos] + bytes([payload[pos] ^ 1]) + payload[pos + 1 :]
    with pytest.raises(VerificationFailed, match="signature does not verify"):
        NitroVerifier(at_ms=GENUINE[name][0]).verify(cbor2.dumps([prot, unprot, flipped, sig]))
