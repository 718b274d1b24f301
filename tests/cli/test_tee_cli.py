"""``cmlp attest verify`` for sev-snp, az-sev-snp and tdx: wire documents and the
files vendors and public repositories publish, --at, pins, verdict lines and exit
codes; ``--attestation`` choices on cmlp-stage / cmlp-orch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from cmlp.attestation.snp.document import document_from_vendor_files
from cmlp.attestation.tdx import encode_document, parse_quote
from cmlp.cli.main import main

DATA = Path(__file__).parents[1] / "data"
SNP, AZ, TDX = DATA / "snp-docs", DATA / "az-snp-docs", DATA / "tdx-docs"

VG = "milan-v2__virtee-sev__"
CASES = [
    # (argv, exit, first line)
    (
        [
            "--report",
            SNP / f"{VG}report_milan.hex",
            "--vcek",
            SNP / f"{VG}vcek_milan.der",
            "--at",
            "1680550000000",
        ],
        0,
        "VERDICT: ACCEPT",
    ),
    (
        [
            "--report",
            SNP / "milan-v2__go-sev-guest__attestation.bin",
            "--vcek",
            SNP / "milan-v2__go-sev-guest__vcek.der",
            "--at",
            "1663981000000",
        ],
        2,
        "VERDICT: REJECT SNP_DEBUG_GUEST_REJECTED: guest POLICY.DEBUG is set",
    ),
    (
        [
            "--report",
            SNP / "milan-v2__go-sev-guest__attestation.bin",
            "--vcek",
            SNP / "milan-v2__go-sev-guest__vcek.der",
            "--at",
            "1663981000000",
            "--allow-debug",
        ],
        0,
        "VERDICT: ACCEPT",
    ),
    (
        [
            "--report",
            SNP / "milan-v3-vlek__trustee__test-vlek-report.bin",
            "--vcek",
            SNP / "milan-v3-vlek__trustee__test-vlek.der",
            "--at",
            "1733869000000",
        ],
        2,
        "VERDICT: REJECT SNP_VMPL_MISMATCH",
    ),
    (
        [
            "--report",
            SNP / "milan-v3-vlek__trustee__test-vlek-report.bin",
            "--vcek",
            SNP / "milan-v3-vlek__trustee__test-vlek.der",
            "--at",
            "1733869000000",
            "--vmpl",
            "1",
        ],
        0,
        "VERDICT: ACCEPT",
    ),
    (
        [
            "--report",
            SNP / "milan-v2__trustee__test-report.bin",
            "--vcek",
            SNP / "milan-v2__trustee__test-vcek.der",
            "--at",
            "1674584000000",
        ],
        0,
        "VERDICT: ACCEPT",
    ),
    (
        [
            "--report",
            SNP / "milan-v2__trustee__test-report.bin",
            "--vcek",
            SNP / "milan-v2__trustee__test-vcek.der",
            "--at",
            "1900000000000",
        ],
        2,
        "VERDICT: REJECT SNP_VEK_EXPIRED",
    ),
    (
        [
            "--report",
            SNP / "milan-v2__trustee__test-report.bin",
            "--vcek",
            SNP / "milan-v2__trustee__test-vcek.der",
            "--at",
            "1674584000000",
            "--measurement",
            "0=" + "00" * 48,
        ],
        2,
        "VERDICT: REJECT SNP_MEASUREMENT_MISMATCH",
    ),
    (
        [
            "--hcl",
            AZ / "az-snp__trustee__hcl-report.bin",
            "--vcek",
            AZ / "az-snp__trustee__vcek.pem",
            "--at",
            "1683063000000",
        ],
        0,
        "VERDICT: ACCEPT",
    ),
    (["--evidence", AZ / "az-snp__trustee__evidence-v2.json", "--at", "1738083000000"], 0, "VERDICT: ACCEPT"),
    (
        [
            "--quote",
            TDX / "dcap-qvl/tdx_quote",
            "--collateral",
            TDX / "dcap-qvl/tdx_quote_collateral.json",
            "--at",
            "1751624191000",
        ],
        0,
        "VERDICT: ACCEPT",
    ),
    (
        [
            "--quote",
            TDX / "dcap-qvl/tdx_quote",
            "--collateral",
            TDX / "dcap-qvl/tdx_quote_collateral.json",
            "--at",
            "1754000000000",
        ],
        2,
        "VERDICT: REJECT TDX_COLLATERAL_STALE",
    ),
    (
        ["--quote", TDX / "dcap-qvl/tdx_quote", "--at", "1751624191000"],
        2,
        "VERDICT: REJECT TDX_COLLATERAL_MISSING",
    ),
    (
        [
            "--quote",
            TDX / "trustee/tdx_quote_4.dat",
            "--collateral",
            TDX / "go-tdx-guest",
            "--at",
            "1687939438000",
        ],
        2,
        "VERDICT: REJECT TDX_DEBUG_TD_REJECTED",
    ),
    (
        [
            "--quote",
            TDX / "trustee/tdx_quote_6.dat",
            "--collateral",
            TDX / "tinfoil-verifier",
            "--at",
            "1769530199000",
        ],
        2,
        "VERDICT: REJECT TDX_TCB_STATUS_UNACCEPTABLE",
    ),
    (
        [
            "--quote",
            TDX / "trustee/tdx_quote_6.dat",
            "--collateral",
            TDX / "tinfoil-verifier",
            "--at",
            "1769530199000",
            "--accept-tcb-status",
            "OutOfDate",
        ],
        0,
        "VERDICT: ACCEPT",
    ),
    (
        [
            "--quote",
            TDX / "go-tdx-guest/quote_v5_sample.dat",
            "--collateral",
            TDX / "tinfoil-verifier",
            "--at",
            "1770174696000",
            "--measurement",
            "1=" + "00" * 48,
        ],
        2,
        "VERDICT: REJECT TDX_RTMR_MISMATCH",
    ),
]


def run_cli(argv, capsys):
    code = main(["attest", "verify"] + [str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv,exit_code,first", CASES)
def test_vendor_files(argv, exit_code, first, capsys):
    code, out, err = run_cli(argv, capsys)
    assert code == exit_code, (out, err)
    assert out.splitlines()[0].startswith(first), out


def test_wire_documents_and_marker_detection(tmp_path, capsys):
    snp = tmp_path / "snp.bin"
    snp.write_bytes(
        document_from_vendor_files(
            (SNP / "milan-v2__trustee__test-report.bin").read_bytes(),
            (SNP / "milan-v2__trustee__test-vcek.der").read_bytes(),
        )
    )
    code, out, _ = run_cli(["--doc", snp, "--at", "1674584000000"], capsys)
    assert code == 0 and "kind: sev-snp" in out
    tdx = tmp_path / "tdx.bin"
    tdx.write_bytes(encode_document(parse_quote((TDX / "dcap-qvl/tdx_quote").read_bytes()).raw))
    code, out, _ = run_cli(
        ["--doc", tdx, "--collateral", TDX / "dcap-qvl/tdx_quote_collateral.json", "--at", "1751624191000"],
        capsys,
    )
    assert code == 0 and "kind: tdx" in out and "tcb_status: UpToDate" in out
    bad = bytearray(snp.read_bytes())
    bad[16 + 0x90] ^= 1
    snp.write_bytes(bytes(bad))
    code, out, _ = run_cli(["--doc", snp, "--at", "1674584000000"], capsys)
    assert code == 2 and out.startswith("VERDICT: REJECT SNP_REPORT_SIG_INVALID")


def test_bad_input_is_exit_1(capsys):
    assert main(["attest", "verify", "--report", str(SNP / "missing.bin"), "--vcek", "x"]) == 1
    assert main(["attest", "verify", "--kind", "sev-snp"]) == 1
    assert (
        main(["attest", "verify", "--quote", str(TDX / "dcap-qvl/tdx_quote"), "--accept-tcb-status", "Great"])
        == 1
    )
    assert main(["attest", "verify"]) == 1
    capsys.readouterr()


def test_subprocess_verdict(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmlp.cli.main",
            "attest",
            "verify",
            "--evidence",
            str(AZ / "az-snp__trustee__evidence-genoa.json"),
            "--at",
            "1737686000000",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("VERDICT: ACCEPT\nkind: az-sev-snp")
    assert "product: Genoa" in proc.stdout


@pytest.mark.parametrize("module", ["cmlp.cli.stage", "cmlp.cli.orch"])
def test_entry_points_accept_every_kind(module):
    import importlib

    parser = importlib.import_module(module).build_parser()
    for kind in ("mock", "nitro", "sev-snp", "az-sev-snp", "tdx"):
        base = ["--manifest", "m.json"]
        base += ["--stage-idx", "0"] if module.endswith("stage") else ["--text", "hi"]
        args = parser.parse_args(base + ["--attestation", kind, "--tee-policy", "development"])
        assert args.attestation == kind and args.tee_policy == "development"
    with pytest.raises(SystemExit):
        parser.parse_args(["--manifest", "m.json", "--attestation", "sgx"])


def test_factory_builds_every_kind(tmp_path):
    from cmlp.attestation.factory import make_provider, make_verifier

    for kind in ("sev-snp", "az-sev-snp", "tdx"):
        assert make_provider(kind).platform == kind
        assert make_verifier(kind, tee_policy="development").platform == kind
    for kind in ("sev-snp", "az-sev-snp"):
        assert make_verifier(kind).platform == kind
    v = make_verifier("tdx", tdx_collateral_dir=str(TDX / "dcap-rs"))
    assert v.collateral.tcb_infos
    with pytest.raises(ValueError, match="--tdx-collateral"):
        make_verifier("tdx")
    with pytest.raises(ValueError):
        make_verifier("sev-snp", tdx_collateral_dir=str(TDX))
    with pytest.raises(ValueError):
        make_verifier("tdx", tee_policy="lenient")


def test_stage_with_tdx_needs_collateral_in_production(capsys):
    from cmlp.cli.stage import main as stage_main
    from tests.helpers.executors import IdentityExecutor

    manifest = Path(__file__).resolve().parents[2] / "cmlp" / "data" / "manifests" / "manifest_2stage.json"
    code = stage_main(
        ["--manifest", str(manifest), "--stage-idx", "0", "--attestation", "tdx"],
        make_executor=lambda args, manifest: IdentityExecutor(),
    )
    err = capsys.readouterr().err
    assert code == 1 and "--tdx-collateral" in err and len(err.strip().splitlines()) == 1


def test_echo_takes_every_kind_and_pins(tmp_path):
    """The echo pair as a model-free attestation check: kinds parse, and a mock
    session with a measurement pin the peer does not meet fails the handshake."""
    import socket

    from cmlp.cli.main import build_parser

    parser = build_parser()
    for kind in ("mock", "nitro", "sev-snp", "az-sev-snp", "tdx"):
        a = parser.parse_args(
            [
                "echo-client",
                "--connect",
                "127.0.0.1:1",
                "--attestation",
                kind,
                "--expect-measurement",
                "0=" + "00" * 48,
            ]
        )
        assert a.attestation == kind and a.expect_measurement == [(0, bytes(48))]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "cmlp.cli.main", "echo-server", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert "listening" in server.stdout.readline()
        ok = subprocess.run(
            [
                sys.executable,
                "-m",
                "cmlp.cli.main",
                "echo-client",
                "--connect",
                f"127.0.0.1:{port}",
                "--count",
                "1",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert ok.returncode == 0, ok.stderr
        pinned = subprocess.run(
            [
                sys.executable,
                "-m",
                "cmlp.cli.main",
                "echo-client",
                "--connect",
                f"127.0.0.1:{port}",
                "--count",
                "1",
                "--expect-measurement",
                "0=" + "00" * 48,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert pinned.returncode != 0 and "measurement[0]" in pinned.stderr
    finally:
        server.terminate()
        server.wait(10)
