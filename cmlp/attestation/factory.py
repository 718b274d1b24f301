"""Provider/verifier pairs for the command-line tools.

``mock``   MOCK_ATT_V1 documents (no security; measurements may be claimed
           with ``--mock-measurement`` to exercise pinning).
``nitro``  the enclave asks /dev/nsm for a document; peers are verified
           against the AWS Nitro root, PCRs pinned by the manifest.
``none``   this side presents no document (a host orchestrator without a TEE);
           peers must be configured to accept an unattested host.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from cmlp.attestation.mock import MockProvider, MockVerifier
from cmlp.errors import InsecureConfiguration

KINDS = ("mock", "nitro", "none")


class NoAttestation:
    """Presents an empty document: only peers that allow an unattested host accept it."""
    platform = "none"

    def attest(self, user_data, nonce, public_key) -> bytes:
        return b""


def parse_measurement(text: str) -> Tuple[int, bytes]:
    """``IDX=HEX`` -> (idx, bytes)."""
    idx, sep, value = text.partition("=")
    if not sep or not idx.strip().isdigit():
        raise ValueError(f"measurement must look like IDX=HEX, got {text!r}")
    try:
        return int(idx), bytes.fromhex(value.strip())
    except ValueError:
        raise ValueError(f"measurement {idx} is not valid hex: {value!r}") from None


def make_provider(kind: str, mock_measurements: Optional[Dict[int, bytes]] = None):
    if kind == "mock":
        return MockProvider(mock_measurements)
    if kind == "nitro":
        from cmlp.attestation.nsm import NitroProvider
        return NitroProvider()
    if kind == "none":
        return NoAttestation()
    raise ValueError(f"unknown attestation kind {kind!r}")


def make_verifier(kind: str, nitro_root_pem: Optional[bytes] = None):
    """The peers' verifier.  ``nitro_root_pem`` replaces the bundled AWS Nitro root
    as the trust anchor (test and staging PKIs only; never in production)."""
    if nitro_root_pem is not None and kind != "nitro":
        raise ValueError("a Nitro root CA only applies to nitro attestation")
    if kind == "mock":
        return MockVerifier()
    if kind == "nitro":
        from cmlp.attestation.nitro import NitroVerifier
        return NitroVerifier(root_pem=nitro_root_pem)
    raise ValueError(f"unknown peer attestation kind {kind!r}")


def read_nitro_root(path: Optional[str]) -> Optional[bytes]:
    """``--nitro-root-pem FILE``: the PEM bytes (None when the option is absent)."""
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


MOCK_IN_PRODUCTION = ("the production profile refuses mock attestation: anyone can make a mock "
                      "document claiming any measurement; use real attestation (e.g. "
                      "--attestation nitro) or --profile development")


def is_mock(obj) -> bool:
    """True for mock providers and verifiers (and anything else declaring platform "mock")."""
    return getattr(obj, "platform", None) == "mock"


def refuse_mock_in_production(production: bool, *parts) -> None:
    """Start-up gate (pipeline.md hardening item 6, enforced at run time here):
    in the production profile no provider or verifier may be a mock one."""
    if production and any(is_mock(p) for p in parts):
        raise InsecureConfiguration(MOCK_IN_PRODUCTION)
