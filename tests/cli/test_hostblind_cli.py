"""Host-blind mode as users run it: cmlp-stage processes, `cmlp serve`, `cmlp generate`.

The greedy ids must equal reference mode's (cmlp-orch on the same weights
and the same prompt), and stdout must be exactly the prompt then the text.
"""

import json
import subprocess
import sys

import pytest

from cmlp.model.synthetic import init_model
from cmlp.tokenizer import load_tokenizer
from tests.helpers import mitm
from tests.helpers.hostblind_helpers import hb_manifest_dict
from tests.helpers.pipeline import (
    cli_env,
    free_ports,
    manifest_dict,
    run_orch_process,
    start_stage_process,
    stop_processes,
    write_manifest,
)

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model(tmp_path_factory.mktemp("tiny"), preset="tiny")


def start_serve(manifest_path, port, extra=()):
    cmd = [
        sys.executable,
        "-m",
        "cmlp.cli.main",
        "serve",
        "--manifest",
        str(manifest_path),
        "--listen",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
    ] + list(extra)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())


def run_generate(manifest_path, port, text, extra=(), timeout=120):
    cmd = [
        sys.executable,
        "-m",
        "cmlp.cli.main",
        "generate",
        "--connect",
        f"127.0.0.1:{port}",
        "--manifest",
        str(manifest_path),
        "--text",
        text,
    ] + list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=timeout)


def wait_port(port, timeout=60):
    import socket

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    assert mitm.wait_until(up, timeout), f"nothing listens on {port}"


@pytest.mark.fast_cases("2-False")
@pytest.mark.parametrize("n, relay", [(2, False), (3, True)])
def test_generate_streams_reference_mode_ids(tiny, tmp_path, n, relay):
    ref_doc = manifest_dict(n, total_layers=4, relay=relay, max_seq_len=1024, hidden_dim=64)
    ref_path = write_manifest(tmp_path, ref_doc, "ref.json")
    procs = [start_stage_process(ref_path, i, tiny) for i in range(n)]
    try:
        out = run_orch_process(ref_path, PROMPT, 12, ["--latency-out", str(tmp_path / "ref.lat")])
        assert out.returncode == 0, out.stderr
    finally:
        stop_processes(procs)
    ref = json.loads((tmp_path / "ref.lat").read_text())

    doc = hb_manifest_dict(n, total_layers=4, relay=relay, max_seq_len=1024, hidden_dim=64)
    path = write_manifest(tmp_path, doc, "hb.json")
    (port,) = free_ports(1)
    procs = [start_stage_process(path, i, tiny, ["--persistent"]) for i in range(n)]
    procs.append(start_serve(path, port))
    try:
        wait_port(port)
        lat = tmp_path / "hb.lat"
        out = run_generate(path, port, PROMPT, ["--max-tokens", "12", "--latency-out", str(lat)])
        assert out.returncode == 0, out.stderr
        got = json.loads(lat.read_text())
        assert got["generated_ids"] == ref["generated_ids"]
        assert got["prompt_ids"] == ref["prompt_ids"]
        assert got["finish_reason"] == "length"
        assert len(got["latencies_ms"]) == 12 and got["ttft_ms"] > 0
        text = load_tokenizer().decode(ref["generated_ids"])
        assert out.stdout == PROMPT + text + "\n"
        # a second client on the same stages: same ids (the session and KV cache are reset)
        again = run_generate(path, port, PROMPT, ["--max-tokens", "12"])
        assert again.returncode == 0 and again.stdout == out.stdout
    finally:
        stop_processes(procs)
        for p in procs:
            assert p.returncode is not None


def test_serve_refuses_a_reference_mode_manifest(tmp_path):
    path = write_manifest(tmp_path, manifest_dict(2), "ref.json")
    p = start_serve(path, free_ports(1)[0])
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert "no host_blind section" in err and len(err.strip().splitlines()) == 1
