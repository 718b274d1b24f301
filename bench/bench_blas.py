#!/usr/bin/env python3
"""cmlp._gpt2 over two BLAS builds, side by side in one process (GPT-2 small, synthetic).

    # the other build, e.g. against the system OpenBLAS (the default links scipy-openblas32):
    CMLP_BLAS=system CMLP_ONLY=_gpt2 python setup.py build_ext --force \\
        --build-lib /tmp/cmlp-sysblas --build-temp /tmp/cmlp-sysblas-tmp
    python bench/bench_blas.py /tmp/cmlp-sysblas/cmlp/_gpt2.cpython-*.so [--threads 2] [--repeats 9]

Both builds load into this process (their OpenBLAS libraries export different symbol names:
scipy-openblas32 prefixes its own with ``scipy_``) and run the same shard on the same weights,
alternating per repeat and swapping the order every other repeat, so load from other processes
hits both alike.  Each build gets two shards, loaded in the order A B B A: where a shard's
weights land (an order effect of ~20 % on decode, which uses no BLAS at all) then cancels out.  Decode = ms per token at context 128 (8 steps after a 128-token prefill;
cmlp's own matvec kernels, BLAS is not on this path); prefill = 5/64/512 tokens (BLAS sgemm).
Reported: medians over the repeats, and the ratio other/in-place (< 1: the other is faster).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

CASES = (
    ("decode ms/token, context 128", "decode", 128),
    ("prefill 5 tokens, ms", "prefill", 5),
    ("prefill 64 tokens, ms", "prefill", 64),
    ("prefill 512 tokens, ms", "prefill", 512),
)


def load_other(path: str):
    spec = importlib.util.spec_from_file_location("cmlp._gpt2", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("other", help="the other build's _gpt2 extension (.so)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "cmlp-bench-gpt2-small")
    args = ap.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's own OpenBLAS stays out of the way

    import numpy as np

    import cmlp.model.engine as engine
    from cmlp.model.synthetic import init_model

    builds = {"in-place": engine._gpt2, "other": load_other(args.other)}
    for name, module in builds.items():
        core, config = module.blas_info()
        print(f"{name:9} {core}: {config}")
    if not (args.model_dir / "model.safetensors").is_file():
        init_model(args.model_dir, preset="small")
    shards = {}
    try:
        for name, copy in (("in-place", 0), ("other", 0), ("other", 1), ("in-place", 1)):
            engine._gpt2 = builds[name]  # Gpt2Shard builds its ShardEngine from this module
            shards[(name, copy)] = engine.Gpt2Shard.load(args.model_dir, 0, 12, threads=args.threads)
    finally:
        engine._gpt2 = builds["in-place"]
    rng = np.random.default_rng(0)

    def ids(n):
        return rng.integers(0, 50257, size=(1, n), dtype=np.uint32)

    def run(shard, kind, n):
        shard.clear_cache()
        if kind == "prefill":
            x = ids(n)
            t = time.perf_counter()
            shard.forward(x)
            return (time.perf_counter() - t) * 1e3
        shard.forward(ids(n))
        steps = [ids(1) for _ in range(8)]
        t = time.perf_counter()
        for x in steps:
            shard.forward(x)
        return (time.perf_counter() - t) * 1e3 / len(steps)

    times = {(label, name): [] for label, _, _ in CASES for name in builds}
    for r in range(args.repeats):
        order = list(shards) if r % 2 == 0 else list(reversed(shards))
        for label, kind, n in CASES:
            for key in order:
                times[(label, key[0])].append(run(shards[key], kind, n))
    print(f"\nthreads {args.threads}, {args.repeats} repeats x 2 shards per build; medians")
    print("| metric | in-place | other | other/in-place |")
    print("|---|---:|---:|---:|")
    for label, _, _ in CASES:
        a = statistics.median(times[(label, "in-place")])
        b = statistics.median(times[(label, "other")])
        print(f"| {label} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
