"""scripts/setup_env.sh shows what it installs and pip's own progress, never a silent `pip -q`
(issue 17, item 1).  pip is replaced by a stub that records its arguments."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess

import pytest

from tests.helpers.common import REPO

STUB = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../calls.txt"
echo "Collecting something (stub pip output)"
"""


def fake_venv(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(STUB)
    py.chmod(py.stat().st_mode | stat.S_IXUSR)
    return venv


def run_setup(venv, *args):
    env = dict(os.environ, CMLP_VENV=str(venv))
    return subprocess.run(
        [str(REPO / "scripts" / "setup_env.sh"), *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="Debian tooling")
def test_every_install_step_is_announced_with_pips_progress(tmp_path):
    venv = fake_venv(tmp_path)
    r = run_setup(venv, "--test")
    assert r.returncode == 0, r.stderr
    calls = (venv / "calls.txt").read_text().splitlines()
    pip_calls = [c for c in calls if c.startswith("-m pip install")]
    assert len(pip_calls) == 5, calls  # 2 for cmlp, 3 for the test tools
    for c in pip_calls:
        words = c.split()
        assert "-q" not in words and "--quiet" not in words, c
        assert "--progress-bar on" in c, c
    err = r.stderr
    for step in ("step 1/2", "step 2/2", "step 1/3", "step 2/3", "step 3/3"):
        assert re.search(rf"\] installing [^\n]*\({step}", err), err
    assert err.count("Collecting something") == 5  # pip's own output reaches the user
    assert err.count("] installed ") == 5  # and each step says it finished
    # a second run has nothing to do and says nothing
    r = run_setup(venv, "--test")
    assert r.returncode == 0 and r.stderr == "" and r.stdout == ""
    assert len((venv / "calls.txt").read_text().splitlines()) == len(calls)


def test_no_script_installs_silently():
    for script in (REPO / "scripts").glob("*.sh"):
        for n, line in enumerate(script.read_text().splitlines(), 1):
            if "pip install" in line and not line.lstrip().startswith("#"):
                words = line.split()
                assert "-q" not in words and "--quiet" not in words, f"{script.name}:{n}: {line}"
