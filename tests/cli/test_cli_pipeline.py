"""The console scripts as users run them: cmlp-stage + cmlp-orch processes on a tiny GPT-2.

Also: killing a stage at every point of its life (the orchestrator must fail
fast naming it, leaving no orphan processes or listening ports) and recovery
with persistent stages.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cmlp import errors
from cmlp.pipeline.gpt2 import Generator, generate
from cmlp.tokenizer import load_tokenizer
from tests.helpers import mitm
from tests.helpers.pipeline import (
    cli_env,
    manifest_dict,
    orchestrator,
    run_orch_process,
    start_stage_process,
    stop_processes,
    write_manifest,
)

PROMPT = "The capital of France is"


def tiny_manifest(tmp_path, n=2, relay=False, name="manifest.json"):
    """A manifest for the tiny preset (4 layers, n_embd 64) on free ports."""
    doc = manifest_dict(n, total_layers=4, relay=relay, max_seq_len=1024, hidden_dim=64)
    return write_manifest(tmp_path, doc, name), doc


def start_stages(manifest_path, n, model_dir, extra=()):
    return [start_stage_process(manifest_path, i, model_dir, extra) for i in range(n)]


def listening_ports():
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(name).read_text().splitlines()[1:]:
            f = row.split()
            if f[3] == "0A":
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def manifest_ports(doc):
    ports = set()
    for s in doc["stages"]:
        for k in ("control", "data_in", "data_out"):
            ports.add(int(s["endpoint"][k]["addr"].rsplit(":", 1)[1]))
    return ports


def wait_listening(doc, timeout=60):
    want = {int(s["endpoint"]["control"]["addr"].rsplit(":", 1)[1]) for s in doc["stages"]}
    assert mitm.wait_until(lambda: want <= listening_ports(), timeout), "stages not listening"


# ---------------------------------------------------------------------------
# normal runs
# ---------------------------------------------------------------------------
@pytest.mark.fast_cases("3-True")
@pytest.mark.parametrize("n, relay", [(2, False), (3, True)])
def test_orchestrator_output_and_latency_file(tiny, tmp_path, n, relay):
    path, doc = tiny_manifest(tmp_path, n, relay)
    procs = start_stages(path, n, tiny)
    try:
        wait_listening(doc)
        lat = tmp_path / "lat.json"
        out = run_orch_process(path, PROMPT, 6, ["--latency-out", str(lat)])
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(PROMPT) and out.stdout.endswith("\n")
        data = json.loads(lat.read_text())
        assert list(data) == sorted(data)
        assert data["generation_tokens"] == 5 and len(data["latencies_ms"]) == 6
        assert data["prompt_ms"] == data["latencies_ms"][0]
        assert data["prompt_ids"] == [464, 3139, 286, 4881, 318]
        tok = load_tokenizer()
        assert out.stdout == PROMPT + tok.decode(data["generated_ids"]) + "\n"
        assert len(data["stage_compute_us"]) == 6 and len(data["stage_compute_us"][0]) == n
        for label in (
            "--- Latency Summary ---",
            "Prompt (TTFT):",
            "Generation avg:",
            "Generation p50:",
            "Generation p95:",
            "Tokens generated: 6",
            "Pipeline overhead p50:",
        ):
            assert label in out.stderr
        for p in procs:  # the reference behaviour: stages exit after Shutdown
            assert p.wait(20) == 0
    finally:
        stop_processes(procs)


@pytest.mark.slow  # four rounds of stage processes; persistent sessions: fast in tests/pipeline
def test_prompts_file_in_one_session_equals_fresh_runs(tiny, tmp_path):
    path, doc = tiny_manifest(tmp_path, 2)
    prompts = ["The capital of France is", "Once upon a time", "def main():"]
    fresh = []
    for p in prompts:
        procs = start_stages(path, 2, tiny)
        try:
            wait_listening(doc)
            out = run_orch_process(path, p, 5)
            assert out.returncode == 0, out.stderr
            fresh.append(out.stdout)
        finally:
            stop_processes(procs)
    pf = tmp_path / "prompts.txt"
    pf.write_text("\n".join(prompts) + "\n")
    procs = start_stages(path, 2, tiny, ["--persistent"])
    try:
        wait_listening(doc)
        cmd = [
            sys.executable,
            "-m",
            "cmlp.cli.orch",
            "--manifest",
            str(path),
            "--prompts-file",
            str(pf),
            "--max-tokens",
            "5",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "".join(fresh)
        # the persistent stages are still there for another session
        again = run_orch_process(path, prompts[1], 5)
        assert again.stdout == fresh[1]
    finally:
        stop_processes(procs)


def test_help_flags_and_entry_points():
    out = subprocess.run(
        [sys.executable, "-m", "cmlp.cli.orch", "--help"], capture_output=True, text=True, env=cli_env()
    )
    for flag in (
        "--manifest",
        "--tokenizer",
        "--text",
        "--max-tokens",
        "--latency-out",
        "--data-out-listen",
        "--prompts-file",
        "--recover",
    ):
        assert flag in out.stdout
    assert "--data-out-port" not in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "cmlp.cli.stage", "--help"], capture_output=True, text=True, env=cli_env()
    )
    for flag in (
        "--manifest",
        "--stage-idx",
        "--model-dir",
        "--data-out-target",
        "--threads",
        "--persistent",
    ):
        assert flag in out.stdout


# ---------------------------------------------------------------------------
# dying stages
# ---------------------------------------------------------------------------
def pipeline_with_processes(tiny, tmp_path, persistent=False):
    path, doc = tiny_manifest(tmp_path, 2)
    extra = ["--persistent"] if persistent else []
    procs = start_stages(path, 2, tiny, extra)
    wait_listening(doc)
    from cmlp.manifest import Manifest

    return Manifest.load(path), doc, procs, path


def run_in_thread(fn):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def assert_clean_exit(procs, doc, survivors_timeout=20):
    """No orphan stage processes, no stage still listening."""
    for p in procs:
        try:
            p.wait(survivors_timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"stage process {p.pid} is still running after the failure")
    assert mitm.wait_until(lambda: not (manifest_ports(doc) & listening_ports()), 10)


# fast tier: frozen in the handshake and mid-request, killed between requests; the full grid is slow
@pytest.mark.fast_cases("1-handshake", "1-decode", "0-between-requests")
@pytest.mark.parametrize("when", ["handshake", "prefill", "decode", "between-requests"])
@pytest.mark.parametrize("victim", [0, 1])
def test_kill_stage(tiny, tmp_path, when, victim):
    manifest, doc, procs, _ = pipeline_with_processes(tiny, tmp_path)
    orch = orchestrator(manifest, infer_timeout=20)
    try:
        ids = load_tokenizer().encode(PROMPT)
        if when == "handshake":
            os.kill(procs[victim].pid, signal.SIGSTOP)  # frozen before it answers
            t, box = run_in_thread(orch.start)
        else:
            orch.start()
            if when == "decode":
                generate(orch, ids, 3)
            if when == "between-requests":
                generate(orch, ids, 3)
                os.kill(procs[victim].pid, signal.SIGKILL)
                procs[victim].wait(5)
                t, box = run_in_thread(lambda: generate(orch, ids, 3))
            else:
                os.kill(procs[victim].pid, signal.SIGSTOP)  # frozen mid-request
                t, box = run_in_thread(lambda: generate(orch, ids, 3))
        time.sleep(0.5)
        killed_at = time.monotonic()
        if procs[victim].poll() is None:
            os.kill(procs[victim].pid, signal.SIGKILL)
        t.join(15)
        assert not t.is_alive(), "the orchestrator hung"
        elapsed = time.monotonic() - killed_at
        err = box.get("error")
        assert isinstance(err, errors.StageFailed), repr(err)
        assert err.stage_idx == victim or f"stage {victim}" in str(err), str(err)
        assert elapsed < 10
    finally:
        orch.close()
    assert_clean_exit(procs, doc)


def test_cli_orchestrator_names_the_killed_stage(tiny, tmp_path):
    path, doc = tiny_manifest(tmp_path, 2)
    procs = start_stages(path, 2, tiny)
    try:
        wait_listening(doc)
        orch = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cmlp.cli.orch",
                "--manifest",
                str(path),
                "--text",
                PROMPT,
                "--max-tokens",
                "1000",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        assert mitm.wait_until(lambda: procs[1].poll() is None and orch.poll() is None, 5)
        time.sleep(1.5)
        procs[1].kill()
        t0 = time.monotonic()
        _, err = orch.communicate(timeout=15)
        assert time.monotonic() - t0 < 10
        assert orch.returncode != 0
        assert "stage 1" in err and "Traceback" not in err
    finally:
        stop_processes(procs)


def test_recovery_replays_the_context(tiny, tmp_path):
    """--recover: a killed persistent stage is restarted; the text equals an uninterrupted run."""
    manifest, doc, procs, path = pipeline_with_processes(tiny, tmp_path, persistent=True)
    ids = load_tokenizer().encode(PROMPT)
    try:
        orch = orchestrator(manifest)
        orch.start()
        reference = generate(orch, ids, 30).generated_ids
        orch.shutdown()

        def connect():
            return orchestrator(manifest, infer_timeout=10).start()

        gen = Generator(connect(), connect, recover=2, recover_timeout=60)
        killed = {}

        def on_token(tok):
            if len(killed) == 0 and on_token.count == 10:
                procs[1].kill()  # dies between step 10 and 11
                procs[1].wait(5)
                killed["at"] = on_token.count
                procs[1] = start_stage_process(path, 1, tiny, ["--persistent"])
            on_token.count += 1

        on_token.count = 0
        out = gen.generate(ids, 30, on_token)
        gen.shutdown()
        assert killed and out.recoveries == 1
        assert out.generated_ids == reference
    finally:
        stop_processes(procs)


def test_without_recovery_a_killed_stage_is_fatal(tiny, tmp_path):
    manifest, doc, procs, _ = pipeline_with_processes(tiny, tmp_path, persistent=True)
    try:
        orch = orchestrator(manifest)
        orch.start()
        procs[0].kill()
        procs[0].wait(5)
        with pytest.raises(errors.StageFailed, match="stage 0"):
            generate(orch, [1, 2, 3], 3)
        orch.close()
    finally:
        stop_processes(procs)
