"""``cmlp-orch`` (also installed as ``pipeline-orch``): greedy GPT-2 generation over the pipeline.

Stdout is exactly the prompt followed by the generated text and a newline
(one such line per prompt with ``--prompts-file``); the latency summary goes
to stderr in the reference's format, plus the stage compute time and the
pipeline's own overhead per token.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from cmlp.attestation.factory import (
    MOCK_IN_PRODUCTION,
    PEER_KINDS,
    add_tee_arguments,
    make_provider,
    make_verifier,
    read_nitro_root,
)
from cmlp.cli import stage_logs
from cmlp.cli.common import Parser, add_log_level, arg_type, console_main
from cmlp.cli.manifest_cmd import load_for_cli
from cmlp.errors import InsecureConfiguration, StageFailed
from cmlp.transport.sockets import parse_endpoint

log = logging.getLogger("cmlp.orch")
ENDPOINT = arg_type(parse_endpoint, "endpoint")


def build_parser(prog: str = "cmlp-orch") -> argparse.ArgumentParser:
    p = Parser(prog=prog, description="Generate text with a cmlp pipeline.")
    p.add_argument("--manifest", required=True, help="shard manifest (JSON)")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="HF tokenizer.json, or a model directory holding one (default: the embedded GPT-2 tokenizer)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the prompt")
    src.add_argument("--prompts-file", help="several prompts, one per line, in one session")
    p.add_argument(
        "--max-tokens", type=int, default=20, help="generation steps, the prompt step included (default: 20)"
    )
    p.add_argument("--latency-out", help="write per-step latencies as JSON")
    p.add_argument(
        "--data-out-listen",
        type=ENDPOINT,
        default=None,
        help="where the last stage connects (default: its manifest data_out)",
    )
    p.add_argument(
        "--attestation",
        choices=PEER_KINDS,
        default="mock",
        help="how the stages are verified (default: mock)",
    )
    p.add_argument(
        "--host-attestation",
        choices=("mock", "none"),
        default=None,
        help="what this host presents (default: mock with mock stages, none with nitro)",
    )
    p.add_argument(
        "--nitro-root-pem",
        metavar="FILE",
        default=None,
        help="TESTING/STAGING ONLY: verify the stages' Nitro documents against this "
        "root CA instead of the bundled AWS Nitro root (with --attestation nitro)",
    )
    p.add_argument(
        "--profile",
        choices=("development", "production"),
        default="development",
        help="production: refuse any stage the manifest does not pin (default: development)",
    )
    p.add_argument(
        "--infer-timeout", type=float, default=60.0, help="seconds one generation step may take (default: 60)"
    )
    p.add_argument(
        "--recover",
        type=int,
        default=0,
        metavar="N",
        help="reconnect and replay up to N times when a stage fails "
        "(needs --persistent stages; a killed stage must be restarted)",
    )
    p.add_argument(
        "--recover-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the stages to come back (default: 120)",
    )
    p.add_argument(
        "--relay-capture",
        metavar="PREFIX",
        default=None,
        help="record every byte the host relays to PREFIX<link>_<dir>.bin",
    )
    add_tee_arguments(p)
    p.add_argument(
        "--stage-log",
        metavar="PATTERN",
        default=None,
        help="where each stage logs, {idx} for its index (default: $CMLP_STAGE_LOG); "
        "a stage that fails to start is then quoted from its log",
    )
    p.add_argument(
        "--no-role-binding",
        action="store_true",
        help="do not attest or check pipeline roles (only to interoperate with the "
        "reference's peers, which bind none; see docs/attestation.md)",
    )
    add_log_level(p, "warning")
    return p


def _percentile(sorted_values, q):
    n = len(sorted_values)
    return sorted_values[min(max(math.ceil(q * n) - 1, 0), n - 1)]


def latency_summary(latencies, compute_us) -> str:
    """The reference's stderr block, plus compute and overhead lines."""
    lines = ["", "--- Latency Summary ---"]
    lines.append(f"Prompt (TTFT):    {latencies[0]:.1f} ms")
    gen = latencies[1:]
    if gen:
        s = sorted(gen)
        lines.append(f"Generation avg:   {sum(gen) / len(gen):.1f} ms/token")
        lines.append(f"Generation p50:   {s[len(s) // 2]:.1f} ms")
        lines.append(f"Generation p95:   {_percentile(s, 0.95):.1f} ms")
        steps = [sum(c or 0 for c in cs) / 1000.0 for cs in compute_us[1:]]
        if steps and all(cs and all(c is not None for c in cs) for cs in compute_us[1:]):
            comp = sorted(steps)
            over = sorted(g - c for g, c in zip(gen, steps, strict=True))
            lines.append(f"Stage compute p50: {comp[len(comp) // 2]:.1f} ms/token")
            lines.append(f"Pipeline overhead p50: {over[len(over) // 2]:.2f} ms/token")
    lines.append(f"Tokens generated: {len(latencies)}")
    return "\n".join(lines)


def run(args) -> int:
    from cmlp.pipeline.gpt2 import Generator
    from cmlp.pipeline.orchestrator import Orchestrator, OrchestratorConfig
    from cmlp.tokenizer import load_model_tokenizer, load_tokenizer

    if args.max_tokens < 1:
        raise ValueError("--max-tokens must be >= 1")
    if args.profile == "production" and "mock" in (args.attestation, args.host_attestation):
        raise InsecureConfiguration(MOCK_IN_PRODUCTION)
    manifest = load_for_cli(args.manifest)
    if args.tokenizer is not None and Path(args.tokenizer).is_dir():
        tokenizer = load_model_tokenizer(args.tokenizer)  # a model directory
    else:
        tokenizer = load_tokenizer(args.tokenizer)
    if args.text is not None:
        prompts = [args.text]
    else:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
        if not prompts:
            raise ValueError(f"{args.prompts_file}: no prompts")
    encoded = [tokenizer.encode(p) for p in prompts]
    for p, ids in zip(prompts, encoded, strict=True):
        if not ids:
            raise ValueError(f"prompt {p!r} encodes to no tokens")
        need = len(ids) + args.max_tokens - 1
        if need > manifest.activation_spec.max_seq_len:
            raise ValueError(
                f"prompt ({len(ids)} tokens) + {args.max_tokens} steps needs "
                f"{need} positions; the manifest allows "
                f"{manifest.activation_spec.max_seq_len}"
            )
    host = args.host_attestation or ("mock" if args.attestation == "mock" else "none")
    root = read_nitro_root(args.nitro_root_pem)
    if root is not None:
        log.warning(
            "trusting the Nitro root CA in %s instead of AWS's (testing/staging only)", args.nitro_root_pem
        )
    kwargs = dict(
        infer_timeout=args.infer_timeout,
        relay_capture_prefix=args.relay_capture,
        bind_roles=not args.no_role_binding,
    )
    provider = make_provider(host)
    verifier = make_verifier(
        args.attestation, root, tdx_collateral_dir=args.tdx_collateral, tee_policy=args.tee_policy
    )
    if args.profile == "production":
        # every stage must be pinned: SessionConfig() refuses unpinned handshakes
        config = OrchestratorConfig(provider=provider, verifier=verifier, **kwargs)
    else:
        config = OrchestratorConfig.development(provider, verifier, **kwargs)
    if args.recover < 0:
        raise ValueError("--recover must be >= 0")

    def connect():
        orch = Orchestrator(manifest, config, args.data_out_listen)
        return orch.start()

    try:
        first = connect()
    except StageFailed as exc:
        raise stage_logs.explain(exc, args.manifest, stage_logs.pattern_from_env(args.stage_log)) from None
    generator = Generator(first, connect, args.recover, args.recover_timeout)
    runs = []
    mid_line = False
    try:
        for prompt, ids in zip(prompts, encoded, strict=True):
            sys.stdout.write(prompt)
            sys.stdout.flush()
            mid_line = True

            def show(token):
                sys.stdout.write(tokenizer.decode_one(token))
                sys.stdout.flush()

            gen = generator.generate(ids, args.max_tokens, on_token=show)
            sys.stdout.write("\n")
            sys.stdout.flush()
            mid_line = False
            runs.append(gen)
            print(latency_summary(gen.latencies_ms, gen.stage_compute_us), file=sys.stderr)
            if gen.recoveries:
                print(f"Recovered from {gen.recoveries} stage failure(s)", file=sys.stderr)
        generator.shutdown()
    except KeyboardInterrupt:
        if generator.orch is not None:
            generator.orch.abandon()  # the stages end the session cleanly
        if mid_line:  # end the partial line: the shell prompt starts clean
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
    finally:
        generator.close()
    if args.latency_out:
        doc = runs[0].summary() if len(runs) == 1 else {"runs": [g.summary() for g in runs]}
        with open(args.latency_out, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.write("\n")
    log.info("done")
    return 0


def main(argv=None) -> int:
    return console_main(build_parser, run, "cmlp-orch", argv)


if __name__ == "__main__":
    sys.exit(main())
