"""``cmlp generate``: a host-blind generation from the user's side (cmlp.client).

Stdout is exactly the prompt followed by the generated text (streamed as it
arrives) and a newline.  ``--latency-out`` writes prompt_ids, generated_ids,
finish_reason, time to first token and per-token latencies.
"""

from __future__ import annotations

import json
import sys
import time
from typing import List, Optional

from cmlp.attestation.factory import PEER_KINDS, add_tee_arguments
from cmlp.cli.common import add_log_level


def register(sub) -> None:
    p = sub.add_parser(
        "generate", help="generate through `cmlp serve`, end to end encrypted to stage 0 (host-blind)"
    )
    p.add_argument("--connect", required=True, help="HOST:PORT of cmlp serve")
    p.add_argument("--manifest", required=True, help="host-blind shard manifest (JSON)")
    p.add_argument("--text", required=True, help="the prompt")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens to generate (default: 16)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="(0, 1], default 1")
    p.add_argument("--seed", type=int, default=None, help="same seed, same ids")
    p.add_argument(
        "--stop", action="append", default=[], metavar="S", help="stop sequence (repeatable, at most 4)"
    )
    p.add_argument("--latency-out", metavar="FILE", help="write ids and latencies as JSON")
    p.add_argument(
        "--profile",
        choices=("development", "production"),
        default="development",
        help="production: real attestation of stage 0, pinned by the manifest",
    )
    p.add_argument(
        "--attestation",
        choices=PEER_KINDS,
        default=None,
        help="stage 0's attestation (default: mock in development, nitro in production)",
    )
    add_tee_arguments(p)
    p.add_argument(
        "--nitro-root-pem",
        metavar="FILE",
        default=None,
        help="TESTING/STAGING ONLY: trust this Nitro root CA instead of AWS's",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for each message from stage 0 (default: 30)",
    )
    add_log_level(p, "warning")
    p.set_defaults(func=run, prog_name="cmlp generate")


def run(args) -> int:
    from cmlp.attestation.factory import read_nitro_root
    from cmlp.client import Client, Finished, SamplingParams

    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=tuple(args.stop),
    ).validate()
    client = Client(
        args.connect,
        args.manifest,
        profile=args.profile,
        timeout=args.timeout,
        attestation=args.attestation,
        nitro_root_pem=read_nitro_root(args.nitro_root_pem),
        tdx_collateral_dir=args.tdx_collateral,
        tee_policy=args.tee_policy,
    )
    prompt_ids: List[int] = []
    generated: List[int] = []
    latencies: List[float] = []
    finished: Optional[Finished] = None
    sys.stdout.write(args.text)
    sys.stdout.flush()
    t0 = last = time.perf_counter()
    ttft = None
    for ev in client.generate(args.text, params, on_prompt_ids=prompt_ids.extend):
        now = time.perf_counter()
        if isinstance(ev, Finished):
            finished = ev
            break
        if ttft is None:
            ttft = (now - t0) * 1000.0
        latencies.append((now - last) * 1000.0)
        last = now
        generated.append(ev.token_id)
        sys.stdout.write(ev.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    client.close()
    gen = latencies[1:]
    if gen:
        s = sorted(gen)
        print(
            f"TTFT {ttft:.1f} ms, {len(generated)} tokens, p50 {s[len(s) // 2]:.2f} ms/token, "
            f"finish_reason {finished.finish_reason if finished else None}",
            file=sys.stderr,
        )
    if args.latency_out:
        doc = {
            "prompt_ids": prompt_ids,
            "generated_ids": generated,
            "finish_reason": finished.finish_reason if finished else None,
            "prompt_tokens": finished.prompt_tokens if finished else len(prompt_ids),
            "completion_tokens": finished.completion_tokens if finished else len(generated),
            "ttft_ms": ttft,
            "latencies_ms": latencies,
        }
        with open(args.latency_out, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.write("\n")
    return 0
