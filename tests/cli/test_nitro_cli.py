"""``cmlp attest verify`` on genuine and synthetic documents."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cbor2")
pytest.importorskip("cryptography")

from cmlp.cli.main import main
from tests.helpers import nitro_pki as P

DOCS = Path(__file__).parents[1] / "data" / "nitro-docs"
ETERNIS = DOCS / "eternis-rav__example_attestation.cbor"
ETERNIS_TS = 1725911352400
ETERNIS_PCR4 = (
    "d352cfa31b8dc5f4856c9fa8181b19ed12f5da23883ac4ec729530f50dc1d37f1ac3876a7af39bd4de7a2aead14d14cb"
)


def run(capsys, *argv):
    rc = main(["attest", "verify", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_accept_prints_the_facts(capsys):
    rc, out, err = run(capsys, "--doc", ETERNIS, "--at", ETERNIS_TS)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "VERDICT: ACCEPT"
    assert f"document_sha256: {hashlib.sha256(ETERNIS.read_bytes()).hexdigest()}" in lines
    assert "module_id: i-0bbf1bfe232b8c2ce-enc0191ba35c9d1b77a" in lines
    assert f"timestamp: {ETERNIS_TS} (2024-09-09T19:49:12.400Z)" in lines
    assert "pcrs: 16 registers, 2 non-zero" in lines
    assert f"  PCR4: {ETERNIS_PCR4}" in lines
    assert "  PCR0: " + "00" * 48 not in lines
    assert "public_key: 5 bytes" in lines and "nonce: 20 bytes" in lines
    assert "user_data: 68 bytes" in lines
    assert err == ""


def test_all_pcrs_flag(capsys):
    rc, out, _ = run(capsys, "--doc", ETERNIS, "--at", ETERNIS_TS, "--all-pcrs")
    assert rc == 0
    assert sum(line.startswith("  PCR") for line in out.splitlines()) == 16


def test_absent_fields_are_reported(capsys):
    rc, out, _ = run(
        capsys, "--doc", DOCS / "worldcoin-pontifex__real-attestation-doc.cbor", "--at", 1758628609915
    )
    assert rc == 0
    assert "nonce: absent" in out and "user_data: absent" in out


def test_pcr_pin_accepts_and_rejects(capsys):
    rc, out, _ = run(capsys, "--doc", ETERNIS, "--at", ETERNIS_TS, "--pcr", f"4={ETERNIS_PCR4}")
    assert rc == 0 and "pinned: PCR4" in out
    rc, out, _ = run(capsys, "--doc", ETERNIS, "--at", ETERNIS_TS, "--pcr", "0=" + "11" * 48)
    assert rc == 2
    assert out.splitlines()[0] == "VERDICT: REJECT"
    assert "PCR0 mismatch" in out


def test_reject_without_at_because_expired(capsys):
    rc, out, _ = run(capsys, "--doc", ETERNIS)
    assert rc == 2
    assert "VERDICT: REJECT" in out and "Expired" in out


def test_reject_four_hours_later(capsys):
    rc, out, _ = run(capsys, "--doc", ETERNIS, "--at", ETERNIS_TS + 4 * 3600_000)
    assert rc == 2 and "Expired" in out
    rc, out, _ = run(capsys, "--doc", ETERNIS, "--at", ETERNIS_TS + 4 * 3600_000, "--max-age-secs", 86400)
    assert rc == 2 and "leaf is not valid" in out


@pytest.mark.parametrize(
    "name, ts",
    [
        ("eternis-rav__invalid_attestation.cbor", 1721770180771),
        ("blocky-nitrite__selfsigned_attestation.cbor", 1713379906),
        ("worldcoin-pontifex__mock-attestation-doc.cose.cbor", 1748469829761),
    ],
)
def test_reject_bad_documents(capsys, name, ts):
    rc, out, _ = run(capsys, "--doc", DOCS / name, "--at", ts)
    assert rc == 2
    assert out.startswith("VERDICT: REJECT\nreason: ")


def test_custom_root_for_a_test_pki(capsys, tmp_path):
    pki = P.make_pki()
    doc = tmp_path / "doc.cbor"
    doc.write_bytes(P.make_document(pki))
    root = tmp_path / "root.pem"
    root.write_bytes(pki.root_pem)
    rc, out, _ = run(capsys, "--doc", doc, "--at", P.T0_MS, "--root-pem", root)
    assert rc == 0 and "module_id: " + P.MODULE_ID in out
    rc, out, _ = run(capsys, "--doc", doc, "--at", P.T0_MS)  # bundled AWS root
    assert rc == 2 and "root" in out


def test_oversized_file_is_a_reject(capsys, tmp_path):
    doc = tmp_path / "big.cbor"
    doc.write_bytes(b"\x00" * 200_000)
    rc, out, _ = run(capsys, "--doc", doc)
    assert rc == 2 and "max 65536" in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--doc", "/nonexistent/doc.cbor"], "cannot read --doc"),
        (["--doc", ETERNIS, "--pcr", "0=zz"], "not valid hex"),
        (["--doc", ETERNIS, "--pcr", "0"], "IDX=HEX"),
        (["--doc", ETERNIS, "--pcr", "x=00"], "not an integer"),
        (["--doc", ETERNIS, "--pcr", "32=" + "00" * 48], "0..31"),
        (["--doc", ETERNIS, "--pcr", "0=0011"], "48 or 64 bytes"),
        (["--doc", ETERNIS, "--pcr", "1=" + "00" * 48, "--pcr", "1=" + "00" * 48], "twice"),
        (["--doc", ETERNIS, "--at", "yesterday"], "--at"),
        (["--doc", ETERNIS, "--at", "-5"], "--at"),
        (["--doc", ETERNIS, "--at", "99999999999999999999"], "--at"),
        (["--doc", ETERNIS, "--max-age-secs", "soon"], "--max-age-secs"),
        (["--doc", ETERNIS, "--max-age-secs", "inf"], "--max-age-secs"),
        (["--doc", ETERNIS, "--root-pem", "/nonexistent/root.pem"], "cannot read --root-pem"),
    ],
)
def test_bad_input_is_one_line_on_stderr(capsys, argv, fragment):
    rc, out, err = run(capsys, *argv)
    assert rc == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert fragment in err
    assert "Traceback" not in err


def test_not_a_pem_root(capsys, tmp_path):
    bad = tmp_path / "root.pem"
    bad.write_bytes(b"garbage")
    rc, out, err = run(capsys, "--doc", ETERNIS, "--root-pem", bad)
    assert rc == 1 and "PEM" in err and "Traceback" not in err


def test_subprocess_entry_point():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmlp.cli.main",
            "attest",
            "verify",
            "--doc",
            str(ETERNIS),
            "--at",
            str(ETERNIS_TS),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("VERDICT: ACCEPT\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cmlp.cli.main", "attest", "verify", "--doc", str(ETERNIS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout.startswith("VERDICT: REJECT\n")


def test_missing_optional_dependency_is_one_clear_line(tmp_path):
    # Simulate an install without the `nitro` extra: block `cryptography`.
    script = (
        "import sys; sys.modules['cryptography'] = None\n"
        "import cmlp.attestation.nitro as n\n"  # imports cleanly
        "try:\n    n.NitroVerifier()\nexcept ImportError as e:\n    print('IMPORT:', e)\n"
        "from cmlp.cli.main import main\n"
        f"sys.exit(main(['attest', 'verify', '--doc', {str(ETERNIS)!r}]))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert "IMPORT: AWS Nitro attestation needs the 'cryptography' package" in proc.stdout
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "cmlp[nitro]" in proc.stderr
