"""Paired A/B of two checkouts' served pipelines: 1 vs 8 streams, rounds interleaved.

On a shared, noisy machine two separate benchmark runs can differ by more than the change
being measured.  This starts one pipeline per checkout (``cmlp serve`` and its stages, each
imported from its own tree through PYTHONPATH) side by side, then alternates rounds between
them (A B, B A, ...), so each pair of rounds sees the same load.  It reports each version's
8-stream / 1-stream ratio per round (medians) and the paired 8-stream speed ratio B / A.

A checkout other than this one must have its extensions built in place first::

    git worktree add /tmp/base <rev>
    (cd /tmp/base && python setup.py build_ext --inplace)
    python bench/bench_ab_serve.py --versions base=/tmp/base,new=. --rounds 16

One version alone (``--versions new=.``) gives the served ratio with more rounds than
bench_batching.py's table.
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

import bench_batching as bb  # noqa: E402 - after the sys.path set-up
from _machine import cpu_name  # noqa: E402
from bench_pipeline import wait_listening  # noqa: E402


def check_imports_from(path: str) -> None:
    """Fail unless a child started like the stages (this environment, this working
    directory, ``python -m``) imports cmlp and its extensions from ``path``."""
    import subprocess

    probe = "import cmlp._gpt2 as g; print(g.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(Path(path)):
        raise SystemExit(f"a child process imports {out}, not the checkout {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", default="new=.", help="name=checkout,... (one or two)")
    ap.add_argument("--model-dir", default=None, help="default: a synthetic GPT-2 small, written once")
    ap.add_argument("--stages", type=int, default=2, help="1: direct; more: every link relayed")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--micro-batches", type=int, default=1)
    args = ap.parse_args()
    from cmlp.bench_serve import _pct, run_round
    from cmlp.client import Client

    versions = [
        (name, str(Path(path).resolve()))
        for name, path in (v.split("=", 1) for v in args.versions.split(","))
    ]
    tmp = Path(tempfile.mkdtemp(prefix="bench_ab_"))
    model_dir = Path(args.model_dir) if args.model_dir else tmp / "model"
    if not (model_dir / "config.json").is_file():
        bb.make_model(model_dir, "gpt2", "small", "fp32")
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    layout = "relay" if args.stages > 1 else "direct"
    procs, clients = [], {}
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "PYTHONSAFEPATH")}
    try:
        for k, (name, path) in enumerate(versions):
            # the stages and the host import this checkout: PYTHONPATH names it, and
            # PYTHONSAFEPATH keeps `python -m` from putting the working directory (this
            # checkout, when run from it) ahead of it on sys.path
            os.environ["PYTHONPATH"] = path
            os.environ["PYTHONSAFEPATH"] = "1"
            check_imports_from(path)
            (tmp / name).mkdir()
            m = bb.write_manifest(model_dir, args.stages, layout, 31000 + 2000 * k, tmp / name)
            p, ports = bb.start_stages(
                m, model_dir, args.threads, ["--micro-batches", str(args.micro_batches)]
            )
            procs += p
            wait_listening(ports)
            port = 30000 + 2000 * k
            procs.append(bb.start_serve(m, port, dict(os.environ), args.streams))
            wait_listening([port])
            clients[name] = Client(f"127.0.0.1:{port}", m, timeout=300)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
        res: dict = {name: {1: [], args.streams: []} for name, _ in versions}
        for r in range(args.rounds + 1):  # round 0 warms up
            for name, _ in versions if r % 2 == 0 else versions[::-1]:
                for n in (1, args.streams):
                    out = run_round(clients[name], n, args.prompt_tokens, args.tokens, seed=r, vocab=vocab)
                    if out.errors:
                        raise RuntimeError(f"{name}, {n} streams: errors {out.errors}")
                    if r:
                        res[name][n].append(out)
            if r:
                print(
                    f"round {r}: "
                    + "; ".join(
                        f"{name} {res[name][args.streams][-1].tokens_per_s / res[name][1][-1].tokens_per_s:.2f}x"
                        for name, _ in versions
                    ),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        bb.stop_all(procs)
    cpu = cpu_name()
    print(
        f"\nCPU: {cpu}, {os.cpu_count()} cores; {args.stages} stage(s) ({layout}), {args.threads} threads per "
        f"stage, micro-batches {args.micro_batches}; {args.streams} vs 1 stream(s), prompt "
        f"{args.prompt_tokens} tokens, {args.tokens} tokens per stream; {args.rounds} interleaved rounds\n"
    )
    print(
        "| version | 1 stream tok/s | 8 streams tok/s | x one stream (median per round) | ITL x one stream |"
    )
    print("|---|---|---|---|---|")
    for name, _ in versions:
        one, many = res[name][1], res[name][args.streams]
        ratios = [b.tokens_per_s / a.tokens_per_s for a, b in zip(one, many, strict=True)]
        itl = statistics.median(_pct(x.itl_s, 0.5) for x in many) / statistics.median(
            _pct(x.itl_s, 0.5) for x in one
        )
        print(
            f"| {name} | {statistics.median(x.tokens_per_s for x in one):.1f} | "
            f"{statistics.median(x.tokens_per_s for x in many):.1f} | **{statistics.median(ratios):.2f}** "
            f"({min(ratios):.2f}-{max(ratios):.2f}) | {itl:.2f} |"
        )
    if len(versions) == 2:
        (a, _), (b, _) = versions
        paired = [
            y.tokens_per_s / x.tokens_per_s
            for x, y in zip(res[a][args.streams], res[b][args.streams], strict=True)
        ]
        print(
            f"\npaired {b} / {a}, {args.streams} streams: median {statistics.median(paired):.3f} "
            f"({sum(p > 1 for p in paired)} of {len(paired)} rounds faster)"
        )


if __name__ == "__main__":
    main()
