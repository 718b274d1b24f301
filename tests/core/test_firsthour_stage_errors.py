"""A stage that cannot start says so where the user looks; Ctrl-C on the orchestrator ends the
session cleanly (issue 17, items 5 and 6).  Real stage and orchestrator processes throughout."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from cmlp.model.synthetic import init_model
from tests.helpers.pipeline import (
    cli_env,
    manifest_dict,
    run_orch_process,
    start_stage_process,
    stop_processes,
    write_manifest,
)

ORCH = [sys.executable, "-m", "cmlp.cli.orch"]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("fhs") / "tiny", preset="tiny")


def tiny_manifest(tmp_path, splits=((0, 2), (2, 4)), **kw):
    doc = manifest_dict(
        len(splits), total_layers=splits[-1][1], max_seq_len=1024, hidden_dim=64, splits=list(splits), **kw
    )
    return write_manifest(tmp_path, doc), doc


def wait_stopped(procs, timeout=30):
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    return [p.poll() for p in procs]


# --- item 5: a stage that cannot start ---------------------------------------------
@pytest.mark.slow  # the CLI retries a refused connection for seconds; the next test: fast
def test_refused_connection_names_the_stage_and_quotes_its_log(tiny, tmp_path):
    """The packaged small-model split on the tiny model: stage 1 dies on its layer range."""
    path, _ = tiny_manifest(tmp_path, splits=((0, 2), (2, 6)))
    doc = json.loads(path.read_text())
    doc["total_layers"] = 6
    path.write_text(json.dumps(doc))
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = []
    for i in range(2):
        with open(logs / f"stage{i}.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "cmlp.cli.stage",
                        "--manifest",
                        str(path),
                        "--stage-idx",
                        str(i),
                        "--model-dir",
                        str(tiny),
                        "--threads",
                        "1",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    env=cli_env(),
                )
            )
    try:
        assert procs[1].wait(60) == 1  # it cannot start
        env = cli_env()
        env["CMLP_STAGE_LOG"] = str(logs / "stage{idx}.log")
        r = subprocess.run(
            ORCH + ["--manifest", str(path), "--text", PROMPT, "--max-tokens", "2"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        stop_processes(procs)
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("cmlp-orch: error: stage 1 failed"), line
    assert "nothing listens there" in line
    assert f"its log {logs / 'stage1.log'}" in line
    assert "invalid layer range [2, 6)" in line, line  # the stage's own words


def test_refused_connection_without_logs_says_how_to_start_the_stage(tmp_path):
    path, _ = tiny_manifest(tmp_path)
    env = cli_env()
    env.pop("CMLP_STAGE_LOG", None)
    r = subprocess.run(
        ORCH + ["--manifest", str(path), "--text", PROMPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert "stage 0 failed" in line and "nothing listens there" in line
    assert f"cmlp-stage --manifest {path} --stage-idx 0" in line


def test_stage_that_refuses_init_tells_the_orchestrator_why(tiny, tmp_path):
    """Wrong weight hashes: the stage's reason arrives in the orchestrator's one line."""
    path, _ = tiny_manifest(tmp_path, stage_overrides={1: {"weight_hashes": ["0" * 64]}})
    procs = [start_stage_process(path, i, tiny) for i in range(2)]
    try:
        r = run_orch_process(path, PROMPT, max_tokens=2)
        codes = wait_stopped(procs)
    finally:
        stop_processes(procs)
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert "stage 1 failed" in line and "weight hash count mismatch" in line, r.stderr
    assert codes[0] == 0  # stage 0 only saw the orchestrator leave


def test_run_script_surfaces_the_stage_error(tiny, tmp_path):
    """scripts/run_local.sh with a manifest the model cannot serve: the stage's own line."""
    from tests.helpers.common import REPO

    path, _ = tiny_manifest(tmp_path, splits=((0, 2), (2, 6)))
    doc = json.loads(path.read_text())
    doc["total_layers"] = 6
    path.write_text(json.dumps(doc))
    env = cli_env()
    env.update(
        CMLP_SKIP_SETUP="1",
        MODEL_DIR=str(tiny),
        MANIFEST=str(path),
        CMLP_VENV=str(tmp_path / "novenv"),
        TMPDIR=str(tmp_path),
    )
    r = subprocess.run(
        [str(REPO / "scripts" / "run_local.sh"), PROMPT, "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert r.returncode != 0
    assert "stage 1 could not start" in r.stderr, r.stderr
    assert "invalid layer range [2, 6)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    kept = list(tmp_path.glob("cmlp-stages.*"))  # the logs stay for the user
    assert len(kept) == 1 and f"stage logs kept in {kept[0]}" in r.stderr
    assert "invalid layer range" in (kept[0] / "stage1.log").read_text()


# --- item 6: Ctrl-C on the orchestrator ------------------------------------------------
def start_generating(path):
    orch = subprocess.Popen(
        ORCH + ["--manifest", str(path), "--text", PROMPT, "--max-tokens", "1000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    # generation has begun once the prompt (then a token) is on stdout
    first = orch.stdout.read(len(PROMPT) + 1)
    assert first.startswith(PROMPT), (first, orch.stderr.read() if orch.poll() else "")
    time.sleep(0.3)
    return orch


def gone_lines(text):
    return [line for line in text.splitlines() if "the orchestrator went away" in line]


def test_sigint_to_the_orchestrator_ends_the_session_cleanly(tiny, tmp_path):
    path, _ = tiny_manifest(tmp_path, splits=((0, 1), (1, 3), (3, 4)))
    procs = [start_stage_process(path, i, tiny, log_level="info") for i in range(3)]
    try:
        orch = start_generating(path)
        orch.send_signal(signal.SIGINT)
        out, err = orch.communicate(timeout=30)
        codes = wait_stopped(procs)
        errs = [p.stderr.read() for p in procs]
    finally:
        stop_processes(procs)
    assert orch.returncode == 130 and err.strip().endswith("interrupted"), err
    assert out.endswith("\n") and out.count("\n") == 1  # the partial line is ended
    assert codes == [0, 0, 0], errs
    for text in errs:
        assert len(gone_lines(text)) == 1, text
        assert "exiting" in gone_lines(text)[0]
        assert "error" not in text.lower(), text


def test_sigint_leaves_persistent_stages_serving(tiny, tmp_path):
    path, doc = tiny_manifest(tmp_path)
    procs = [start_stage_process(path, i, tiny, ["--persistent"], log_level="info") for i in range(2)]
    try:
        orch = start_generating(path)
        orch.send_signal(signal.SIGINT)
        orch.communicate(timeout=30)
        assert orch.returncode == 130
        time.sleep(1.0)  # let the stages settle
        assert [p.poll() for p in procs] == [None, None]
        r = run_orch_process(path, PROMPT, max_tokens=3)  # the next session works
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(PROMPT)
    finally:
        stop_processes(procs)
    errs = [p.stderr.read() for p in procs]
    for text in errs:
        lines = gone_lines(text)
        assert len(lines) == 1 and "waiting for the next session" in lines[0], text
