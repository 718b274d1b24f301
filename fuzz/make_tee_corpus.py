"""Seed corpora for the confidential-VM harnesses, from the genuine evidence in
tests/data (deterministic): fuzz/corpus/{snp_document,az_snp_document,tdx_quote}/."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cmlp.attestation.az_snp.files import document_from_files  # noqa: E402
from cmlp.attestation.snp.document import document_from_vendor_files  # noqa: E402
from cmlp.attestation.tdx import encode_document, parse_quote  # noqa: E402

DATA = REPO / "tests" / "data"
OUT = REPO / "fuzz" / "corpus"


def write(name: str, seeds) -> None:
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    for i, blob in enumerate(seeds, 1):
        (d / f"seed_{i}").write_bytes(blob)


def main() -> None:
    snp = DATA / "snp-docs"
    write(
        "snp_document",
        [
            document_from_vendor_files(
                (snp / "milan-v2__trustee__test-report.bin").read_bytes(),
                (snp / "milan-v2__trustee__test-vcek.der").read_bytes(),
            )
        ],
    )
    az = DATA / "az-snp-docs"
    write(
        "az_snp_document",
        [
            document_from_files(
                (az / "az-snp__trustee__hcl-report.bin").read_bytes(),
                (az / "az-snp__trustee__vcek.pem").read_bytes(),
            )
        ],
    )
    q = parse_quote((DATA / "tdx-docs" / "dcap-qvl" / "tdx_quote").read_bytes()).raw
    v5 = (DATA / "tdx-docs" / "go-tdx-guest" / "quote_v5_sample.dat").read_bytes()
    write("tdx_quote", [encode_document(q), q, v5])


if __name__ == "__main__":
    main()
