"""The README's commands, in order, on a fresh copy of the checkout (issue 17, item 9):
scripts/walkthrough.sh runs the quick start (scripts/run_local.sh) and then every line of
"Running by hand", reading them from README.md, and fails on any error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers.common import REPO


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout to copy"
)
def test_readme_quick_start_then_by_hand_on_a_fresh_copy(tmp_path):
    env = dict(
        os.environ,
        WALKTHROUGH_DIR=str(tmp_path / "walk"),
        WALKTHROUGH_VENV=sys.prefix,
        OPENBLAS_NUM_THREADS="1",
    )
    r = subprocess.run(
        [str(REPO / "scripts" / "walkthrough.sh")], capture_output=True, text=True, env=env, timeout=1800
    )
    tail = "\n".join((r.stdout + r.stderr).splitlines()[-60:])
    assert r.returncode == 0, tail
    err = r.stderr
    assert "walkthrough passed" in err
    # the quick start generated text, then the by-hand section ran in the same directory
    assert "+ scripts/run_local.sh" in err
    assert err.index("+ scripts/run_local.sh") < err.index("+ cmlp model init --out model")
    assert "reusing it" in err  # item 2: model init after the quick start
    assert "+ cmlp-orch" in err
    texts = [line for line in r.stdout.splitlines() if line.startswith("The capital of France is")]
    assert len(texts) == 2, r.stdout  # one generation per section
    assert "Traceback" not in err
