"""Sustained load: 1,000 requests through a persistent relayed 3-stage pipeline, and
100 concurrent echo sessions.

The driver process warms up on every prompt first, then reports its RSS; the
test reads every stage's RSS at the same two points.  Each process may grow
by less than 5 % after warm-up, and every answer must equal the first answer
to the same prompt (no desynchronisation).
"""

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from cmlp.attestation import MockProvider, MockVerifier
from cmlp.model.synthetic import init_model
from cmlp.transport import SecureChannel, SessionConfig, sockets
from tests.helpers.pipeline import cli_env, manifest_dict, start_stage_process, stop_processes, write_manifest

DRIVER = r"""
import json, sys
from cmlp.attestation import MockProvider, MockVerifier
from cmlp.manifest import Manifest
from cmlp.pipeline.gpt2 import generate
from cmlp.pipeline.orchestrator import Orchestrator, OrchestratorConfig
from cmlp.transport.config import RetryPolicy

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

manifest = Manifest.load(sys.argv[1])
cfg = OrchestratorConfig.development(MockProvider(), MockVerifier(),
                                     retry=RetryPolicy(max_retries=40, initial_delay=0.05))
orch = Orchestrator(manifest, cfg).start()
prompts = [[(7 * i + j) % 50000 for j in range(1 + i % 9)] for i in range(10)]
answers, requests = {}, 0

def run(prompt):
    global requests
    ids = generate(orch, prompt, 20).generated_ids
    requests += 20
    key = tuple(prompt)
    if answers.setdefault(key, ids) != ids:
        raise SystemExit(f"desynchronised: prompt {key} gave {ids}, first {answers[key]}")

for p in prompts * 1:                  # warm-up: every prompt length once (200 requests)
    run(p)
print(json.dumps({"phase": "warm", "rss_kb": rss_kb(), "requests": requests}), flush=True)
sys.stdin.readline()
while requests < 1000:
    run(prompts[(requests // 20) % len(prompts)])
print(json.dumps({"phase": "done", "rss_kb": rss_kb(), "requests": requests}), flush=True)
sys.stdin.readline()
orch.shutdown()
"""


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


@pytest.mark.sustained
def test_thousand_requests_relayed_three_stages(tmp_path):
    model = init_model(tmp_path / "tiny", preset="tiny")
    doc = manifest_dict(3, total_layers=4, relay=True, max_seq_len=1024, hidden_dim=64)
    path = write_manifest(tmp_path, doc)
    stages = [start_stage_process(path, i, model, ["--persistent"]) for i in range(3)]
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        warm = json.loads(driver.stdout.readline() or "{}")
        assert warm.get("phase") == "warm", driver.stderr.read()
        stage_warm = [rss_kb(p.pid) for p in stages]
        driver.stdin.write("\n")
        driver.stdin.flush()
        done = json.loads(driver.stdout.readline() or "{}")
        assert done.get("phase") == "done", driver.stderr.read()
        stage_done = [rss_kb(p.pid) for p in stages]
        driver.stdin.write("\n")
        driver.stdin.flush()
        assert driver.wait(60) == 0, driver.stderr.read()
        assert done["requests"] >= 1000
        growth = [
            (b - a) / a
            for a, b in zip([warm["rss_kb"]] + stage_warm, [done["rss_kb"]] + stage_done, strict=True)
        ]
        print(
            "\nRSS growth after warm-up (driver, stage 0-2): "
            + ", ".join(f"{100 * g:+.2f} %" for g in growth)
        )
        assert all(g < 0.05 for g in growth), growth
        assert all(p.poll() is None for p in stages)  # persistent: still serving
    finally:
        driver.kill()
        stop_processes(stages)


@pytest.mark.sustained
def test_hundred_concurrent_echo_sessions(tmp_path):
    from tests.helpers.common import free_port

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cmlp.cli.main",
            "echo-server",
            "--listen",
            f"127.0.0.1:{port}",
            "--max-connections",
            "128",
            "--log-level",
            "error",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert "listening" in server.stdout.readline()
        results, errors_ = [], []
        barrier = threading.Barrier(100)

        def client(i):
            try:
                ch = SecureChannel.connect(
                    sockets.connect(sockets.TcpAddr("127.0.0.1", port)),
                    MockProvider(),
                    MockVerifier(),
                    SessionConfig.development(handshake_timeout=30),
                )
                barrier.wait(30)  # all 100 sessions open at once
                for k in range(10):
                    msg = f"client {i} message {k}".encode()
                    ch.send(msg)
                    assert ch.recv(timeout=30).payload == msg
                ch.send_tensor("t", np.full(256, i, np.float32))
                assert ch.recv(timeout=30).tensor.data[0] == i
                ch.shutdown()
                ch.close()
                results.append(i)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors_.append(repr(exc))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(100)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors_, errors_[:3]
        assert sorted(results) == list(range(100))
        print(f"\n100 concurrent sessions x 11 echoes in {time.monotonic() - t0:.2f} s")
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(10)
