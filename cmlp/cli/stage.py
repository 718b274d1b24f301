"""``cmlp-stage`` (also installed as ``stage-worker``): serve one pipeline stage.

Binds the manifest's control and data_in endpoints, loads the stage's
layers, then serves orchestrator sessions: one (the reference's behaviour) or,
with ``--persistent``, one after another without reloading the weights.
Exits 0 after the orchestrator's Shutdown.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cmlp.attestation.factory import (
    MOCK_IN_PRODUCTION,
    PEER_KINDS,
    add_tee_arguments,
    make_provider,
    make_verifier,
    parse_measurement,
    read_nitro_root,
)
from cmlp.cli.common import Parser, add_log_level, arg_type, console_main, require_model_dir, stop_on_sigterm
from cmlp.cli.manifest_cmd import load_for_cli
from cmlp.errors import InsecureConfiguration
from cmlp.transport import SecurityProfile, SessionConfig
from cmlp.transport.sockets import parse_endpoint

log = logging.getLogger("cmlp.stage")
ENDPOINT = arg_type(parse_endpoint, "endpoint")
MEASUREMENT = arg_type(parse_measurement, "measurement")


def build_parser(prog: str = "cmlp-stage") -> argparse.ArgumentParser:
    p = Parser(prog=prog, description="Serve one stage of a cmlp pipeline.")
    p.add_argument("--manifest", required=True, help="shard manifest (JSON)")
    p.add_argument("--stage-idx", required=True, type=int, help="which stage of the manifest")
    p.add_argument(
        "--model-dir",
        default="model",
        help="model directory with config.json and model.safetensors (default: model)",
    )
    p.add_argument(
        "--data-out-target",
        type=ENDPOINT,
        default=None,
        help="where data_out connects (default: the manifest's data_out)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="BLAS threads for the forward pass (default: all cores)"
    )
    p.add_argument(
        "--persistent",
        action="store_true",
        help="serve orchestrator sessions one after another instead of exiting",
    )
    p.add_argument(
        "--attestation",
        choices=PEER_KINDS,
        default="mock",
        help="this stage's attestation provider and its peers' verifier (default: mock)",
    )
    p.add_argument(
        "--mock-measurement",
        action="append",
        default=[],
        type=MEASUREMENT,
        metavar="IDX=HEX",
        help="measurement a mock document claims (repeatable)",
    )
    p.add_argument(
        "--nitro-root-pem",
        metavar="FILE",
        default=None,
        help="TESTING/STAGING ONLY: verify peers' Nitro documents against this root "
        "CA instead of the bundled AWS Nitro root (with --attestation nitro)",
    )
    p.add_argument(
        "--host-unattested",
        action="store_true",
        help="accept an orchestrator that presents no attestation document",
    )
    p.add_argument(
        "--profile",
        choices=("development", "production"),
        default="development",
        help="security profile (production refuses unpinned attested peers)",
    )
    add_tee_arguments(p)
    p.add_argument(
        "--slots",
        type=int,
        default=8,
        help="host-blind mode: KV-cache slots, i.e. sequences batched at once (docs/batching.md; default 8)",
    )
    p.add_argument(
        "--kv-budget-mb",
        type=int,
        default=None,
        help="host-blind mode: cap on the slots' reserved KV-cache MB (fewer slots if they do not fit)",
    )
    p.add_argument(
        "--admission-queue",
        type=int,
        default=8,
        help="host-blind stage 0: requests that wait for a slot; more get 'busy'",
    )
    p.add_argument(
        "--micro-batches",
        type=int,
        default=0,
        help="host-blind stage 0: decode groups in flight through the ring "
        "(default 0: one per stage; 1: all sequences in one group)",
    )
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=64,
        help="host-blind stage 0: prompt tokens prefilled per step while other streams decode "
        "(a longer prompt is chunked; default 64)",
    )
    p.add_argument(
        "--no-role-binding",
        action="store_true",
        help="do not attest or check pipeline roles (only to interoperate with the "
        "reference's peers, which bind none; see docs/attestation.md)",
    )
    add_log_level(p, "info")
    return p


def make_executor(args, manifest):
    """The model executor over --model-dir (tests/helpers/executors.py passes test executors)."""
    hidden_dim, model_name = manifest.activation_spec.hidden_dim, manifest.model_name
    model_dir = Path(args.model_dir)
    require_model_dir(model_dir, hidden_dim)
    from cmlp.pipeline.gpt2 import Gpt2Executor

    return Gpt2Executor(model_dir, threads=args.threads, model_name=model_name)


def run(args, make_executor=make_executor) -> int:
    import os

    from cmlp import progress
    from cmlp.pipeline.stage import StageConfig, StageWorker

    # stages run side by side in the background of one terminal, where their bars would
    # overwrite each other: a stage logs "loaded layers ..." instead (CMLP_PROGRESS=1 forces)
    os.environ.setdefault(progress.ENV, "0")
    manifest = load_for_cli(args.manifest)
    spec = manifest.stage(args.stage_idx)
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be >= 1")
    profile = SecurityProfile(args.profile)
    if profile is SecurityProfile.PRODUCTION and args.attestation == "mock":
        raise InsecureConfiguration(MOCK_IN_PRODUCTION)
    session = SessionConfig(
        security_profile=profile, require_measurements=profile is SecurityProfile.PRODUCTION
    )
    root = read_nitro_root(args.nitro_root_pem)
    if root is not None:
        log.warning(
            "trusting the Nitro root CA in %s instead of AWS's (testing/staging only)", args.nitro_root_pem
        )
    config = StageConfig(
        provider=make_provider(args.attestation, dict(args.mock_measurement)),
        verifier=make_verifier(
            args.attestation, root, tdx_collateral_dir=args.tdx_collateral, tee_policy=args.tee_policy
        ),
        session=session,
        persistent=args.persistent,
        host_unattested=args.host_unattested,
        bind_roles=not args.no_role_binding,
    )
    if args.slots < 1 or args.admission_queue < 0:
        raise ValueError("--slots must be >= 1 and --admission-queue >= 0")
    if args.prefill_chunk < 1:
        raise ValueError("--prefill-chunk must be >= 1")
    if manifest.host_blind:
        from cmlp.hostblind.stage_loop import HostBlindOptions

        config.hostblind = HostBlindOptions(
            slots=args.slots,
            kv_budget_mb=args.kv_budget_mb,
            admission_queue=args.admission_queue,
            micro_batches=max(0, args.micro_batches),
            prefill_chunk=args.prefill_chunk,
        )
    executor = make_executor(args, manifest)
    worker = StageWorker(manifest, args.stage_idx, executor, config, args.data_out_target)
    worker.bind()
    stop_on_sigterm()
    try:
        worker.load()
        log.info(
            "stage %d ready: layers [%d, %d), control %s, data_in %s",
            args.stage_idx,
            spec.layer_start,
            spec.layer_end,
            spec.endpoint.control.endpoint,
            spec.endpoint.data_in.endpoint,
        )
        worker.serve()
    except KeyboardInterrupt:
        log.info("stage %d: stopped", args.stage_idx)
        return 0
    finally:
        worker.close()
    log.info("stage worker exiting")
    return 0


def main(argv=None, make_executor=make_executor) -> int:
    return console_main(build_parser, lambda args: run(args, make_executor), "cmlp-stage", argv)


if __name__ == "__main__":
    sys.exit(main())
