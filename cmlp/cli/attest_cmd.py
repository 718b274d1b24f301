"""``cmlp attest verify``: check an AWS Nitro attestation document offline.

Prints ``VERDICT: ACCEPT`` (exit 0) with the document's facts, or
``VERDICT: REJECT`` and the reason (exit 2).  Bad input (unreadable file,
malformed ``--pcr``) is one line on stderr and exit 1.

The default max age is the verifier's 300 s (the reference's example tool
uses 24 h; transport.md section 11.15).  To replay a captured document, pass
``--at`` with an instant inside its leaf certificate's 3-hour lifetime, e.g.
its own timestamp.
"""

from __future__ import annotations

import math
import sys
from datetime import datetime, timezone

from cmlp.cli.common import add_log_level


def register(subparsers) -> None:
    attest = subparsers.add_parser("attest", help="attestation document tools")
    actions = attest.add_subparsers(dest="attest_action", metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        help="verify Nitro, SEV-SNP, Azure SEV-SNP or TDX attestation evidence",
        description="Verify attestation evidence offline: an AWS Nitro document against the "
        "pinned AWS Nitro root G1, or SEV-SNP / Azure SEV-SNP / TDX evidence "
        "against the built-in AMD and Intel roots. Exit 0 = ACCEPT, "
        "2 = REJECT, 1 = bad input.",
    )
    verify.add_argument(
        "--doc",
        metavar="FILE",
        help="attestation document: Nitro COSE_Sign1, or a SEV_SNP_V1 / AZ_SNP_V1 / TDX_V1 wire document",
    )
    verify.add_argument(
        "--at",
        metavar="UNIX_MS",
        help="verify as of this instant, in ms since the epoch "
        "(certificate validity and freshness); default: now",
    )
    verify.add_argument(
        "--max-age-secs", metavar="N", default="300", help="maximum document age in seconds (default: 300)"
    )
    verify.add_argument(
        "--pcr", action="append", default=[], metavar="IDX=HEX", help="pin PCR IDX to HEX (repeatable)"
    )
    verify.add_argument("--all-pcrs", action="store_true", help="print every PCR, not only the non-zero ones")
    verify.add_argument(
        "--root-pem",
        metavar="FILE",
        help="trust this root CA instead of the bundled AWS Nitro root G1 (test PKIs only)",
    )
    from cmlp.cli import attest_tee

    attest_tee.register_arguments(verify)
    add_log_level(verify)
    verify.set_defaults(func=run_verify, prog_name="cmlp attest verify")


def parse_pcr_pins(specs) -> dict:
    from cmlp.attestation.nitro import PCR_SIZES  # the verifier's definition (no crypto import)

    pins = {}
    for spec in specs:
        idx_text, sep, hex_text = spec.partition("=")
        if not sep:
            raise ValueError(f"--pcr {spec!r}: expected IDX=HEX")
        try:
            idx = int(idx_text, 10)
        except ValueError:
            raise ValueError(f"--pcr {spec!r}: index {idx_text!r} is not an integer") from None
        if not 0 <= idx <= 31:
            raise ValueError(f"--pcr {spec!r}: index must be 0..31")
        if idx in pins:
            raise ValueError(f"--pcr: PCR{idx} given twice")
        hex_text = hex_text.strip()
        if hex_text[:2].lower() == "0x":
            hex_text = hex_text[2:]
        try:
            value = bytes.fromhex(hex_text)
        except ValueError:
            raise ValueError(f"--pcr {idx}: value is not valid hex") from None
        if len(value) not in PCR_SIZES:
            sizes = ", ".join(map(str, PCR_SIZES[:-1])) + f" or {PCR_SIZES[-1]}"
            raise ValueError(f"--pcr {idx}: expected {sizes} bytes, got {len(value)}")
        pins[idx] = value
    return pins


def _parse_at(text):
    if text is None:
        return None
    try:
        value = int(text, 10)
    except ValueError:
        raise ValueError(f"--at {text!r}: expected an integer (ms since the epoch)") from None
    if not 0 <= value <= 253_402_300_799_999:
        raise ValueError("--at must be between 0 and 253402300799999 (year 9999)")
    return value


def _parse_max_age(text) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--max-age-secs {text!r}: expected a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError("--max-age-secs must be a finite non-negative number")
    return value


def _read(path: str, what: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)  # one byte over: the verifier reports "too large"
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None


def _iso(ms: object) -> str:
    try:
        when = datetime.fromtimestamp(float(ms) / 1000.0, tz=timezone.utc)  # type: ignore[arg-type]  # details are the verifier's untyped map; bad values land in the except
    except (OverflowError, OSError, ValueError, TypeError):
        return "out of range"
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _size(value) -> str:
    return "absent" if value is None else f"{len(value)} bytes"


def run_verify(args) -> int:
    from cmlp.cli import attest_tee

    kind = attest_tee.detect_kind(args)
    if kind != "nitro":
        return attest_tee.run(args, kind, _parse_at(args.at))
    if not args.doc:
        raise ValueError(
            "--doc is required (or --report/--hcl/--evidence/--quote for the confidential-VM kinds)"
        )
    pins = parse_pcr_pins(args.pcr)
    at_ms = _parse_at(args.at)
    max_age = _parse_max_age(args.max_age_secs)
    from cmlp.attestation import nitro  # no hard dependency: imports cleanly

    document = _read(args.doc, "--doc", nitro.MAX_DOCUMENT_SIZE)
    root_pem = _read(args.root_pem, "--root-pem", 1 << 20) if args.root_pem else None
    try:
        verifier = nitro.NitroVerifier(pins, root_pem=root_pem, max_age_secs=max_age, at_ms=at_ms)
    except ImportError as exc:
        print(f"{args.prog_name}: error: {exc}", file=sys.stderr)
        return 1

    from cmlp.errors import AttestError

    try:
        verified = verifier.verify(document)
    except AttestError as exc:
        print("VERDICT: REJECT")
        print(f"reason: {type(exc).__name__}: {exc}")
        return 2

    d = verified.details
    out = [
        "VERDICT: ACCEPT",
        f"document_sha256: {verified.document_hash.hex()}",
        f"module_id: {d['module_id']}",
        f"timestamp: {d['timestamp_ms']} ({_iso(d['timestamp_ms'])})",
        f"verified_at: {d['verified_at_ms']} ({_iso(d['verified_at_ms'])})",
        f"digest: {d['digest']}",
        f"leaf: {d['leaf_subject']}",
    ]
    pcrs = verified.measurements
    shown = {i: v for i, v in pcrs.items() if args.all_pcrs or any(v)}
    out.append(
        f"pcrs: {len(pcrs)} registers, {sum(1 for v in pcrs.values() if any(v))} non-zero"
        + (f", pinned: {', '.join(f'PCR{i}' for i in pins)}" if pins else "")
    )
    out.extend(f"  PCR{i}: {v.hex()}" for i, v in shown.items())
    out.append(f"public_key: {_size(verified.public_key)}")
    out.append(f"nonce: {_size(verified.nonce)}")
    out.append(f"user_data: {_size(verified.user_data)}")
    print("\n".join(out))
    return 0
