"""NitroVerifier against documents signed by a test PKI (no hardware, no network)."""

import hashlib

import pytest

pytest.importorskip("cbor2")
pytest.importorskip("cryptography")

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from cmlp.attestation import nitro
from cmlp.attestation.nitro import NitroVerifier
from cmlp.errors import AttestError, Expired, MissingField, PublicKeyMismatch, VerificationFailed
from tests.helpers import nitro_pki as P


@pytest.fixture(scope="module")
def pki():
    return P.make_pki()


@pytest.fixture(scope="module")
def other_pki():
    return P.make_pki(root_name="cmlp-other-root")


def verifier(pki, **kw):
    kw.setdefault("at_ms", P.T0_MS)
    return NitroVerifier(root_pem=pki.root_pem, **kw)


def rejects(pki, document, error=VerificationFailed, match=None, **kw):
    with pytest.raises(error, match=match) as info:
        verifier(pki, **kw).verify(document)
    return info.value


# --------------------------------------------------------------------------
# acceptance
# --------------------------------------------------------------------------
def test_accepts_a_well_formed_document(pki):
    doc = P.make_document(pki)
    v = verifier(pki).verify(doc)
    assert v.platform == "nitro"
    assert v.document_hash == hashlib.sha256(doc).digest()
    assert v.public_key == P.PUBLIC_KEY and v.nonce == P.NONCE and v.user_data is None
    assert v.measurements == {i: bytes([i]) * 48 for i in range(16)}
    assert v.details["module_id"] == P.MODULE_ID
    assert v.details["timestamp_ms"] == P.T0_MS
    assert v.details["cabundle_len"] == 2


def test_accepts_tagged_cose_sign1(pki):
    payload = cbor2.dumps(P.default_fields(pki))
    doc = P.sign1(payload, pki.leaf_key, tagged=True)
    assert doc[0] == 0xD2
    verifier(pki).verify(doc)


def test_accepts_indefinite_length_payload_map(pki):
    fields = P.default_fields(pki)
    body = b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in fields.items())
    payload = b"\xbf" + body + b"\xff"
    verifier(pki).verify(P.sign1(payload, pki.leaf_key))


def test_optional_fields_absent_or_null_are_none(pki):
    doc = P.make_document(pki, drop=("public_key", "nonce"), user_data=None)
    v = verifier(pki).verify(doc)
    assert (v.public_key, v.nonce, v.user_data) == (None, None, None)


def test_optional_fields_up_to_1024_bytes_and_empty(pki):
    doc = P.make_document(pki, public_key=b"k" * 1024, user_data=b"", nonce=b"n" * 1024)
    v = verifier(pki).verify(doc)
    assert v.user_data == b"" and len(v.public_key) == 1024


def test_pcr_indices_0_to_31_and_all_sizes(pki):
    pcrs = {i: b"\x01" * (32, 48, 64)[i % 3] for i in range(32)}
    assert len(verifier(pki).verify(P.make_document(pki, pcrs=pcrs)).measurements) == 32


def test_clock_is_used_when_no_at_ms(pki):
    doc = P.make_document(pki)
    NitroVerifier(root_pem=pki.root_pem, clock=lambda: P.T0_MS + 1000).verify(doc)
    with pytest.raises(Expired):
        NitroVerifier(root_pem=pki.root_pem, clock=lambda: P.T0_MS + 301_000).verify(doc)


def test_impossible_clock_value_is_a_verification_failure(pki):
    with pytest.raises(VerificationFailed, match="clock"):
        NitroVerifier(root_pem=pki.root_pem, clock=lambda: 10**20).verify(P.make_document(pki))


def test_at_ms_overrides_clock(pki):
    doc = P.make_document(pki)
    NitroVerifier(root_pem=pki.root_pem, at_ms=P.T0_MS, clock=lambda: 0).verify(doc)


def test_real_clock_rejects_a_document_from_2030(pki):
    with pytest.raises(VerificationFailed, match="in the future"):
        NitroVerifier(root_pem=pki.root_pem).verify(P.make_document(pki))


def test_pinned_pcrs_match(pki):
    pins = {0: bytes([0]) * 48, 15: bytes([15]) * 48}
    verifier(pki, expected_pcrs=pins).verify(P.make_document(pki))


# --------------------------------------------------------------------------
# freshness (step 5, 6)
# --------------------------------------------------------------------------
def test_stale_timestamp_is_expired(pki):
    doc = P.make_document(pki, timestamp=P.T0_MS - 300_001)
    rejects(pki, doc, Expired, "expired")


def test_max_age_boundary_is_inclusive(pki):
    verifier(pki).verify(P.make_document(pki, timestamp=P.T0_MS - 300_000))


def test_custom_max_age(pki):
    doc = P.make_document(pki, timestamp=P.T0_MS - 10_000)
    rejects(pki, doc, Expired, max_age_secs=5)
    verifier(pki, max_age_secs=11).verify(doc)


def test_future_timestamp_beyond_skew(pki):
    doc = P.make_document(pki, timestamp=P.T0_MS + 60_001)
    rejects(pki, doc, VerificationFailed, "in the future")


def test_future_timestamp_within_skew_is_accepted(pki):
    verifier(pki).verify(P.make_document(pki, timestamp=P.T0_MS + 60_000))
    doc = P.make_document(pki, timestamp=P.T0_MS + 5_000)
    rejects(pki, doc, VerificationFailed, "in the future", future_skew_secs=1)


def test_zero_timestamp(pki):
    rejects(pki, P.make_document(pki, timestamp=0), match="timestamp is zero")


# --------------------------------------------------------------------------
# payload fields (steps 3, 4, 7)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["module_id", "digest", "timestamp", "certificate", "cabundle", "pcrs"])
def test_missing_required_field(pki, field):
    err = rejects(pki, P.make_document(pki, drop=(field,)), MissingField)
    assert err.name == field


@pytest.mark.parametrize(
    "field, value",
    [
        ("module_id", b"bytes"),
        ("module_id", None),
        ("module_id", 7),
        ("digest", b"SHA384"),
        ("digest", None),
        ("timestamp", "1900000000000"),
        ("timestamp", float(P.T0_MS)),
        ("timestamp", True),
        ("timestamp", -5),
        ("timestamp", None),
        ("certificate", "pem"),
        ("certificate", [b"x"]),
        ("certificate", None),
        ("cabundle", b"x"),
        ("cabundle", {0: b"x"}),
        ("cabundle", ["text"]),
        ("cabundle", None),
        ("pcrs", [b"x" * 48]),
        ("pcrs", None),
        ("pcrs", {"0": b"x" * 48}),
        ("pcrs", {0: "x"}),
    ],
)
def test_wrong_type_of_required_field(pki, field, value):
    err = rejects(pki, P.make_document(pki, **{field: value}))
    assert field in str(err) or "PCR" in str(err)


@pytest.mark.parametrize("field", ["public_key", "user_data", "nonce"])
@pytest.mark.parametrize("value", ["text", 5, [b"x"], {1: b"x"}, True, 1.0])
def test_wrong_type_of_optional_field_is_rejected(pki, field, value):
    # Safe choice: the reference silently maps these to None.
    err = rejects(pki, P.make_document(pki, **{field: value}))
    assert field in str(err)


def test_cbor_undefined_optional_field_is_rejected(pki):
    fields = P.default_fields(pki)
    fields["nonce"] = cbor2.undefined
    rejects(pki, P.sign1(cbor2.dumps(fields), pki.leaf_key), match="nonce")


@pytest.mark.parametrize("field", ["public_key", "user_data", "nonce"])
def test_optional_field_over_1024_bytes(pki, field):
    rejects(pki, P.make_document(pki, **{field: b"x" * 1025}), match="max 1024")


def test_wrong_digest(pki):
    rejects(pki, P.make_document(pki, digest="SHA256"), match="SHA384")


def test_empty_module_id(pki):
    err = rejects(pki, P.make_document(pki, module_id=""), MissingField)
    assert "module_id" in str(err)


@pytest.mark.parametrize(
    "pcrs, fragment",
    [
        ({}, "entries"),
        ({32: b"x" * 48}, "index"),
        ({-1: b"x" * 48}, "index"),
        ({0: b"x" * 47}, "PCR0 is 47 bytes"),
        ({0: b""}, "PCR0"),
        ({0: b"x" * 96}, "PCR0"),
    ],
)
def test_bad_pcrs(pki, pcrs, fragment):
    rejects(pki, P.make_document(pki, pcrs=pcrs), match=fragment)


def test_duplicate_pcr_index_is_rejected(pki):
    fields = P.default_fields(pki)
    fields["pcrs"] = {0: b"a" * 48}
    payload = cbor2.dumps(fields)
    one = cbor2.dumps({0: b"a" * 48})
    two = b"\xa2" + one[1:] + cbor2.dumps(0) + cbor2.dumps(b"b" * 48)
    payload = payload.replace(one, two)
    rejects(pki, P.sign1(payload, pki.leaf_key), match="duplicate map key")


def test_duplicate_payload_key_is_rejected(pki):
    # A second "nonce" entry must not be able to shadow (or be shadowed by) the first.
    fields = P.default_fields(pki)
    payload = bytearray(cbor2.dumps(fields))
    payload[0] += 1  # one more entry in the (small, definite) map header
    payload += cbor2.dumps("nonce") + cbor2.dumps(b"\x00" * 32)
    rejects(pki, P.sign1(bytes(payload), pki.leaf_key), match="duplicate map key")


def test_payload_not_a_map(pki):
    rejects(pki, P.sign1(cbor2.dumps([1, 2]), pki.leaf_key), match="not a CBOR map")


def test_payload_with_trailing_bytes(pki):
    payload = cbor2.dumps(P.default_fields(pki)) + b"\x00"
    rejects(pki, P.sign1(payload, pki.leaf_key), match="trailing")


def test_detached_payload(pki):
    doc = P.sign1(cbor2.dumps(P.default_fields(pki)), pki.leaf_key, detached=True)
    err = rejects(pki, doc, MissingField)
    assert err.name == "COSE_Sign1 payload"


def test_too_many_cabundle_entries(pki):
    rejects(pki, P.make_document(pki, cabundle=[pki.root_der] * 9), match="max 8")


def test_oversized_certificate(pki):
    rejects(pki, P.make_document(pki, certificate=b"\x30" * 5000), match="certificate is")


def test_unknown_payload_fields_are_ignored(pki):
    verifier(pki).verify(P.make_document(pki, extra_field={"x": [1, 2]}))


# --------------------------------------------------------------------------
# certificate chain (step 8)
# --------------------------------------------------------------------------
def test_wrong_root(pki, other_pki):
    err = rejects(other_pki, P.make_document(pki))
    assert "root" in str(err)


def test_root_not_pinned_when_cabundle_starts_elsewhere(pki):
    err = rejects(pki, P.make_document(pki, cabundle=[pki.inter_der]))
    assert "root" in str(err)


def test_empty_cabundle(pki):
    rejects(pki, P.make_document(pki, cabundle=[]), match="certificate chain is empty")


def test_missing_intermediate(pki):
    err = rejects(pki, P.make_document(pki, cabundle=[pki.root_der]))
    assert "chain" in str(err)


def test_intermediate_from_another_pki(pki, other_pki):
    doc = P.make_document(pki, cabundle=[pki.root_der, other_pki.inter_der])
    rejects(pki, doc, match="chain")


def test_leaf_signed_by_an_impostor_with_the_right_issuer_name(pki):
    impostor = ec.generate_private_key(ec.SECP384R1())
    leaf = P.make_cert(
        P.name("evil"),
        pki.inter_cert.subject,
        impostor,
        pki.leaf_key.public_key(),
        ca=False,
        not_before=P.T0 - P.HOUR,
        not_after=P.T0 + P.HOUR,
        key_usage=P.LEAF_USAGE,
    )
    rejects(pki, P.make_document(pki, certificate=P.der(leaf)), match="chain broken")


def test_cabundle_out_of_order(pki):
    doc = P.make_document(pki, cabundle=[pki.root_der, pki.inter_der, pki.inter_der])
    rejects(pki, doc, match="chain")


def test_unparsable_certificate(pki):
    rejects(pki, P.make_document(pki, certificate=b"\x30\x03\x02\x01\x00"), match="certificate")


@pytest.mark.parametrize(
    "kw, fragment",
    [
        (dict(leaf_validity=(-3 * P.HOUR, -P.HOUR)), "leaf is not valid"),
        (dict(leaf_validity=(P.HOUR, 3 * P.HOUR)), "leaf is not valid"),
        (dict(inter_validity=(-30 * P.HOUR, -2 * P.HOUR)), "cabundle\\[1\\] is not valid"),
        (dict(root_validity=(P.HOUR, 30 * P.HOUR)), "root is not valid"),
    ],
)
def test_expired_or_not_yet_valid_certificates(kw, fragment):
    pki = P.make_pki(**kw)
    rejects(pki, P.make_document(pki), match=fragment)


def test_chain_checked_at_the_verification_instant(pki):
    doc = P.make_document(pki, timestamp=P.T0_MS + 3 * 3600_000)
    # fresh at T0 + 3h, but the leaf expired at T0 + 2h
    rejects(pki, doc, match="leaf is not valid", at_ms=P.T0_MS + 3 * 3600_000)


def test_intermediate_path_length_exceeded():
    root_key = ec.generate_private_key(ec.SECP384R1())
    base = P.make_pki(root_key=root_key)
    # root -> inter(pathlen 0) -> sub-CA -> leaf: one CA too many below inter.
    sub_key = ec.generate_private_key(ec.SECP384R1())
    sub = P.make_cert(
        P.name("sub-ca"),
        base.inter_cert.subject,
        base.inter_key,
        sub_key.public_key(),
        ca=True,
        path_length=None,
        not_before=P.T0 - P.HOUR,
        not_after=P.T0 + P.HOUR,
        key_usage=P.CA_USAGE,
    )
    leaf = P.make_cert(
        P.name("leaf"),
        sub.subject,
        sub_key,
        base.leaf_key.public_key(),
        ca=False,
        not_before=P.T0 - P.HOUR,
        not_after=P.T0 + P.HOUR,
        key_usage=P.LEAF_USAGE,
    )
    doc = P.make_document(base, certificate=P.der(leaf), cabundle=[base.root_der, base.inter_der, P.der(sub)])
    rejects(base, doc, match="pathLenConstraint")
    # The same shape passes when the intermediate allows one more CA.
    ok = P.make_pki(root_key=root_key, inter_path_length=1)
    sub2 = P.make_cert(
        P.name("sub-ca"),
        ok.inter_cert.subject,
        ok.inter_key,
        sub_key.public_key(),
        ca=True,
        path_length=0,
        not_before=P.T0 - P.HOUR,
        not_after=P.T0 + P.HOUR,
        key_usage=P.CA_USAGE,
    )
    leaf2 = P.make_cert(
        P.name("leaf"),
        sub2.subject,
        sub_key,
        base.leaf_key.public_key(),
        ca=False,
        not_before=P.T0 - P.HOUR,
        not_after=P.T0 + P.HOUR,
        key_usage=P.LEAF_USAGE,
    )
    doc = P.make_document(
        ok, certificate=P.der(leaf2), key=base.leaf_key, cabundle=[ok.root_der, ok.inter_der, P.der(sub2)]
    )
    verifier(ok).verify(doc)


def test_intermediate_that_is_not_a_ca():
    pki = P.make_pki(inter_ca=False)
    rejects(pki, P.make_document(pki), match="not a CA")


def test_intermediate_without_key_cert_sign():
    pki = P.make_pki(inter_key_usage=dict(P.CA_USAGE, key_cert_sign=False))
    rejects(pki, P.make_document(pki), match="keyCertSign")


def test_leaf_that_is_a_ca():
    pki = P.make_pki(leaf_ca=True)
    rejects(pki, P.make_document(pki), match="leaf certificate is a CA")


def test_leaf_without_digital_signature():
    pki = P.make_pki(leaf_key_usage=dict(P.LEAF_USAGE, digital_signature=False))
    rejects(pki, P.make_document(pki), match="digitalSignature")


def test_leaf_whose_subject_equals_its_issuer():
    pki = P.make_pki(leaf_subject=P.name("cmlp-test-intermediate"))
    rejects(pki, P.make_document(pki), match="self-issued")


def test_unknown_critical_extension():
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    pki = P.make_pki(leaf_extra_extensions=[(ext, True)])
    rejects(pki, P.make_document(pki), match="critical extension")
    ok = P.make_pki(leaf_extra_extensions=[(ext, False)])
    verifier(ok).verify(P.make_document(ok))


def test_rsa_leaf_is_rejected():
    from cryptography.hazmat.primitives.asymmetric import rsa

    pki = P.make_pki()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = P.make_cert(
        P.name("rsa-leaf"),
        pki.inter_cert.subject,
        pki.inter_key,
        rsa_key.public_key(),
        ca=False,
        not_before=P.T0 - P.HOUR,
        not_after=P.T0 + P.HOUR,
        key_usage=P.LEAF_USAGE,
    )
    rejects(pki, P.make_document(pki, certificate=P.der(leaf)), match="not an EC key")


def test_leaf_signed_with_a_hash_outside_sha2_256_512_is_rejected():
    pki = P.make_pki(leaf_hash=hashes.SHA224())
    rejects(pki, P.make_document(pki), match="signature algorithm")


# --------------------------------------------------------------------------
# COSE signature (step 9)
# --------------------------------------------------------------------------
def test_bad_signature(pki):
    prot, unprot, payload, sig = P.split_cose(P.make_document(pki))
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    rejects(pki, P.join_cose(prot, unprot, payload, bad), match="signature does not verify")


def test_tampered_payload(pki):
    prot, unprot, payload, sig = P.split_cose(P.make_document(pki))
    tampered = payload.replace(P.NONCE, bytes(32))
    assert tampered != payload
    rejects(pki, P.join_cose(prot, unprot, tampered, sig), match="signature does not verify")


def test_reencoded_protected_header_breaks_the_signature(pki):
    prot, unprot, payload, sig = P.split_cose(P.make_document(pki))
    longer = b"\xa1\x01\x39\x00\x22"  # same map {1: -35}, non-minimal encoding
    rejects(pki, P.join_cose(longer, unprot, payload, sig), match="signature does not verify")


def test_signature_by_another_key(pki):
    doc = P.make_document(pki, key=ec.generate_private_key(ec.SECP384R1()))
    rejects(pki, doc, match="signature does not verify")


@pytest.mark.parametrize("size", [0, 64, 95, 97, 104, 132])
def test_signature_of_wrong_length(pki, size):
    prot, unprot, payload, sig = P.split_cose(P.make_document(pki))
    rejects(pki, P.join_cose(prot, unprot, payload, (sig * 2)[:size]), match="96")


def test_der_encoded_signature_is_rejected(pki):
    payload = cbor2.dumps(P.default_fields(pki))
    tbs = cbor2.dumps(["Signature1", cbor2.dumps({1: -35}), b"", payload])
    der_sig = pki.leaf_key.sign(tbs, ec.ECDSA(hashes.SHA384()))
    doc = P.join_cose(cbor2.dumps({1: -35}), {}, payload, der_sig)
    rejects(pki, doc)


@pytest.mark.parametrize("protected", [{1: -7}, {1: -36}, {1: "ES384"}, {}, {4: b"kid"}])
def test_wrong_or_missing_alg(pki, protected):
    # The ES384 signature itself is valid: only the declared algorithm is wrong.
    doc = P.sign1(cbor2.dumps(P.default_fields(pki)), pki.leaf_key, protected=protected)
    rejects(pki, doc, match="alg must be ES384")


def test_empty_protected_bytes_means_no_alg(pki):
    doc = P.sign1(cbor2.dumps(P.default_fields(pki)), pki.leaf_key, protected=b"")
    rejects(pki, doc, match="alg must be ES384")


def test_crit_header_is_rejected(pki):
    doc = P.sign1(cbor2.dumps(P.default_fields(pki)), pki.leaf_key, protected={1: -35, 2: [99]})
    rejects(pki, doc, match="crit")


def test_alg_in_unprotected_header_is_rejected(pki):
    doc = P.sign1(cbor2.dumps(P.default_fields(pki)), pki.leaf_key, unprotected={1: -35})
    rejects(pki, doc, match="protected header")


def test_unprotected_header_contents_are_otherwise_ignored(pki):
    doc = P.sign1(cbor2.dumps(P.default_fields(pki)), pki.leaf_key, unprotected={4: b"kid"})
    verifier(pki).verify(doc)


def test_non_p384_leaf_key():
    pki = P.make_pki(leaf_curve=ec.SECP256R1())
    doc = P.make_document(pki)  # signed with the P-256 key, 64-byte r||s
    rejects(pki, doc, match="P-384")
    doc = P.sign1(
        cbor2.dumps(P.default_fields(pki)), pki.leaf_key, hash_alg=hashes.SHA256(), protected={1: -7}
    )
    rejects(pki, doc)


# --------------------------------------------------------------------------
# framing and size bounds
# --------------------------------------------------------------------------
def test_trailing_garbage_after_cose(pki):
    rejects(pki, P.make_document(pki) + b"\x00", match="trailing")


def test_oversized_document(pki):
    doc = P.make_document(pki, user_data=None, extra=b"x" * 70_000)
    rejects(pki, doc, match="max 65536")


def test_deeply_nested_payload_does_not_crash(pki):
    payload = b"\x81" * 50_000 + b"\x00"
    rejects(pki, P.sign1(payload, pki.leaf_key), match="nesting")


def test_deeply_nested_document_does_not_crash(pki):
    rejects(pki, b"\x81" * 60_000 + b"\x00", match="invalid COSE_Sign1")


def test_huge_declared_lengths_do_not_allocate(pki):
    for doc in (
        b"\x84\x5b\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00",
        b"\x84\x40\xa0\x5a\xff\xff\xff\xff",
    ):
        rejects(pki, doc, match="invalid COSE_Sign1")


@pytest.mark.parametrize("doc", [b"", b"\x00", b"\xff", b"MOCK_ATT_V1\x00", b"\xd2", b"\xd2\x80"])
def test_garbage_documents(pki, doc):
    rejects(pki, doc, match="invalid COSE_Sign1")


def test_other_top_level_tag(pki):
    doc = P.make_document(pki)
    rejects(pki, b"\xd8\x62" + doc, match="tag")


# --------------------------------------------------------------------------
# PCR pinning (step 10) and handshake binding
# --------------------------------------------------------------------------
def test_pcr_mismatch(pki):
    err = rejects(pki, P.make_document(pki), expected_pcrs={0: b"\xff" * 48})
    assert str(err).endswith(f"PCR0 mismatch: expected {'ff' * 48}, got {'00' * 48}")


def test_pcr_missing(pki):
    err = rejects(pki, P.make_document(pki), MissingField, expected_pcrs={20: b"\x00" * 48})
    assert err.name == "PCR20"


def test_pins_are_checked_in_ascending_order(pki):
    pins = {5: b"\xff" * 48, 1: b"\xff" * 48}
    rejects(pki, P.make_document(pki), match="PCR1 mismatch", expected_pcrs=pins)


def test_pin_length_matters(pki):
    rejects(pki, P.make_document(pki), match="PCR3 mismatch", expected_pcrs={3: bytes([3]) * 32})


def test_pcr_checked_only_after_signature(pki):
    prot, unprot, payload, sig = P.split_cose(P.make_document(pki))
    bad = P.join_cose(prot, unprot, payload, bytes(96))
    rejects(pki, bad, match="signature", expected_pcrs={0: b"\xff" * 48})


def test_binding_accepts_matching_values(pki):
    v = verifier(pki).verify_with_binding(P.make_document(pki), P.PUBLIC_KEY, P.NONCE)
    assert v.nonce == P.NONCE


def test_binding_public_key_mismatch(pki):
    with pytest.raises(PublicKeyMismatch):
        verifier(pki).verify_with_binding(P.make_document(pki), bytes(32), P.NONCE)


def test_binding_nonce_mismatch(pki):
    with pytest.raises(VerificationFailed, match="nonce mismatch"):
        verifier(pki).verify_with_binding(P.make_document(pki), P.PUBLIC_KEY, bytes(32))


@pytest.mark.parametrize("field", ["public_key", "nonce"])
def test_binding_missing_field(pki, field):
    with pytest.raises(MissingField) as info:
        verifier(pki).verify_with_binding(P.make_document(pki, drop=(field,)), P.PUBLIC_KEY, P.NONCE)
    assert info.value.name == field


def test_binding_runs_after_full_verification(pki):
    with pytest.raises(Expired):
        verifier(pki, at_ms=P.T0_MS + 3600_000).verify_with_binding(P.make_document(pki), b"wrong", b"wrong")


# --------------------------------------------------------------------------
# construction and the bundled root
# --------------------------------------------------------------------------
def test_bundled_root_is_the_aws_nitro_root_g1():
    root = nitro.load_bundled_root()
    assert root.sha256 == nitro.AWS_NITRO_ROOT_G1_SHA256
    cert = root.cert
    assert cert.subject.rfc4514_string() == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"
    assert cert.issuer == cert.subject
    assert isinstance(cert.public_key().curve, ec.SECP384R1)
    assert nitro._not_before(cert).isoformat() == "2019-10-28T13:28:05+00:00"
    assert nitro._not_after(cert).isoformat() == "2049-10-28T14:28:05+00:00"
    assert NitroVerifier().root.der == root.der


def test_bundled_root_fingerprint_is_enforced(pki, monkeypatch):
    monkeypatch.setattr(nitro, "AWS_NITRO_ROOT_G1_SHA256", "00" * 32)
    with pytest.raises(VerificationFailed, match="fingerprint"):
        NitroVerifier()


def test_root_pem_must_be_a_certificate():
    with pytest.raises(ValueError):
        NitroVerifier(root_pem=b"not a pem")


def test_root_pem_must_be_self_signed(pki):
    from cryptography.hazmat.primitives import serialization

    inter_pem = pki.inter_cert.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ValueError, match="self-signed"):
        NitroVerifier(root_pem=inter_pem)


@pytest.mark.parametrize(
    "kw",
    [
        dict(expected_pcrs={32: b"x"}),
        dict(expected_pcrs={"0": b"x"}),
        dict(expected_pcrs={0: "00"}),
        dict(max_age_secs=-1),
        dict(max_age_secs=float("nan")),
        dict(future_skew_secs=-1),
        dict(at_ms=-1),
        dict(at_ms=1.5),
        dict(at_ms=10**18),
    ],
)
def test_bad_construction_arguments(pki, kw):
    with pytest.raises(ValueError):
        NitroVerifier(root_pem=pki.root_pem, **kw)


def test_every_failure_is_an_attest_error(pki):
    for doc in (b"", P.make_document(pki, timestamp=0), P.make_document(pki) + b"x"):
        with pytest.raises(AttestError):
            verifier(pki).verify(doc)
