#!/usr/bin/env python3
"""GPT-2 small forward pass: cmlp vs PyTorch + transformers vs plain numpy.

    python bench/bench_engine.py [--threads 2] [--repeats 5] [--model-dir DIR]

All three run in this process, on the same synthetic GPT-2-small weights
(written once to --model-dir by cmlp.model.synthetic, seed 0) and the same
thread count: cmlp ``threads=N``, ``torch.set_num_threads(N)``, and numpy's
OpenBLAS via OPENBLAS_NUM_THREADS=N (set before numpy is imported).  Each
implementation keeps a KV cache; PyTorch gets ``logits_to_keep=1`` so it
too computes the lm_head for the last position only.  Reported numbers are
medians: prefill over --repeats runs; decode over --decode-repeats runs of
--steps tokens at each context length (the cache holds that many positions
before the timed token).  The implementations take turns within each repeat,
so load from other processes on a shared machine hits all of them alike.

Peak RSS (VmHWM) is measured in a fresh subprocess per implementation (load,
prefill 64 tokens, 16 decode steps): a process holding all three would
report their sum.

Weight GB/s = bytes of weights one decode token must read (every tensor but
wpe, of which one row is used) / decode time at context 128, next to the
read bandwidth numpy achieves on this machine (one pass over 1 GiB).

Profiling a decode loop (symbols and frame pointers are kept in the build):

    perf record -g -o /tmp/cmlp.perf -- \
        python bench/bench_engine.py --profile-decode 200 --threads 2
    perf report -i /tmp/cmlp.perf --no-children
    # expect matvec_conv1d.arch_x86_64_v4 and matvec_rows.arch_x86_64_v4 on top
    # (the AVX-512 clones; .arch_x86_64_v3 on AVX2 machines), then
    # attention_decode_forward, layernorm_forward, gpt2_pool_run

The machine is shared: run it on a quiet system and compare medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_name  # bench/ is the script's own directory

IMPLEMENTATIONS = ("cmlp", "torch", "numpy")
DECODE_CONTEXTS = (8, 128, 1000)
PREFILL_LENGTHS = (5, 64, 512)
GB = 1e9


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="prefill runs per length")
    p.add_argument(
        "--decode-repeats", type=int, default=3, help="decode runs per context length (each a fresh prompt)"
    )
    p.add_argument("--steps", type=int, default=8, help="decode steps timed per run")
    p.add_argument(
        "--model-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "cmlp-bench-gpt2-small",
        help="synthetic GPT-2 small model (written if absent)",
    )
    p.add_argument(
        "--only", choices=IMPLEMENTATIONS, action="append", help="run only these implementations (repeatable)"
    )
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument(
        "--profile-decode",
        type=int,
        metavar="N",
        help="only run N cmlp decode steps at context 128 (for perf record)",
    )
    p.add_argument("--rss-probe", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    # numpy's bundled OpenBLAS reads this when numpy is first imported
    os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)

import numpy as np  # noqa: E402

# ---------------------------------------------------------------------------
# The three implementations behind one interface
# ---------------------------------------------------------------------------


class CmlpRunner:
    name = "cmlp"

    def __init__(self, model_dir, threads):
        from cmlp.model import Gpt2Shard

        n_layer = json.loads((model_dir / "config.json").read_text())["n_layer"]
        self.shard = Gpt2Shard.load(model_dir, 0, n_layer, threads=threads)

    def reset(self):
        self.shard.clear_cache()

    def forward(self, ids):
        return self.shard.forward(np.asarray(ids, np.uint32)[None])


class TorchRunner:
    name = "torch"

    def __init__(self, model_dir, threads):
        import inspect

        import torch
        from transformers import GPT2LMHeadModel

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = GPT2LMHeadModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.reset()

    def reset(self):
        from transformers import DynamicCache

        self.cache = DynamicCache()

    def forward(self, ids):
        with self.torch.inference_mode():
            out = self.model(
                self.torch.tensor([list(ids)]),
                use_cache=True,
                logits_to_keep=1,
                **{self.cache_arg: self.cache},
            )
        return out.logits[:, -1]


class NumpyRunner:
    """GPT-2 written directly from the paper in numpy, with a preallocated KV cache."""

    name = "numpy"

    def __init__(self, model_dir, threads):
        from safetensors.numpy import load_file

        cfg = json.loads((model_dir / "config.json").read_text())
        tensors = load_file(str(model_dir / "model.safetensors"))
        self.w = {k.removeprefix("transformer."): v for k, v in tensors.items()}
        self.n_layer, self.n_head = cfg["n_layer"], cfg["n_head"]
        self.C = cfg["n_embd"]
        self.D = self.C // self.n_head
        self.eps = cfg.get("layer_norm_epsilon", 1e-5)
        shape = (self.n_layer, self.n_head, cfg["n_positions"], self.D)
        self.k_cache = np.zeros(shape, np.float32)
        self.v_cache = np.zeros(shape, np.float32)
        self.past = 0

    def reset(self):
        self.past = 0

    def layernorm(self, x, name):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    @staticmethod
    def gelu(x):
        return 0.5 * x * (1.0 + np.tanh(np.float32(np.sqrt(2 / np.pi)) * (x + 0.044715 * x**3)))

    def attention(self, layer, x):
        w, T, H, D, past = self.w, x.shape[0], self.n_head, self.D, self.past
        qkv = x @ w[f"h.{layer}.attn.c_attn.weight"] + w[f"h.{layer}.attn.c_attn.bias"]
        q, k, v = (
            qkv[:, i * self.C : (i + 1) * self.C].reshape(T, H, D).transpose(1, 0, 2) for i in range(3)
        )
        self.k_cache[layer, :, past : past + T] = k
        self.v_cache[layer, :, past : past + T] = v
        keys = self.k_cache[layer, :, : past + T]
        values = self.v_cache[layer, :, : past + T]
        scores = q @ keys.transpose(0, 2, 1) / np.float32(np.sqrt(D))
        blocked = np.arange(past + T)[None, :] > (past + np.arange(T))[:, None]
        scores[:, blocked] = -np.inf
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        y = (scores @ values).transpose(1, 0, 2).reshape(T, self.C)
        return y @ w[f"h.{layer}.attn.c_proj.weight"] + w[f"h.{layer}.attn.c_proj.bias"]

    def mlp(self, layer, x):
        w = self.w
        h = self.gelu(x @ w[f"h.{layer}.mlp.c_fc.weight"] + w[f"h.{layer}.mlp.c_fc.bias"])
        return h @ w[f"h.{layer}.mlp.c_proj.weight"] + w[f"h.{layer}.mlp.c_proj.bias"]

    def forward(self, ids):
        ids = np.asarray(ids)
        x = self.w["wte.weight"][ids] + self.w["wpe.weight"][self.past : self.past + len(ids)]
        for layer in range(self.n_layer):
            x = x + self.attention(layer, self.layernorm(x, f"h.{layer}.ln_1"))
            x = x + self.mlp(layer, self.layernorm(x, f"h.{layer}.ln_2"))
        self.past += len(ids)
        return self.w["wte.weight"] @ self.layernorm(x[-1], "ln_f")


RUNNERS = {"cmlp": CmlpRunner, "torch": TorchRunner, "numpy": NumpyRunner}


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------


def prompt(n):
    return (np.arange(n) * 7919 + 13) % 50000


def settle():
    """Let other thread pools (OpenBLAS, OpenMP) stop spinning before timing."""
    time.sleep(0.15)


def prefill_time(runner, length):
    runner.reset()
    t0 = time.perf_counter()
    runner.forward(prompt(length))
    return time.perf_counter() - t0


def decode_time(runner, context, steps):
    """Median time of `steps` tokens decoded after a prompt of `context` tokens."""
    runner.reset()
    runner.forward(prompt(context))
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        runner.forward([step + 1])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(runners, args):
    """{impl: {metric: seconds}}, medians over repeats.

    Implementations take turns within every repeat (in rotating order), so
    load from other processes on a shared machine hits all of them alike."""
    cases = [
        (f"decode{c}", lambda r, c=c: decode_time(r, c, args.steps), args.decode_repeats)
        for c in DECODE_CONTEXTS
    ]
    cases += [(f"prefill{t}", lambda r, t=t: prefill_time(r, t), args.repeats) for t in PREFILL_LENGTHS]
    for runner in runners.values():  # warm-up: buffers, caches, lazy init
        runner.reset()
        runner.forward(prompt(16))
        runner.forward([1])
    samples = {name: {} for name in runners}
    names = list(runners)
    for metric, run, repeats in cases:
        print(f"  {metric} ...", file=sys.stderr)
        for repeat in range(repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                settle()
                samples[name].setdefault(metric, []).append(run(runners[name]))
    return {name: {m: float(np.median(v)) for m, v in per.items()} for name, per in samples.items()}


def decode_weight_bytes(model_dir):
    """Bytes of weights read per decode token: every tensor except wpe (one row)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(model_dir / "model.safetensors"), "numpy") as f:
        for name in f.keys():  # noqa: SIM118 - safetensors.safe_open is not iterable
            short = name.removeprefix("transformer.")
            if short == "wpe.weight" or re.fullmatch(r"h\.\d+\.attn\.bias", short):
                continue  # one wpe row per token; HF's mask buffers are not weights
            total += 4 * int(np.prod(f.get_slice(name).get_shape()))
    return total


def read_bandwidth():
    """GB/s of one numpy pass over 1 GiB (best of 3)."""
    data = np.ones(1 << 28, np.float32)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - t0)
    return data.nbytes / best / GB


def rss_probe(name, args):
    """Subprocess body: load, prefill 64, decode 16; print peak RSS in bytes.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over execve, so a child of
    this (large) process would report the parent's size."""
    runner = RUNNERS[name](args.model_dir, args.threads)
    runner.forward(prompt(64))
    for step in range(16):
        runner.forward([step + 1])
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                print(int(line.split()[1]) * 1024)


def peak_rss(name, args):
    cmd = [
        sys.executable,
        __file__,
        "--rss-probe",
        name,
        "--threads",
        str(args.threads),
        "--model-dir",
        str(args.model_dir),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def ensure_model(model_dir):
    if not (model_dir / "model.safetensors").is_file():
        from cmlp.model.synthetic import PRESETS, write_model

        print(f"writing synthetic GPT-2 small weights to {model_dir} ...", file=sys.stderr)
        write_model(model_dir, PRESETS["small"], seed=0)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def report(results, rss, weight_bytes, bandwidth, args):
    names = [n for n in IMPLEMENTATIONS if n in results]
    from cmlp import _gpt2

    lines = [
        f"threads: {args.threads}   CPU: {cpu_name()} ({os.cpu_count()} logical)   "
        f"OpenBLAS core: {_gpt2.blas_info()[0]}",
        f"weights read per decode token: {weight_bytes / 1e6:.0f} MB   "
        f"numpy read bandwidth: {bandwidth:.1f} GB/s   "
        f"medians: prefill of {args.repeats} runs, decode of {args.decode_repeats} runs "
        f"x {args.steps} steps",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]

    def row(label, fmt):
        lines.append(f"| {label} | " + " | ".join(fmt(n) for n in names) + " |")

    for context in DECODE_CONTEXTS:
        row(
            f"decode ms/token, context {context}",
            lambda n, c=context: f"{results[n][f'decode{c}'] * 1e3:.1f}",
        )
    for length in PREFILL_LENGTHS:
        row(f"prefill {length} tokens, ms", lambda n, t=length: f"{results[n][f'prefill{t}'] * 1e3:.1f}")
    row("decode weight GB/s, context 128", lambda n: f"{weight_bytes / results[n]['decode128'] / GB:.1f}")
    if rss:
        row("peak RSS, MB", lambda n: f"{rss[n] / 2**20:.0f}")
    print("\n".join(lines))

    if "cmlp" in results and "torch" in results:
        c, t = results["cmlp"], results["torch"]
        gbps = weight_bytes / c["decode128"] / GB
        print()
        print(f"decode ctx 128: cmlp/torch = {c['decode128'] / t['decode128']:.2f} (target <= 0.6)")
        print(f"prefill 64:     cmlp/torch = {c['prefill64'] / t['prefill64']:.2f} (target <= 1)")
        print(f"decode GB/s:    {gbps:.1f} = {gbps / bandwidth:.0%} of numpy read bandwidth (target >= 80%)")


def profile_decode(args):
    runner = CmlpRunner(args.model_dir, args.threads)
    runner.forward(prompt(127))
    t0 = time.perf_counter()
    for step in range(args.profile_decode):
        if runner.shard.past_len >= 1023:
            runner.reset()
            runner.forward(prompt(127))
        runner.forward([step % 50000])
    dt = time.perf_counter() - t0
    print(f"{args.profile_decode} decode steps: {dt / args.profile_decode * 1e3:.2f} ms/token")


def main(args) -> int:
    ensure_model(args.model_dir)
    if args.rss_probe:
        rss_probe(args.rss_probe, args)
        return 0
    if args.profile_decode:
        profile_decode(args)
        return 0
    names = args.only or list(IMPLEMENTATIONS)
    weight_bytes = decode_weight_bytes(args.model_dir)
    bandwidth = read_bandwidth()
    print(f"loading {', '.join(names)} ...", file=sys.stderr)
    runners = {name: RUNNERS[name](args.model_dir, args.threads) for name in names}
    results = measure(runners, args)
    del runners
    rss = {} if args.no_rss else {name: peak_rss(name, args) for name in names}
    report(results, rss, weight_bytes, bandwidth, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
