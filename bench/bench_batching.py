"""Continuous batching: 1 vs 8 concurrent streams, 1 stage and 2 stages relayed, side by side.

Both configurations are started once (persistent stage processes with ``--threads``
each, a `cmlp serve --slots 8` relaying every link), then ``--runs`` rounds run, in
turn, 1 stream and 8 streams of ``--tokens`` tokens on each configuration (round 0
warms up and is discarded).  Aggregate tokens/s = tokens received / wall time of
the round; inter-token latency (ITL) p50 pooled over the streams of a round.
Medians over rounds; ratios 8 streams / 1 stream within each configuration.

    python bench/bench_batching.py [--model-dir model | --family F --preset P --dtype D] \
        --runs 5 --tokens 64

Any registered family and weight dtype (e.g. ``--family llama --preset smollm2-135m
--dtype bf16``); the default is synthetic GPT-2 small in fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from _machine import cpu_name  # noqa: E402 - after the sys.path set-up
from bench_pipeline import even_splits, wait_listening  # noqa: E402

CONFIGS = [("1 stage", 1, "direct"), ("2 stages relayed", 2, "relay")]


def n_layers(model_dir: Path) -> int:
    cfg = json.loads((model_dir / "config.json").read_text())
    return int(cfg.get("num_hidden_layers") or cfg["n_layer"])


def make_model(model_dir: Path, family: str, preset: str, dtype: str) -> None:
    """A synthetic model of ``family``/``preset`` stored in ``dtype`` (progress on stderr)."""
    print(f"writing a synthetic {family} {preset} model ({dtype}) ...", file=sys.stderr, flush=True)
    base = model_dir.with_name(model_dir.name + "-fp32") if dtype != "fp32" else model_dir
    if family == "gpt2":
        from cmlp.model.synthetic import init_model

        init_model(base, preset=preset)
    else:
        from cmlp.model.llama.synthetic import init_model as init_llama

        init_llama(base, family, preset)
    if dtype != "fp32":
        from cmlp.model.quantize import quantize_model

        quantize_model(base, model_dir, dtype)


def weights_dtype(model_dir: Path) -> str:
    """The dtype most of the checkpoint's matrices are stored in (from the safetensors header)."""
    from collections import Counter

    with open(model_dir / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    counts = Counter(v["dtype"] for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2)
    name = counts.most_common(1)[0][0] if counts else "?"
    return {"F32": "fp32", "BF16": "bf16", "F16": "fp16", "I8": "int8"}.get(name, name)


def write_manifest(model_dir: Path, stages: int, layout: str, base: int, out: Path) -> Path:
    from cmlp.manifest_gen import generate

    splits = even_splits(n_layers(model_dir), stages)
    path = out / f"manifest_{stages}_{layout}.json"
    path.write_text(generate(model_dir, splits, layout, base, with_hashes=False, host_blind=True).dumps())
    return path


def start_stages(manifest: Path, model_dir: Path, threads: int, extra=()):
    import subprocess

    from cmlp.manifest import Manifest

    m = Manifest.load(manifest)
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cmlp.cli.stage",
                "--manifest",
                str(manifest),
                "--stage-idx",
                str(i),
                "--model-dir",
                str(model_dir),
                "--threads",
                str(threads),
                "--persistent",
                "--log-level",
                "error",
                *extra,
            ],
            env=env,
        )
        for i in range(m.num_stages)
    ]
    return procs, [s.endpoint.control.endpoint.port for s in m.stages]


def stop_all(procs) -> None:
    """Terminate every process (stages, hosts), then wait for each."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def start_serve(manifest: Path, port: int, env, slots: int):
    import subprocess

    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cmlp.cli.main",
            "serve",
            "--manifest",
            str(manifest),
            "--listen",
            f"127.0.0.1:{port}",
            "--log-level",
            "error",
            "--health-interval",
            "30",
            "--slots",
            str(slots),
            "--queue",
            "16",
        ],
        env=env,
    )


def engine_table(model_dir: Path, runs: int, batches=(1, 2, 4, 8)) -> None:
    """The scaling model's inputs: one decode step of B rows (slot path), full model and half,
    1 and 2 threads, medians of interleaved rounds (ms)."""
    import time

    import numpy as np

    from cmlp.model.registry import load_shard

    nl = n_layers(model_dir)
    shards = {}
    for layers in (nl, nl // 2):
        for threads in (1, 2):
            sh = load_shard(model_dir, 0, layers, threads=threads, max_seq_len=1024)
            sh.configure_slots(max(batches))
            for i in range(max(batches)):
                sh.slots.open(i)
                sh.forward_slots(np.arange(16, dtype=np.uint32)[None] + i, [i])
            shards[(layers, threads)] = sh
    times = {(k, b): [] for k in shards for b in batches}
    for _ in range(runs):
        for k, sh in shards.items():
            for b in batches:
                x = np.full((b, 1), 100, np.uint32)
                for _ in range(3):
                    t0 = time.perf_counter()
                    sh.forward_slots(x, list(range(b)))
                    times[(k, b)].append(time.perf_counter() - t0)
                for i in range(b):  # keep positions from running out
                    if sh.slot_len(i) > 900:
                        sh.slots.close(i)
                        sh.slots.open(i)
                        sh.forward_slots(np.arange(16, dtype=np.uint32)[None], [i])
    print(
        f"\nEngine: one batched decode step (ms, median), layers [0, L) of {model_dir.name} "
        "incl. embedding, and the lm-head when L = n_layer"
    )
    print("| layers | threads | " + " | ".join(f"B={b}" for b in batches) + " | B=8 / B=1 |")
    print("|---" * (len(batches) + 3) + "|")
    for layers, threads in shards:
        med = [statistics.median(times[((layers, threads), b)]) * 1e3 for b in batches]
        print(
            f"| {layers} | {threads} | "
            + " | ".join(f"{v:.1f}" for v in med)
            + f" | {med[-1] / med[0]:.2f} |"
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--family", default="gpt2", choices=("gpt2", "llama", "qwen2"))
    ap.add_argument("--preset", default="small", help="gpt2: small|tiny; llama/qwen2: see cmlp model init")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "int8"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engine-only", action="store_true")
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument(
        "--micro-batches",
        type=int,
        default=0,
        help="decode groups in flight (stage 0's --micro-batches; 0: one per stage)",
    )
    args = ap.parse_args()
    from cmlp.bench_serve import _pct, run_round
    from cmlp.client import Client

    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    model_dir = Path(args.model_dir) if args.model_dir else tmp / "model"
    if not (model_dir / "config.json").is_file():
        make_model(model_dir, args.family, args.preset, args.dtype)
    cfg = json.loads((model_dir / "config.json").read_text())
    if not args.skip_engine:
        engine_table(model_dir, args.runs)
    if args.engine_only:
        return
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads))
    procs, clients = [], {}
    res = {(name, n): [] for name, *_ in CONFIGS for n in (1, args.streams)}
    try:
        for k, (name, stages, layout) in enumerate(CONFIGS):
            m = write_manifest(model_dir, stages, layout, 21000 + 2000 * k, tmp)
            p, ports = start_stages(m, model_dir, args.threads, ["--micro-batches", str(args.micro_batches)])
            procs += p
            wait_listening(ports)
            port = 20000 + 2000 * k
            procs.append(start_serve(m, port, env, args.streams))
            wait_listening([port])
            clients[name] = Client(f"127.0.0.1:{port}", m, timeout=300)
        for r in range(args.runs + 1):
            for name, *_ in CONFIGS:
                for n in (1, args.streams):
                    print(f"round {r}: {name}, {n} stream(s)", file=sys.stderr, flush=True)
                    out = run_round(
                        clients[name], n, args.prompt_tokens, args.tokens, seed=r, vocab=cfg["vocab_size"]
                    )
                    if out.errors:
                        raise RuntimeError(f"{name}, {n} streams: errors {out.errors}")
                    if r:
                        res[(name, n)].append(out)
    finally:
        stop_all(procs)
    cpu = cpu_name()
    print(
        f"\nCPU: {cpu}, {os.cpu_count()} cores; {args.threads} threads per stage; "
        f"model {model_dir.name} ({cfg.get('model_type')}, {n_layers(model_dir)} layers, "
        f"width {cfg.get('hidden_size') or cfg.get('n_embd')}, weights {weights_dtype(model_dir)}); "
        f"prompt {args.prompt_tokens} tokens, {args.tokens} tokens per stream; "
        f"micro-batches {args.micro_batches or 'one per stage'}; "
        f"medians of {args.runs} rounds (round 0 discarded)\n"
    )
    print(
        "| configuration | streams | aggregate tok/s | x one stream | ITL p50 ms | "
        "x one stream | TTFT p50 ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, *_ in CONFIGS:
        base_tps = base_itl = None
        for n in (1, args.streams):
            rounds = res[(name, n)]
            tps = statistics.median(x.tokens_per_s for x in rounds)
            itl = statistics.median(_pct(x.itl_s, 0.5) for x in rounds) * 1e3
            ttft = statistics.median(_pct(x.ttft_s, 0.5) for x in rounds) * 1e3
            if n == 1:
                base_tps, base_itl = tps, itl
            print(
                f"| {name} | {n} | {tps:.1f} | {tps / base_tps:.2f} | {itl:.2f} | "
                f"{itl / base_itl:.2f} | {ttft:.1f} |"
            )


if __name__ == "__main__":
    main()
