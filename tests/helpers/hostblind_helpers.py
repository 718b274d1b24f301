"""Helpers for host-blind tests: manifests on free ports, stages in threads, a served host."""

from __future__ import annotations

import json
from contextlib import contextmanager

from cmlp.attestation import MockProvider, MockVerifier
from cmlp.hostblind.host import HostBlindServer
from cmlp.hostblind.stage_loop import HostBlindOptions
from cmlp.manifest import Manifest
from cmlp.pipeline.orchestrator import OrchestratorConfig
from cmlp.transport import SessionConfig
from cmlp.transport.sockets import parse_endpoint
from tests.helpers.pipeline import FAST_RETRY, StageThread, free_ports, manifest_dict


def hb_manifest_dict(num_stages: int, relay: bool = False, **kw) -> dict:
    """A host-blind manifest: the ring closes with the feedback link (relayed with ``relay``)."""
    doc = manifest_dict(num_stages, relay=relay, **kw)
    client, feedback = free_ports(2)
    doc["host_blind"] = {"client": {"type": "tcp", "addr": f"127.0.0.1:{client}"}}
    stages = doc["stages"]
    if num_stages > 1:
        last = stages[-1]["endpoint"]
        last["data_out"] = (
            {"type": "tcp", "addr": f"127.0.0.1:{feedback}"}
            if relay
            else dict(stages[0]["endpoint"]["data_in"])
        )
    return doc


def hb_manifest(*args, **kwargs) -> Manifest:
    return Manifest.from_json(json.dumps(hb_manifest_dict(*args, **kwargs)))


def host_config(**cfg) -> OrchestratorConfig:
    cfg.setdefault("retry", FAST_RETRY)
    cfg.setdefault("session", SessionConfig.development(handshake_timeout=10))
    cfg.setdefault("health_check_timeout", 5.0)
    return OrchestratorConfig.development(
        cfg.pop("provider", MockProvider()), cfg.pop("verifier", MockVerifier()), **cfg
    )


@contextmanager
def served(
    manifest: Manifest,
    executors,
    options=None,
    persistent=True,
    queue_size=2,
    health_interval=0.5,
    metrics=None,
    capture_prefix=None,
    data_out_targets=None,
    **host_cfg,
):
    """Stages in threads plus a started HostBlindServer on a free port; yields (server, stages).

    ``data_out_targets``: {stage: endpoint} overrides where a stage's data_out connects
    (a man in the middle on that link)."""
    options = options or HostBlindOptions()
    targets = data_out_targets or {}
    stages = [
        StageThread(manifest, i, ex, persistent=persistent, hostblind=options, data_out_target=targets.get(i))
        for i, ex in enumerate(executors)
    ]
    if capture_prefix:
        host_cfg["relay_capture_prefix"] = capture_prefix
    server = HostBlindServer(
        manifest,
        host_config(**host_cfg),
        parse_endpoint("127.0.0.1:0"),
        queue_size=queue_size,
        health_interval=health_interval,
        metrics=metrics,
        capture_prefix=capture_prefix,
    )
    try:
        server.start()
        yield server, stages
    finally:
        server.close()
        for s in stages:
            s.stop()


def connect_str(server) -> str:
    return str(server.address)
