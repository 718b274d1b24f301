"""Arbitrary bytes -> the Azure SEV-SNP verifier (transport.md 5.7): wire
document, HCL header/runtime header/VarData JSON, PEM chain, the SNP checks.
Only typed errors (CmlpError) may escape."""

import hashlib

import _harness

MODE = _harness.setup()

import atheris  # noqa: E402

with atheris.instrument_imports(include=["cmlp"]):
    from cmlp.attestation.az_snp import AzSnpVerifier
    from cmlp.attestation.snp import SnpVerifyPolicy
    from cmlp.errors import CmlpError

MAX_INPUT = 1 << 16
VERIFIER = AzSnpVerifier(SnpVerifyPolicy.development(), at_ms=1683063000000)


def test_one_input(data: bytes) -> None:
    try:
        verified = VERIFIER.verify(data)
    except CmlpError:
        return
    assert verified.document_hash == hashlib.sha256(data).digest()


if __name__ == "__main__":
    _harness.check_native_loaded(MODE)
    _harness.run(test_one_input, MAX_INPUT, max_len=16384)
