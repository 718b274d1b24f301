"""Arbitrary bytes -> the TDX verifier (transport.md 5.8): wire document,
quote v4/v5 header/body/signature section, certification data, PCK chain, and
the DCAP checks against genuine collateral (dcap-qvl sample, fixed instant).

Both entry points are fuzzed: ``verify`` (wire document, strict) and
``verify_quote`` (a raw published quote).  Only typed errors may escape.
"""

import hashlib
from pathlib import Path

import _harness

MODE = _harness.setup()

import atheris  # noqa: E402

with atheris.instrument_imports(include=["cmlp"]):
    from cmlp.attestation.tdx import TdxVerifier, TdxVerifyPolicy, collateral_from_dcap_qvl_json
    from cmlp.errors import CmlpError

MAX_INPUT = 1 << 16
COLLATERAL = collateral_from_dcap_qvl_json(
    (
        Path(__file__).resolve().parents[1]
        / "tests"
        / "data"
        / "tdx-docs"
        / "dcap-qvl"
        / "tdx_quote_collateral.json"
    ).read_bytes()
)
VERIFIER = TdxVerifier(TdxVerifyPolicy.development(), collateral=COLLATERAL, at_ms=1751624191000)


def test_one_input(data: bytes) -> None:
    for entry in (VERIFIER.verify, VERIFIER.verify_quote):
        try:
            verified = entry(data)
        except CmlpError:
            continue
        if entry is VERIFIER.verify:
            assert verified.document_hash == hashlib.sha256(data).digest()
        assert len(verified.measurements) == 5


if __name__ == "__main__":
    _harness.check_native_loaded(MODE)
    _harness.run(test_one_input, MAX_INPUT, max_len=16384)
