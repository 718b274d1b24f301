"""End-to-end pipeline benchmark: 1, 2 and 3 stages, direct and through the host relay.

The stages of every configuration are started once (``--persistent``, each
configuration on its own ports) and the orchestrator runs ``--runs`` rounds;
each round runs one generation session of ``--tokens`` steps on the prompt
"The capital of France is" per configuration, in turn, so slow drifts of
this shared machine hit every configuration alike.  Per session: TTFT (prompt step), generation
avg/p50/p95/p99 with the reference's formulas, stage compute per token (from
RequestDone ``compute_us``) and the pipeline's own overhead per token
(latency minus summed stage compute).  The table shows medians over sessions,
and each configuration's gen p50 as a ratio of the 1-stage p50 measured in the
same script.  ``--torch`` adds PyTorch + transformers' prefill + first token on
the same weights and thread count, side by side.

    python bench/bench_pipeline.py --model-dir model --runs 5 --threads 2 [--torch]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_name  # bench/ is the script's own directory

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [  # (name, stages, layout of cmlp/manifest_gen.py)
    ("1-stage", 1, "direct"),
    ("2-stage", 2, "direct"),
    ("2-stage relayed", 2, "relay"),
    ("3-stage", 3, "direct"),
    ("3-stage relayed", 3, "relay"),
]
PROMPT = "The capital of France is"


def pct(sorted_vals, q):
    n = len(sorted_vals)
    return sorted_vals[min(max(math.ceil(q * n) - 1, 0), n - 1)]


def session_metrics(doc):
    lat = doc["latencies_ms"]
    gen = sorted(lat[1:])
    comp = [sum(c or 0 for c in cs) / 1000.0 for cs in doc["stage_compute_us"]]
    over = sorted(t - c for t, c in zip(lat[1:], comp[1:], strict=True))
    return {
        "ttft": lat[0],
        "avg": sum(gen) / len(gen),
        "p50": gen[len(gen) // 2],
        "p95": pct(gen, 0.95),
        "p99": pct(gen, 0.99),
        "compute": sorted(comp[1:])[len(comp[1:]) // 2],
        "overhead": over[len(over) // 2],
    }


def wait_listening(ports, timeout=180):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        have = set()
        for name in ("/proc/net/tcp", "/proc/net/tcp6"):
            for row in Path(name).read_text().splitlines()[1:]:
                f = row.split()
                if f[3] == "0A":
                    have.add(int(f[1].rsplit(":", 1)[1], 16))
        if set(ports) <= have:
            return
        time.sleep(0.05)
    raise RuntimeError(f"stages not listening on {ports}")


def even_splits(n_layer: int, stages: int) -> list:
    """Layers per stage, as even as possible (12 -> 6,6 and 4,4,4: the packaged examples)."""
    per, rem = divmod(n_layer, stages)
    return [per + (1 if i < rem else 0) for i in range(stages)]


def write_manifest(model_dir: Path, stages: int, layout: str, base_port: int, out_dir: Path) -> Path:
    """The packaged examples' port plan from ``base_port``, for this model's layers."""
    from cmlp.manifest_gen import generate
    from cmlp.model.config import load_config

    splits = even_splits(load_config(model_dir).n_layer, stages)
    out = out_dir / f"manifest_{stages}stage_{layout}.json"
    out.write_text(generate(model_dir, splits, layout, base_port, with_hashes=False).dumps())
    return out


def round_label(r: int, runs: int) -> str:
    return "round 0 (warm-up, not counted)" if r == 0 else f"round {r}/{runs}"


def start_stages(manifest: Path, model_dir: Path, threads: int):
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
            ],
            env=env,
        )
        for i in range(m.num_stages)
    ]
    return procs, [s.endpoint.control.endpoint.port for s in m.stages]


def run_session(manifest: Path, tokens: int, threads: int, out: Path) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmlp.cli.orch",
            "--manifest",
            str(manifest),
            "--text",
            PROMPT,
            "--max-tokens",
            str(tokens),
            "--latency-out",
            str(out),
            "--log-level",
            "error",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if res.returncode != 0:
        raise RuntimeError(f"{manifest.name}: orchestrator failed: {res.stderr}")
    return session_metrics(json.loads(out.read_text()))


def run_configs(configs, model_dir: Path, runs: int, tokens: int, threads: int, base_port: int = 9000):
    procs, sessions = [], {name: [] for name, _, _ in configs}
    with tempfile.TemporaryDirectory() as tmp:
        manifests = {}
        try:
            print(f"starting the stages of {len(configs)} configuration(s) ...", file=sys.stderr, flush=True)
            for k, (name, stages, layout) in enumerate(configs):
                manifests[name] = write_manifest(model_dir, stages, layout, base_port + 1000 * k, Path(tmp))
                p, ports = start_stages(manifests[name], model_dir, threads)
                procs += p
                wait_listening(ports)
            print(
                f"round 0 is a warm-up (first connections, page faults, cold caches): it "
                f"runs every configuration once and is not counted; rounds 1-{runs} are "
                "measured",
                file=sys.stderr,
                flush=True,
            )
            for r in range(runs + 1):  # round 0 warms caches and is discarded
                for name, _, _ in configs:
                    print(f"{round_label(r, runs)}: {name} ...", file=sys.stderr, flush=True)
                    m = run_session(manifests[name], tokens, threads, Path(tmp) / "lat.json")
                    if r:
                        sessions[name].append(m)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
    return {name: {k: statistics.median(s[k] for s in ss) for k in ss[0]} for name, ss in sessions.items()}


def torch_ttft(model_dir: Path, threads: int, runs: int):
    """PyTorch + transformers: prefill of the prompt + first token (greedy), median ms."""
    import torch
    from transformers import GPT2LMHeadModel

    from cmlp.tokenizer import load_tokenizer

    torch.set_num_threads(threads)
    model = GPT2LMHeadModel.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    ids = torch.tensor([load_tokenizer().encode(PROMPT)])
    samples = []
    with torch.no_grad():
        for _ in range(runs + 2):
            t0 = time.perf_counter()
            out = model(ids, use_cache=True)
            int(out.logits[0, -1].argmax())
            samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples[2:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=str(REPO / "model"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--torch", action="store_true", help="compare TTFT with PyTorch")
    ap.add_argument(
        "--configs",
        default=",".join(c for c, _, _ in CONFIGS),
        help="comma-separated subset of: " + ", ".join(c for c, _, _ in CONFIGS),
    )
    ap.add_argument(
        "--base-port",
        type=int,
        default=9000,
        help="first port; configuration k uses base + 1000 k (default: 9000)",
    )
    args = ap.parse_args()
    wanted = [c.strip() for c in args.configs.split(",")]
    configs = [c for c in CONFIGS if c[0] in wanted]
    results = run_configs(configs, Path(args.model_dir), args.runs, args.tokens, args.threads, args.base_port)
    cfg = json.loads((Path(args.model_dir) / "config.json").read_text())
    cpu = cpu_name()
    names = list(results)
    print("## GPT-2 Pipeline Benchmark\n")
    print("| Metric | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    rows = [
        ("Prompt (TTFT)", "ttft", "ms"),
        ("Gen avg", "avg", "ms/tok"),
        ("p50", "p50", "ms"),
        ("p95", "p95", "ms"),
        ("p99", "p99", "ms"),
        ("Stage compute", "compute", "ms/tok"),
        ("Pipeline overhead", "overhead", "ms/tok"),
    ]
    for label, key, unit in rows:
        print(f"| {label} ({unit}) | " + " | ".join(f"{results[n][key]:.2f}" for n in names) + " |")
    if "1-stage" in results:
        base = results["1-stage"]["p50"]
        print("| p50 vs 1-stage | " + " | ".join(f"{results[n]['p50'] / base:.3f}x" for n in names) + " |")
    print("| Tokens | " + " | ".join(str(args.tokens) for _ in names) + " |")
    if args.torch:
        t = torch_ttft(Path(args.model_dir), args.threads, args.runs)
        print(
            f"\nPyTorch {__import__('torch').__version__} + transformers prefill + first "
            f"token: {t:.2f} ms (cmlp 1-stage TTFT incl. transport: "
            f"{results.get('1-stage', {}).get('ttft', float('nan')):.2f} ms)"
        )
    print(
        f"\n**Config**: {cfg.get('n_layer')} layers, n_embd {cfg.get('n_embd')}, "
        f"{'synthetic' if cfg.get('cmlp_synthetic') else 'real'} weights; {args.threads} BLAS "
        f"threads per stage; {args.runs} rounds of one session per configuration in turn "
        f"(medians, after one warm-up round that is not counted), "
        f"{args.tokens} tokens each; TCP loopback, ChaCha20-Poly1305, mock attestation"
    )
    print(f"**CPU**: {cpu}, {os.cpu_count()} cores")
    commit = (
        subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    print(f"**Commit**: {commit}")


if __name__ == "__main__":
    main()
