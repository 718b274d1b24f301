"""Verdict and time per verify for every genuine confidential-VM sample in
tests/data (SEV-SNP, Azure SEV-SNP HCL, TDX), each at its README instant, with
the production policy; side by side, the AWS Nitro verifier on its genuine
document as the peer figure.  Times are medians of REPEAT verifies of the wire
document (warm: certificates and collateral already loaded), one thread.

    OPENBLAS_NUM_THREADS=1 python bench/bench_tee_verify.py [--repeat N] [--markdown]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from cmlp.attestation.coded import error_code  # noqa: E402
from cmlp.errors import AttestError  # noqa: E402

DATA = REPO / "tests" / "data"


def cases():
    from test_az_snp_verifier import GENUINE as AZ
    from test_snp_verifier import GENUINE as SNP
    from test_snp_verifier import genuine_doc
    from test_tdx_verifier import GENUINE as TDX
    from test_tdx_verifier import doc_of

    from cmlp.attestation.az_snp import AzSnpVerifier
    from cmlp.attestation.snp import SnpVerifier
    from cmlp.attestation.tdx import TdxVerifier

    for s in SNP:
        yield f"snp/{s[0]}", SnpVerifier(at_ms=s[2]), genuine_doc(s)
    for s in AZ:
        yield f"az-snp/{s[0]}", AzSnpVerifier(at_ms=s[2]), s[1]()
    for s in TDX:
        yield f"tdx/{s[0]}", TdxVerifier(collateral=s[1](), at_ms=s[2]), doc_of(s)


def nitro_case():
    from cmlp.attestation.nitro import NitroVerifier

    doc = (DATA / "nitro-docs" / "worldcoin-pontifex__real-attestation-doc.cbor").read_bytes()
    from cmlp.attestation.nitro import parse_cose_sign1, parse_payload

    ts = parse_payload(parse_cose_sign1(doc).payload).timestamp_ms
    return "nitro/worldcoin-pontifex real doc", NitroVerifier(at_ms=ts), doc


def measure(verifier, doc, repeat):
    try:
        verifier.verify(doc)
        verdict, code = "ACCEPT", "-"
    except AttestError as exc:
        verdict, code = "REJECT", error_code(exc)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        try:
            verifier.verify(doc)
        except AttestError:
            pass
        times.append(time.perf_counter() - t0)
    return verdict, code, statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")),
        "unknown",
    )
    print(f"CPU: {model}; 1 thread; median of {args.repeat} verifies per sample")
    rows = [(name, *measure(v, d, args.repeat)) for name, v, d in [*cases(), nitro_case()]]
    if args.markdown:
        print("| sample | verdict | code | ms/verify |\n|---|---|---|---|")
        for name, verdict, code, ms in rows:
            print(f"| {name} | {verdict} | {code} | {ms:.2f} |")
    else:
        for name, verdict, code, ms in rows:
            print(f"{name:58s} {verdict:6s} {code:30s} {ms:7.2f} ms")


if __name__ == "__main__":
    main()
