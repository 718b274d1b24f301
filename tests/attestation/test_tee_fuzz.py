"""Short bounded atheris runs of the confidential-VM parser harnesses
(fuzz/fuzz_snp_document.py, fuzz_az_snp_document.py, fuzz_tdx_quote.py) over
their committed seed corpora (genuine evidence), like tests/test_fuzz.py does
for the other parsers.  These parsers are pure Python, so the harnesses run
with Python-level coverage (no native build needed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.common import rss_limit_mb

pytestmark = pytest.mark.fuzz

REPO = Path(__file__).resolve().parents[2]
FUZZ = REPO / "fuzz"
HARNESSES = ("snp_document", "az_snp_document", "tdx_quote")
SECONDS = 5


@pytest.mark.parametrize("name", HARNESSES)
def test_tee_harness_finds_nothing(name, tmp_path):
    pytest.importorskip("atheris")
    pytest.importorskip("cryptography")
    new_inputs, artifacts = tmp_path / "new", tmp_path / "artifacts"
    new_inputs.mkdir()
    artifacts.mkdir()
    env = dict(os.environ, CMLP_FUZZ_NATIVE="0")
    cmd = [
        sys.executable,
        str(FUZZ / f"fuzz_{name}.py"),
        str(new_inputs),
        str(FUZZ / "corpus" / name),
        f"-max_total_time={SECONDS}",
        "-timeout=10",
        f"-rss_limit_mb={rss_limit_mb()}",
        "-malloc_limit_mb=16",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=SECONDS + 90)
    log = run.stdout + run.stderr
    found = sorted(p.name for p in artifacts.iterdir())
    assert run.returncode == 0 and not found, f"finding(s) {found}:\n{log[-6000:]}"
    execs = re.search(r"stat::number_of_executed_units: *(\d+)", log)
    assert execs and int(execs.group(1)) > 100, log[-3000:]


def test_tee_seed_corpus_is_the_genuine_evidence():
    for name in HARNESSES:
        seeds = sorted((FUZZ / "corpus" / name).iterdir())
        assert seeds and sum(p.stat().st_size for p in seeds) < 64 * 1024, name
    assert (FUZZ / "corpus" / "snp_document" / "seed_1").read_bytes()[:12] == b"SEV_SNP_V1\0\0"
    assert (FUZZ / "corpus" / "tdx_quote" / "seed_1").read_bytes()[:6] == b"TDX_V1"
