"""Arbitrary bytes -> the mock attestation verifier (transport.md 5.2 + cmlp's MEAS extension).

On success the fields must re-encode to a document that decodes to the same
values, and the verifier's document_hash must be SHA-256 of the raw bytes.
"""

import hashlib

import _harness

MODE = _harness.setup()

import atheris  # noqa: E402

with atheris.instrument_imports(include=["cmlp"]):
    from cmlp.attestation.mock import MockVerifier, decode_mock_document, encode_mock_document
    from cmlp.errors import CmlpError

MAX_INPUT = 1 << 17
VERIFIER = MockVerifier()


def test_one_input(data: bytes) -> None:
    try:
        verified = VERIFIER.verify(data)
    except CmlpError:
        return
    assert verified.document_hash == hashlib.sha256(data).digest()
    fields = decode_mock_document(data)
    assert fields == (verified.user_data, verified.nonce, verified.public_key, verified.measurements)
    assert decode_mock_document(encode_mock_document(*fields)) == fields


if __name__ == "__main__":
    _harness.check_native_loaded(MODE)
    _harness.run(test_one_input, MAX_INPUT, max_len=4096)
