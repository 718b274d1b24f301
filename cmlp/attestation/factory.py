"""Provider/verifier pairs for the command-line tools.

``mock``   MOCK_ATT_V1 documents (no security; measurements may be claimed
           with ``--mock-measurement`` to exercise pinning).
``nitro``  the enclave asks /dev/nsm for a document; peers are verified
           against the AWS Nitro root, PCRs pinned by the manifest.
``none``   this side presents no document (a host orchestrator without a TEE);
           peers must be configured to accept an unattested host.
``sev-snp``     AMD SEV-SNP guest: /dev/sev-guest extended report; peers verified
                against the built-in AMD roots (transport.md 5.6).
``az-sev-snp``  Azure SEV-SNP confidential VM: vTPM HCL report + IMDS chain (5.7).
``tdx``         Intel TDX guest: configfs-tsm quote; peers verified against the Intel
                SGX Root CA with PCS collateral passed in offline (5.8).

The confidential-VM verifiers use the reference's production policy unless
``tee_policy="development"`` (debug guests, any VMPL, no TCB binding, TDX
without collateral: never in production).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from cmlp.attestation.mock import MockProvider, MockVerifier
from cmlp.errors import InsecureConfiguration

KINDS = ("mock", "nitro", "none")
TEE_KINDS = ("sev-snp", "az-sev-snp", "tdx")
PEER_KINDS = ("mock", "nitro") + TEE_KINDS


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
        from cmlp.attestation.nitro.nsm import NitroProvider

        return NitroProvider()
    if kind == "none":
        return NoAttestation()
    if kind == "sev-snp":
        from cmlp.attestation.snp.provider import SnpProvider

        return SnpProvider()
    if kind == "az-sev-snp":
        from cmlp.attestation.az_snp.provider import AzSnpProvider

        return AzSnpProvider()
    if kind == "tdx":
        from cmlp.attestation.tdx.provider import TdxProvider

        return TdxProvider()
    raise ValueError(f"unknown attestation kind {kind!r}")


def make_verifier(
    kind: str,
    nitro_root_pem: Optional[bytes] = None,
    *,
    tdx_collateral_dir: Optional[str] = None,
    tee_policy: str = "production",
):
    """The peers' verifier.  ``nitro_root_pem`` replaces the bundled AWS Nitro root
    as the trust anchor (test and staging PKIs only; never in production).
    ``tdx_collateral_dir``: Intel PCS collateral for TDX peers (see
    cmlp.attestation.tdx.collateral)."""
    if nitro_root_pem is not None and kind != "nitro":
        raise ValueError("a Nitro root CA only applies to nitro attestation")
    if tdx_collateral_dir is not None and kind != "tdx":
        raise ValueError("TDX collateral only applies to tdx attestation")
    if tee_policy not in ("production", "development"):
        raise ValueError(f"unknown TEE policy {tee_policy!r}")
    if kind in ("sev-snp", "az-sev-snp"):
        from cmlp.attestation.snp.policy import SnpVerifyPolicy

        policy = getattr(SnpVerifyPolicy, tee_policy)()
        if kind == "sev-snp":
            from cmlp.attestation.snp.verifier import SnpVerifier

            return SnpVerifier(policy)
        from cmlp.attestation.az_snp.verifier import AzSnpVerifier

        return AzSnpVerifier(policy)
    if kind == "tdx":
        from cmlp.attestation.tdx.collateral import load_collateral_dir
        from cmlp.attestation.tdx.policy import TdxVerifyPolicy
        from cmlp.attestation.tdx.verifier import TdxVerifier

        if tdx_collateral_dir is None and tee_policy == "production":
            raise ValueError(
                "tdx attestation with the production policy needs Intel PCS "
                "collateral: pass --tdx-collateral DIR "
                "(scripts/fetch_tdx_collateral.sh)"
            )
        collateral = load_collateral_dir(tdx_collateral_dir) if tdx_collateral_dir else None
        return TdxVerifier(getattr(TdxVerifyPolicy, tee_policy)(), collateral=collateral)
    if kind == "mock":
        return MockVerifier()
    if kind == "nitro":
        from cmlp.attestation.nitro import NitroVerifier

        return NitroVerifier(root_pem=nitro_root_pem)
    raise ValueError(f"unknown peer attestation kind {kind!r}")


def add_tee_arguments(parser) -> None:
    """``--tdx-collateral`` and ``--tee-policy`` for the command-line tools."""
    parser.add_argument(
        "--tdx-collateral",
        metavar="DIR",
        default=None,
        help="Intel PCS collateral (TCB Info, QE Identity, CRLs, issuer chains) "
        "for verifying TDX peers (with --attestation tdx)",
    )
    parser.add_argument(
        "--tee-policy",
        choices=("production", "development"),
        default="production",
        help="SEV-SNP/TDX verification policy (development accepts debug guests, "
        "any VMPL, no TCB binding, TDX without collateral; default: "
        "production)",
    )


def read_nitro_root(path: Optional[str]) -> Optional[bytes]:
    """``--nitro-root-pem FILE``: the PEM bytes (None when the option is absent)."""
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


MOCK_IN_PRODUCTION = (
    "the production profile refuses mock attestation: anyone can make a mock "
    "document claiming any measurement; use real attestation (e.g. "
    "--attestation nitro) or --profile development"
)


def is_mock(obj) -> bool:
    """True for mock providers and verifiers (and anything else declaring platform "mock")."""
    return getattr(obj, "platform", None) == "mock"


def refuse_mock_in_production(production: bool, *parts) -> None:
    """Start-up gate (pipeline.md hardening item 6, enforced at run time here):
    in the production profile no provider or verifier may be a mock one."""
    if production and any(is_mock(p) for p in parts):
        raise InsecureConfiguration(MOCK_IN_PRODUCTION)
