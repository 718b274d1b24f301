"""Arbitrary bytes -> the SEV-SNP verifier (transport.md 5.6): wire document,
1184-byte report, DER certificate stream, AMD chain, policy.

Only typed errors (CmlpError) may escape; an accepted document must hash to
its SHA-256 and report MEASUREMENT as measurement 0.  The clock is fixed at the
genuine seed's instant so the seeds verify and mutants reach every step.
"""

import hashlib

import _harness

MODE = _harness.setup()

import atheris  # noqa: E402

with atheris.instrument_imports(include=["cmlp"]):
    from cmlp.attestation.snp import SnpVerifier, SnpVerifyPolicy, parse_report
    from cmlp.attestation.snp.document import decode_document
    from cmlp.errors import CmlpError

MAX_INPUT = 1 << 16
VERIFIER = SnpVerifier(SnpVerifyPolicy.development(), at_ms=1674584000000)


def test_one_input(data: bytes) -> None:
    try:
        verified = VERIFIER.verify(data)
    except CmlpError:
        return
    assert verified.document_hash == hashlib.sha256(data).digest()
    report, _ = decode_document(data)
    assert verified.measurements == {0: parse_report(report).measurement}


if __name__ == "__main__":
    _harness.check_native_loaded(MODE)
    _harness.run(test_one_input, MAX_INPUT, max_len=8192)
