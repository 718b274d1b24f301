"""The Nitro verifier's strict CBOR reader and COSE_Sign1 framing."""

import time

import pytest

cbor2 = pytest.importorskip("cbor2")

from cmlp.attestation.nitro import UNDEFINED, CborError, decode_cbor, parse_cose_sign1, sig_structure
from cmlp.errors import VerificationFailed


@pytest.mark.parametrize(
    "value",
    [
        0,
        23,
        24,
        255,
        256,
        65535,
        65536,
        2**32,
        2**64 - 1,
        -1,
        -24,
        -25,
        -(2**64),
        b"",
        b"\x00" * 300,
        "",
        "héllo",
        [],
        [1, [2, [3]]],
        {},
        {"a": 1, 2: b"x", b"k": [None]},
        None,
        True,
        False,
        1.5,
        -0.0,
    ],
)
def test_roundtrips_cbor2_encodings(value):
    assert decode_cbor(cbor2.dumps(value)) == value


def test_undefined_is_distinct_from_null():
    assert decode_cbor(b"\xf7") is UNDEFINED
    assert decode_cbor(b"\xf6") is None


def test_byte_strings_are_the_exact_input_bytes():
    blob = bytes(range(256)) * 3
    assert decode_cbor(cbor2.dumps([blob]))[0] == blob


def test_indefinite_lengths():
    assert decode_cbor(b"\x5f\x42ab\x41c\xff") == b"abc"
    assert decode_cbor(b"\x7f\x62ab\x61c\xff") == "abc"
    assert decode_cbor(b"\x9f\x01\x9f\x02\xff\xff") == [1, [2]]
    assert decode_cbor(b"\xbf\x61a\x01\x61b\x02\xff") == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"\xa2\x61a\x01\x61a\x02", "duplicate map key"),
        (b"\xa2\x01\x01\x01\x02", "duplicate map key"),
        (b"\xbf\x61a\x01\x61a\x02\xff", "duplicate map key"),
        (b"\x01\x00", "trailing"),
        (b"\x42a", "truncated"),
        (b"\x1c", "reserved"),
        (b"\x1f", "indefinite-length integer"),
        (b"\xc1\x01", "tag"),
        (b"\x81\xd2\x01", "tag"),
        (b"\x62\xff\xfe", "UTF-8"),
        (b"\x5f\x61a\xff", "chunk"),
        (b"\x5f\x5f\xff\xff", "chunk"),
        (b"\xff", "break"),
        (b"\x82\x01\xff", "break"),
        (b"\xa1\x81\x01\x01", "map key"),
        (b"\xa1\xf5\x01", "map key"),
        (b"\xa1\xf9\x3c\x00\x01", "map key"),
        (b"\xf8\x20", "simple"),
        (b"\xe0", "simple"),
        (b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff", "truncated"),
        (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", "exceeds the input"),
        (b"\xbb\x00\x00\x00\x01\x00\x00\x00\x00", "exceeds the input"),
        (b"", "truncated"),
    ],
)
def test_rejects_malformed_or_out_of_profile(data, fragment):
    with pytest.raises(CborError, match=fragment):
        decode_cbor(data)


def test_deep_nesting_is_bounded_without_recursion_error():
    for opener in (b"\x81", b"\x9f", b"\xa1\x00"):
        data = opener * 200_000 + b"\x00"
        start = time.perf_counter()
        with pytest.raises(CborError, match="nesting"):
            decode_cbor(data)
        assert time.perf_counter() - start < 1.0


def test_item_count_is_bounded():
    with pytest.raises(CborError, match="items"):
        decode_cbor(cbor2.dumps([0] * 5000))
    assert len(decode_cbor(cbor2.dumps([0] * 4000))) == 4000


def test_top_level_tag_only_when_allowed():
    inner = cbor2.dumps([b"", {}, b"p", b"s"])
    tagged = b"\xd2" + inner
    assert decode_cbor(tagged, allow_tag=18) == [b"", {}, b"p", b"s"]
    assert decode_cbor(inner, allow_tag=18) == [b"", {}, b"p", b"s"]
    with pytest.raises(CborError):
        decode_cbor(tagged)
    with pytest.raises(CborError):
        decode_cbor(b"\xd8\x62" + inner, allow_tag=18)  # COSE_Sign (98)
    with pytest.raises(CborError):
        decode_cbor(b"\xd2\xd2" + inner, allow_tag=18)  # nested tag


def test_sig_structure_matches_cbor2():
    for protected, payload in ((b"\xa1\x01\x38\x22", b"x" * 5000), (b"", b""), (b"p" * 30, b"y" * 70000)):
        assert sig_structure(protected, payload) == cbor2.dumps(["Signature1", protected, b"", payload])


def test_parse_cose_sign1_keeps_protected_bytes_verbatim():
    # A non-canonical protected header (alg as a 2-byte negative int) must be
    # kept byte for byte: the signature covers the received encoding.
    protected = b"\xa1\x01\x39\x00\x22"
    cose = parse_cose_sign1(cbor2.dumps([protected, {}, b"payload", b"s" * 96]))
    assert cose.protected_bytes == protected
    assert cose.protected == {1: -35}
    assert cose.payload == b"payload"


@pytest.mark.parametrize(
    "body, fragment",
    [
        ([b"", {}, b"p"], "4 elements"),
        ({"a": 1}, "4 elements"),
        ([b"", {}, b"p", b"s", b"x"], "4 elements"),
        (["", {}, b"p", b"s"], "protected header is not a byte string"),
        ([b"\x01", {}, b"p", b"s"], "protected header is not a map"),
        ([b"\xa1\x01", {}, b"p", b"s"], "protected header"),
        ([b"\xa1\x01\x38\x22\x00", {}, b"p", b"s"], "trailing"),
        ([b"", None, b"p", b"s"], "unprotected header is not a map"),
        ([b"", {}, "p", b"s"], "payload"),
        ([b"", {}, b"p", None], "signature"),
    ],
)
def test_parse_cose_sign1_rejects(body, fragment):
    with pytest.raises(VerificationFailed, match=fragment) as info:
        parse_cose_sign1(cbor2.dumps(body))
    assert "invalid COSE_Sign1" in str(info.value)
