"""Helpers to run whole pipelines inside a test: manifests on free ports, stage threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from cmlp.attestation import MockProvider, MockVerifier
from cmlp.manifest import Manifest
from cmlp.pipeline.orchestrator import Orchestrator, OrchestratorConfig
from cmlp.pipeline.stage import StageConfig, StageWorker
from cmlp.transport import SessionConfig
from cmlp.transport.config import RetryPolicy
from tests.helpers.common import free_ports  # noqa: F401 - imported from here by many tests

FAST_RETRY = RetryPolicy(max_retries=40, initial_delay=0.05, max_delay=0.2)


def manifest_dict(
    num_stages: int,
    total_layers: int = None,
    relay: bool = False,
    max_seq_len: int = 16,
    hidden_dim: int = 4,
    splits=None,
    stage_overrides=None,
):
    total_layers = total_layers or num_stages
    if splits is None:
        per, rem = divmod(total_layers, num_stages)
        bounds, start = [], 0
        for i in range(num_stages):
            end = start + per + (1 if i < rem else 0)
            bounds.append((start, end))
            start = end
    else:
        bounds = splits
    ports = free_ports(3 * num_stages + num_stages)
    stages = []
    for i, (a, b) in enumerate(bounds):
        ctl, din = ports[3 * i], ports[3 * i + 1]
        stages.append(
            {
                "stage_idx": i,
                "layer_start": a,
                "layer_end": b,
                "weight_hashes": [],
                "expected_measurements": {},
                "endpoint": {
                    "control": {"type": "tcp", "addr": f"127.0.0.1:{ctl}"},
                    "data_in": {"type": "tcp", "addr": f"127.0.0.1:{din}"},
                    "data_out": None,
                },
            }
        )
        stages[-1].update((stage_overrides or {}).get(i, {}))
    final = ports[-1]
    for i, s in enumerate(stages):
        if i == num_stages - 1:
            out = f"127.0.0.1:{final}"
        elif relay:
            out = f"127.0.0.1:{ports[3 * i + 2]}"
        else:
            out = stages[i + 1]["endpoint"]["data_in"]["addr"]
        s["endpoint"]["data_out"] = {"type": "tcp", "addr": out}
    return {
        "model_name": "test",
        "model_version": "1",
        "total_layers": bounds[-1][1],
        "stages": stages,
        "activation_spec": {"dtype": "F32", "hidden_dim": hidden_dim, "max_seq_len": max_seq_len},
    }


def make_manifest(*args, **kwargs) -> Manifest:
    return Manifest.from_json(json.dumps(manifest_dict(*args, **kwargs)))


class StageThread:
    """A StageWorker serving in a background thread."""

    def __init__(self, manifest: Manifest, idx: int, executor, persistent=False, data_out_target=None, **cfg):
        cfg.setdefault("retry", FAST_RETRY)
        config = StageConfig(
            provider=cfg.pop("provider", MockProvider()),
            verifier=cfg.pop("verifier", MockVerifier()),
            session=cfg.pop("session", SessionConfig.development(handshake_timeout=10)),
            persistent=persistent,
            **cfg,
        )
        self.worker = StageWorker(manifest, idx, executor, config, data_out_target)
        self.worker.bind()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.worker.serve()
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc

    def stop(self):
        self.worker.close()

    def join(self, timeout=10):
        self.thread.join(timeout)
        return not self.thread.is_alive()


def orchestrator(manifest: Manifest, **cfg) -> Orchestrator:
    cfg.setdefault("retry", FAST_RETRY)
    provider = cfg.pop("provider", MockProvider())
    verifier = cfg.pop("verifier", MockVerifier())
    cfg.setdefault("session", SessionConfig.development(handshake_timeout=10))
    return Orchestrator(manifest, OrchestratorConfig.development(provider, verifier, **cfg))


@contextmanager
def running_pipeline(manifest: Manifest, executors, persistent=False, start=True, **orch_cfg):
    stages = [StageThread(manifest, i, ex, persistent=persistent) for i, ex in enumerate(executors)]
    orch = orchestrator(manifest, **orch_cfg)
    try:
        if start:
            orch.start()
        yield orch, stages
    finally:
        orch.close()
        for s in stages:
            s.stop()


# ---------------------------------------------------------------------------
# subprocess stages (the real console scripts)
# ---------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]


def cli_env(threads: int = 1):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    return env


def write_manifest(tmp_path, manifest_or_dict, name="manifest.json") -> Path:
    path = Path(tmp_path) / name
    doc = manifest_or_dict.to_json() if isinstance(manifest_or_dict, Manifest) else manifest_or_dict
    path.write_text(json.dumps(doc, indent=2))
    return path


def start_stage_process(
    manifest_path, idx, model_dir=None, extra=(), threads=1, log_level="warning", executor=None
):
    """``cmlp-stage`` in a subprocess; ``executor="identity"``/``"double"``: a test executor
    instead of GPT-2 (tests/helpers/executors.py)."""
    entry = (
        ["-m", "cmlp.cli.stage"]
        if executor is None
        else [str(Path(__file__).with_name("executors.py")), executor]
    )
    cmd = [
        sys.executable,
        *entry,
        "--manifest",
        str(manifest_path),
        "--stage-idx",
        str(idx),
        "--threads",
        str(threads),
        "--log-level",
        log_level,
    ]
    if model_dir is not None:
        cmd += ["--model-dir", str(model_dir)]
    cmd += list(extra)
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(threads)
    )


def run_orch_process(manifest_path, text, max_tokens=5, extra=(), timeout=120):
    cmd = [
        sys.executable,
        "-m",
        "cmlp.cli.orch",
        "--manifest",
        str(manifest_path),
        "--text",
        text,
        "--max-tokens",
        str(max_tokens),
    ] + list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=timeout)


def stop_processes(procs, timeout=10):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    end = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
