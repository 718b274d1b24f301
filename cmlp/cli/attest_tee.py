"""``cmlp attest verify`` for the confidential-VM kinds (sev-snp, az-sev-snp, tdx).

Inputs: a wire document (``--doc``, transport.md 5.6-5.8; the kind is taken
from its marker) or the files vendors and public repositories publish:

  sev-snp     --report FILE (1184 bytes, or its ASCII hex) --vcek FILE (VCEK or VLEK,
              DER or PEM); the ASK/ASVK and ARK are the built-in AMD ones
  az-sev-snp  --hcl FILE --vcek FILE (VCEK PEM/DER or the THIM VCEK+ASK+ARK bundle),
              or --evidence FILE (trustee az-snp-vtpm evidence JSON, v0/v1/v2)
  tdx         --quote FILE (trailing bytes after the parsed quote are ignored and
              reported) with --collateral DIR or a dcap-qvl collateral JSON

Prints ``VERDICT: ACCEPT`` (exit 0) or ``VERDICT: REJECT <CODE>: reason``
(exit 2); bad input is one line on stderr and exit 1.
"""

from __future__ import annotations

import os
import sys
import time

from cmlp.attestation.coded import error_code

MAX_INPUT = 1 << 20
KIND_BY_MARKER = (
    (b"SEV_SNP_V1\0\0", "sev-snp"),
    (b"AZ_SNP_V1\0\0\0", "az-sev-snp"),
    (b"TDX_V1" + bytes(6), "tdx"),
)


def register_arguments(verify) -> None:
    g = verify.add_argument_group("confidential VMs (sev-snp, az-sev-snp, tdx)")
    g.add_argument(
        "--kind",
        choices=("nitro", "sev-snp", "az-sev-snp", "tdx"),
        default=None,
        help="evidence kind (default: from the --doc marker, else from the vendor-file options, else nitro)",
    )
    g.add_argument("--report", metavar="FILE", help="raw SEV-SNP report (1184 bytes or hex)")
    g.add_argument("--vcek", metavar="FILE", help="VCEK/VLEK certificate (DER or PEM)")
    g.add_argument("--crl", metavar="FILE", help="AMD CRL (DER) for the SEV-SNP chain")
    g.add_argument("--hcl", metavar="FILE", help="Azure HCL report (vTPM NV 0x01400001)")
    g.add_argument("--evidence", metavar="FILE", help="trustee Azure SNP evidence JSON")
    g.add_argument("--quote", metavar="FILE", help="raw TDX quote")
    g.add_argument(
        "--collateral",
        metavar="DIR|FILE",
        help="Intel PCS collateral directory or dcap-qvl collateral JSON (TDX)",
    )
    g.add_argument(
        "--measurement",
        action="append",
        default=[],
        metavar="IDX=HEX",
        help="pin a measurement: SNP 0 = MEASUREMENT; TDX 0 = MRTD, 1..4 = RTMR0..3",
    )
    g.add_argument(
        "--tee-policy",
        choices=("production", "development"),
        default="production",
        help="SEV-SNP/TDX policy (default: production)",
    )
    g.add_argument("--allow-debug", action="store_true", help="accept debug guests / debug TDs")
    g.add_argument("--vmpl", metavar="N|any", default=None, help="SEV-SNP: required VMPL (production: 0)")
    g.add_argument(
        "--accept-tcb-status",
        action="append",
        default=[],
        metavar="STATUS",
        help="TDX: also accept this TCB status (e.g. OutOfDate; repeatable)",
    )


def detect_kind(args):
    if args.kind is not None:
        return args.kind
    if args.doc:
        try:
            with open(args.doc, "rb") as f:
                head = f.read(12)
        except OSError:
            return "nitro"  # the Nitro path reports the unreadable file
        for marker, kind in KIND_BY_MARKER:
            if head == marker:
                return kind
        return "nitro"
    if args.report:
        return "sev-snp"
    if args.hcl or args.evidence:
        return "az-sev-snp"
    if args.quote:
        return "tdx"
    return "nitro"


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_INPUT + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_INPUT:
        raise ValueError(f"{what} {path!r} is larger than {MAX_INPUT} bytes")
    return data


def _pins(specs) -> dict:
    pins = {}
    for spec in specs:
        idx, sep, value = spec.partition("=")
        if not sep or not idx.strip().isdigit():
            raise ValueError(f"--measurement {spec!r}: expected IDX=HEX")
        value = value.strip()
        if value[:2].lower() == "0x":
            value = value[2:]
        try:
            pins[int(idx)] = bytes.fromhex(value)
        except ValueError:
            raise ValueError(f"--measurement {idx}: value is not valid hex") from None
        if len(pins[int(idx)]) != 48:
            raise ValueError(f"--measurement {idx}: expected 48 bytes")
    return pins


def _snp_policy(args, pins):
    from cmlp.attestation.snp.policy import SnpVerifyPolicy

    over = {}
    if set(pins) - {0}:
        raise ValueError("SEV-SNP has one measurement (index 0)")
    if 0 in pins:
        over["expected_measurement"] = pins[0]
    if args.allow_debug:
        over["reject_debug"] = False
    if args.vmpl is not None:
        if args.vmpl == "any":
            over["require_vmpl"] = None
        elif args.vmpl.isdigit() and int(args.vmpl) <= 3:
            over["require_vmpl"] = int(args.vmpl)
        else:
            raise ValueError("--vmpl must be 0..3 or 'any'")
    if args.crl:
        over["crl_der"] = _read(args.crl, "--crl")
    return getattr(SnpVerifyPolicy, args.tee_policy)(**over)


def _tdx_policy(args, pins):
    from cmlp.attestation.tdx.policy import TCB_STATUSES, TdxVerifyPolicy

    over = {}
    if set(pins) - {0, 1, 2, 3, 4}:
        raise ValueError("TDX measurements are 0 (MRTD) and 1..4 (RTMR0..3)")
    if 0 in pins:
        over["expected_mrtd"] = pins[0]
    rtmrs = {i - 1: v for i, v in pins.items() if i >= 1}
    if rtmrs:
        over["expected_rtmrs"] = rtmrs
    if args.allow_debug:
        over["reject_debug_td"] = False
    base = getattr(TdxVerifyPolicy, args.tee_policy)()
    if args.accept_tcb_status:
        bad = set(args.accept_tcb_status) - set(TCB_STATUSES)
        if bad:
            raise ValueError(f"--accept-tcb-status: unknown {sorted(bad)}; one of {TCB_STATUSES}")
        over["accepted_tcb_statuses"] = base.accepted_tcb_statuses | set(args.accept_tcb_status)
    from dataclasses import replace

    return replace(base, **over)


def _collateral(path):
    from cmlp.attestation.tdx.collateral import collateral_from_bytes, load_collateral_dir

    if path is None:
        return None
    if os.path.isdir(path):
        return load_collateral_dir(path)
    return collateral_from_bytes(_read(path, "--collateral"))


def run(args, kind: str, at_ms) -> int:
    """Build the verifier and the document for ``kind``; print the verdict."""
    from cmlp.errors import AttestError

    pins = _pins(args.measurement)
    notes = []
    try:
        if kind == "sev-snp":
            from cmlp.attestation.snp import SnpVerifier
            from cmlp.attestation.snp.document import document_from_vendor_files

            verifier = SnpVerifier(_snp_policy(args, pins), at_ms=at_ms)
            if args.doc:
                make = lambda: _read(args.doc, "--doc")  # noqa: E731
            else:
                if not (args.report and args.vcek):
                    raise ValueError("sev-snp needs --doc, or --report and --vcek")
                report = _read(args.report, "--report")
                if len(report) != 1184:  # published as ASCII hex (virtee/sev)
                    try:
                        report = bytes.fromhex(report.decode("ascii").strip())
                    except (UnicodeDecodeError, ValueError):
                        pass
                vcek = _read(args.vcek, "--vcek")
                if vcek.lstrip().startswith(b"-----BEGIN"):
                    from cmlp.attestation.az_snp.document import pem_to_der_list

                    vcek = pem_to_der_list(vcek)[0]
                make = lambda: document_from_vendor_files(report, vcek)  # noqa: E731
            run_verify = lambda doc: verifier.verify(doc)  # noqa: E731
        elif kind == "az-sev-snp":
            from cmlp.attestation.az_snp import AzSnpVerifier
            from cmlp.attestation.az_snp.files import (
                document_from_evidence_json,
                document_from_files,
            )

            az_verifier = AzSnpVerifier(_snp_policy(args, pins), at_ms=at_ms)
            if args.doc:
                make = lambda: _read(args.doc, "--doc")  # noqa: E731
            elif args.evidence:
                ev = _read(args.evidence, "--evidence")
                make = lambda: document_from_evidence_json(ev)  # noqa: E731
            elif args.hcl and args.vcek:
                hcl, vcek = _read(args.hcl, "--hcl"), _read(args.vcek, "--vcek")
                make = lambda: document_from_files(hcl, vcek)  # noqa: E731
            else:
                raise ValueError("az-sev-snp needs --doc, --evidence, or --hcl and --vcek")
            run_verify = lambda doc: az_verifier.verify(doc)  # noqa: E731
        elif kind == "tdx":
            from cmlp.attestation.tdx import TdxVerifier
            from cmlp.attestation.tdx.quote import parse_quote

            tdx_verifier = TdxVerifier(
                _tdx_policy(args, pins), collateral=_collateral(args.collateral), at_ms=at_ms
            )
            if args.doc:
                make = lambda: _read(args.doc, "--doc")  # noqa: E731
                run_verify = lambda doc: tdx_verifier.verify(doc)  # noqa: E731
            elif args.quote:
                quote = _read(args.quote, "--quote")
                make = lambda: quote  # noqa: E731

                def run_verify(doc):
                    parsed = parse_quote(doc)
                    extra = len(doc) - len(parsed.raw)
                    if extra:
                        kind_of = "zero padding" if not any(doc[len(parsed.raw) :]) else "data"
                        notes.append(f"ignored {extra} bytes of {kind_of} after the quote")
                    return tdx_verifier.verify_quote(doc)
            else:
                raise ValueError("tdx needs --doc or --quote")
        else:
            raise ValueError(f"unknown kind {kind!r}")
    except ImportError as exc:
        print(f"{args.prog_name}: error: {exc}", file=sys.stderr)
        return 1
    try:
        document = make()
        t0 = time.perf_counter()
        verified = run_verify(document)
        elapsed = time.perf_counter() - t0
    except AttestError as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        print(f"VERDICT: REJECT {error_code(exc)}: {reason}")
        for note in notes:
            print(f"note: {note}")
        return 2
    d = verified.details
    out = [
        "VERDICT: ACCEPT",
        f"kind: {kind}",
        f"document_sha256: {verified.document_hash.hex()}",
        f"verify_ms: {elapsed * 1000:.2f}",
    ]
    for key in (
        "product",
        "report_version",
        "signing_key",
        "vmpl",
        "policy",
        "reported_tcb",
        "quote_version",
        "body_type",
        "tcb_status",
        "platform_tcb_status",
        "qe_tcb_status",
        "fmspc",
        "advisory_ids",
        "debug",
        "verified_at_ms",
    ):
        if key in d:
            value = d[key]
            shown = hex(value) if key == "policy" and isinstance(value, int) else value
            out.append(f"{key}: {shown}")
    names = {
        "sev-snp": ["MEASUREMENT"],
        "az-sev-snp": ["MEASUREMENT"],
        "tdx": ["MRTD", "RTMR0", "RTMR1", "RTMR2", "RTMR3"],
    }[kind]
    for idx, value in sorted(verified.measurements.items()):
        out.append(f"  measurement[{idx}] {names[idx]}: {value.hex()}")
    for name, value in (("public_key", verified.public_key), ("nonce", verified.nonce)):
        out.append(f"{name}: {'absent' if value is None else value.hex()}")
    out.extend(f"note: {n}" for n in notes)
    print("\n".join(out))
    return 0
