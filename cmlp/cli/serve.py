"""``cmlp serve``: the host side of host-blind mode (docs/host-blind.md).

Sets the stages up (Init, data channels, relays, health), then accepts
client connections on ``--listen`` and forwards each one, as ciphertext, to
stage 0's client endpoint.  Runs until Ctrl-C / SIGTERM, then asks the
stages to shut down (``--keep-stages`` leaves persistent stages running).
"""

from __future__ import annotations

import logging
import threading

from cmlp.attestation.factory import (
    PEER_KINDS,
    add_tee_arguments,
    make_provider,
    make_verifier,
    read_nitro_root,
)
from cmlp.cli.common import add_log_level, arg_type, stop_on_sigterm
from cmlp.manifest import Manifest
from cmlp.transport.sockets import parse_endpoint

log = logging.getLogger("cmlp.serve")
ENDPOINT = arg_type(parse_endpoint, "endpoint")


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="host-blind serving: forward clients to stage 0 (the host sees ciphertext only)"
    )
    p.add_argument("--manifest", required=True, help="host-blind shard manifest (JSON)")
    p.add_argument(
        "--listen",
        required=True,
        type=ENDPOINT,
        help="where clients connect: IP:PORT, [V6]:PORT or vsock:CID:PORT",
    )
    p.add_argument(
        "--queue",
        type=int,
        default=8,
        help="clients that may wait for the one being served; more get 'busy' (default: 8)",
    )
    p.add_argument(
        "--slots",
        type=int,
        default=8,
        help="clients forwarded to stage 0 at once (its batch; docs/batching.md; default 8)",
    )
    p.add_argument(
        "--metrics",
        type=ENDPOINT,
        default=None,
        metavar="ADDR",
        help="serve Prometheus metrics (counts and timings only) on HOST:PORT",
    )
    p.add_argument(
        "--attestation",
        choices=PEER_KINDS,
        default="mock",
        help="how the stages are verified (default: mock)",
    )
    add_tee_arguments(p)
    p.add_argument(
        "--host-attestation",
        choices=("mock", "none"),
        default=None,
        help="what this host presents (default: mock with mock stages, none otherwise)",
    )
    p.add_argument(
        "--nitro-root-pem",
        metavar="FILE",
        default=None,
        help="TESTING/STAGING ONLY: trust this Nitro root CA instead of AWS's",
    )
    p.add_argument(
        "--profile",
        choices=("development", "production"),
        default="development",
        help="production: refuse any stage the manifest does not pin",
    )
    p.add_argument(
        "--health-interval",
        type=float,
        default=2.0,
        help="seconds between health checks; a failed one restarts the pipeline",
    )
    p.add_argument(
        "--keep-stages", action="store_true", help="on exit, leave the stages running (no Shutdown)"
    )
    p.add_argument(
        "--relay-capture",
        metavar="PREFIX",
        default=None,
        help="record every byte the host forwards to PREFIX*.bin (security tests)",
    )
    add_log_level(p, "info")
    p.set_defaults(func=run, prog_name="cmlp serve")


def _metrics(addr, n_stages):
    if addr is None:
        return None, None
    try:
        from cmlp.serve_metrics import ServeMetrics, start_metrics_server
    except ImportError as exc:
        raise ValueError(
            f"--metrics needs cmlp.serve_metrics and prometheus_client (pip install 'cmlp[metrics]'): {exc}"
        ) from None
    metrics = ServeMetrics(n_stages)
    return metrics, start_metrics_server(str(addr), metrics)


def run(args) -> int:
    from cmlp.hostblind.host import HostBlindServer
    from cmlp.pipeline.orchestrator import OrchestratorConfig

    manifest = Manifest.load(args.manifest)
    if not manifest.host_blind:
        raise ValueError(
            f"{args.manifest}: no host_blind section (a reference-mode manifest: "
            "use cmlp-orch, or generate one with --host-blind)"
        )
    if args.queue < 0:
        raise ValueError("--queue must be >= 0")
    if args.health_interval <= 0:
        raise ValueError("--health-interval must be > 0")
    host = args.host_attestation or ("mock" if args.attestation == "mock" else "none")
    root = read_nitro_root(args.nitro_root_pem)
    provider, verifier = (
        make_provider(host),
        make_verifier(
            args.attestation, root, tdx_collateral_dir=args.tdx_collateral, tee_policy=args.tee_policy
        ),
    )
    kwargs = dict(relay_capture_prefix=args.relay_capture)
    if args.profile == "production":
        config = OrchestratorConfig(provider=provider, verifier=verifier, **kwargs)
    else:
        config = OrchestratorConfig.development(provider, verifier, **kwargs)
    metrics, metrics_server = _metrics(args.metrics, manifest.num_stages)
    server = HostBlindServer(
        manifest,
        config,
        args.listen,
        queue_size=args.queue,
        concurrency=args.slots,
        metrics=metrics,
        health_interval=args.health_interval,
        capture_prefix=args.relay_capture,
    )
    stop_on_sigterm()
    try:
        server.start()
        log.info("serving on %s (stage 0's client endpoint %s)", server.address, server.stage0)
        threading.Event().wait()
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        if args.keep_stages:
            server.close()
        else:
            server.shutdown()
        if metrics_server is not None:
            metrics_server.close()
    return 0
