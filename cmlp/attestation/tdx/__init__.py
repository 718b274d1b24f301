"""Intel TDX attestation (transport.md 5.8): DCAP quotes v4/v5, PCK chain,
PCS collateral passed in offline, TCB status, policy."""

from cmlp.attestation.tdx.collateral import (
    TdxCollateral,
    collateral_from_dcap_qvl_json,
    load_collateral_dir,
)
from cmlp.attestation.tdx.document import MARKER, decode_document, encode_document
from cmlp.attestation.tdx.policy import TdxVerifyPolicy
from cmlp.attestation.tdx.quote import Quote, parse_quote
from cmlp.attestation.tdx.verifier import PLATFORM, TdxVerifier

__all__ = [
    "TdxCollateral",
    "collateral_from_dcap_qvl_json",
    "load_collateral_dir",
    "MARKER",
    "decode_document",
    "encode_document",
    "TdxVerifyPolicy",
    "Quote",
    "parse_quote",
    "PLATFORM",
    "TdxVerifier",
]
