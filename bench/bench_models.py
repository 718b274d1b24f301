#!/usr/bin/env python3
"""Llama-family shapes: cmlp vs PyTorch + transformers, decode and prefill, peak RSS.

    python bench/bench_models.py [--presets smollm2-135m,qwen2.5-0.5b] [--dtype bf16]
                                 [--threads 2] [--rounds 5] [--model-root DIR] [--no-int8]

Each preset is written once by ``cmlp model init`` (random weights with the real
shapes, stored in --dtype) under --model-root.  Both implementations run in this
process on the same files and thread count (cmlp ``threads=N``,
``torch.set_num_threads(N)``); PyTorch runs transformers' model in the same
dtype as stored, with a KV cache and ``logits_to_keep=1``.  They take turns
within every round, so load from other processes hits all alike; numbers are
medians over rounds.  With --dtype bf16, ``torch-fp32`` also runs transformers
on the same weights upcast to float32 (torch's bf16 CPU path is much slower).

decode: ms per token at context PROMPT (median of DECODE_STEPS steps, then of rounds)
prefill: ms for PREFILL tokens
peak RSS: VmHWM of a fresh subprocess per implementation (load, prefill, 16
decode steps), against the bytes of the weights it holds.  The ratio includes
the interpreter and numpy (~30-40 MB), which matters for the 135M model.

int8 rows (unless --no-int8): ``cmlp-int8`` runs the ``cmlp model quantize
--dtype int8`` copy of the same checkpoint (I8 + per-channel scales, VNNI
kernels where the CPU has them); ``ct2-int8`` is CTranslate2 (bench-only
dependency: pip install ctranslate2) on its own int8 conversion of the same
checkpoint (``quantization="int8"``), driven by token strings from its
vocabulary; its decode time is the median gap between streamed tokens of
``generate_tokens`` (the first gap, which holds the prefill, dropped) and its
prefill is ``generate_batch(max_length=1)`` (prefill plus one argmax step).

The machine is shared: report the load alongside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import cpu_name  # bench/ is the script's own directory

PROMPT = 64
DECODE_STEPS = 16
PREFILL = 128


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="smollm2-135m,qwen2.5-0.5b")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--model-root", type=Path, default=Path("/tmp/cmlp-bench-models"))
    p.add_argument("--no-int8", action="store_true", help="skip cmlp-int8 and ct2-int8")
    p.add_argument("--rss-child", nargs=3, metavar=("IMPL", "DIR", "THREADS"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


ARCH = {"smollm2-135m": "llama", "llama-3.2-1b": "llama", "qwen2.5-0.5b": "qwen2"}


def model_dir(root: Path, preset: str, dtype: str) -> Path:
    from cmlp.model.llama.synthetic import init_model

    d = root / f"{preset}-{dtype}"
    if not (d / "config.json").is_file():
        init_model(d, ARCH[preset], preset, dtype=dtype)
    return d


class Cmlp:
    name = "cmlp"

    def __init__(self, d, threads):
        import numpy as np

        from cmlp.model.registry import load_shard

        self.np = np
        cfg = json.loads((Path(d) / "config.json").read_text())
        self.shard = load_shard(
            d, 0, cfg["num_hidden_layers"], threads=threads, max_seq_len=PROMPT + DECODE_STEPS + PREFILL + 8
        )

    def prefill(self, ids):
        self.shard.clear_cache()
        return self.shard.forward(self.np.asarray([ids], self.np.uint32))

    def step(self, tok):
        return self.shard.forward(self.np.asarray([[tok]], self.np.uint32))


def int8_dir(d: Path) -> Path:
    """The ``cmlp model quantize --dtype int8`` copy of d (written once)."""
    from cmlp.model.quantize import quantize_model

    out = d.with_name(d.name + "-int8")
    if not (out / "config.json").is_file():
        quantize_model(d, out, "int8", overwrite=True)
    return out


def ct2_dir(d: Path) -> Path:
    """CTranslate2's own int8 conversion of d (written once)."""
    import ctranslate2

    out = d.with_name(d.name + "-ct2-int8")
    if not (out / "model.bin").is_file():
        ctranslate2.converters.TransformersConverter(str(d)).convert(
            str(out), quantization="int8", force=True
        )
        # the synthetic tokenizer has no bos_token; CTranslate2 4.x wants a string there
        cfg_path = out / "config.json"
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("bos_token") is None:
            cfg["bos_token"] = cfg["eos_token"]
            cfg_path.write_text(json.dumps(cfg, indent=2))
    return out


class CmlpInt8(Cmlp):
    name = "cmlp-int8"

    def __init__(self, d, threads):
        super().__init__(int8_dir(Path(d)), threads)


class Ct2Int8:
    """CTranslate2 int8 (weights int8, its own CPU kernels), same shapes and threads."""

    name = "ct2-int8"

    def __init__(self, d, threads):
        import ctranslate2

        out = ct2_dir(Path(d))
        self.vocab = json.loads((out / "vocabulary.json").read_text())
        self.gen = ctranslate2.Generator(
            str(out), device="cpu", compute_type="int8", intra_threads=threads, inter_threads=1
        )

    def prefill(self, ids):
        return self.gen.generate_batch(
            [[self.vocab[i] for i in ids]],
            max_length=1,
            beam_size=1,
            sampling_topk=1,
            include_prompt_in_result=False,
        )

    def decode_ms(self, prompt):
        stamps = []
        for _ in self.gen.generate_tokens(
            [self.vocab[i] for i in prompt],
            max_length=DECODE_STEPS + 1,
            min_length=DECODE_STEPS + 1,
            sampling_topk=1,
        ):
            stamps.append(time.perf_counter())
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]  # consecutive pairs
        return statistics.median(gaps) * 1e3


class Torch:
    """transformers in the stored dtype (bf16 on CPU: torch's own bf16 kernels)."""

    name = "torch"
    upcast = False

    def __init__(self, d, threads):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        cfg = json.loads((Path(d) / "config.json").read_text())
        dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[cfg["torch_dtype"]]
        if self.upcast:
            dtype = torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype).eval()
        self.past = None

    def prefill(self, ids):
        with self.torch.inference_mode():
            out = self.model(self.torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        self.past = out.past_key_values
        return out.logits

    def step(self, tok):
        with self.torch.inference_mode():
            out = self.model(
                self.torch.tensor([[tok]]), past_key_values=self.past, use_cache=True, logits_to_keep=1
            )
        self.past = out.past_key_values
        return out.logits


class TorchFp32(Torch):
    """transformers on the same weights upcast to float32 (2x the bytes; torch's fast path)."""

    name = "torch-fp32"
    upcast = True


IMPLS = {"cmlp": Cmlp, "torch": Torch, "torch-fp32": TorchFp32, "cmlp-int8": CmlpInt8, "ct2-int8": Ct2Int8}
INT8_IMPLS = ("cmlp-int8", "ct2-int8")


def time_decode(impl, prompt):
    if hasattr(impl, "decode_ms"):
        return impl.decode_ms(prompt)
    impl.prefill(prompt)
    times = []
    for i in range(DECODE_STEPS):
        t0 = time.perf_counter()
        impl.step(7 + i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def time_prefill(impl, ids):
    t0 = time.perf_counter()
    impl.prefill(ids)
    return (time.perf_counter() - t0) * 1e3


def rss_child(impl_name, d, threads):
    impl = IMPLS[impl_name](d, int(threads))
    impl.prefill(list(range(1, PROMPT + 1)))
    if hasattr(impl, "decode_ms"):
        impl.decode_ms(list(range(1, PROMPT + 1)))
    for i in range(0 if hasattr(impl, "decode_ms") else DECODE_STEPS):
        impl.step(7 + i)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]) * 1024)
            return


def peak_rss(impl_name, d, threads):
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", impl_name, str(d), str(threads)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    return int(out.stdout.split()[-1])


def weight_bytes(d, impl_name="cmlp"):
    if impl_name == "cmlp-int8":
        d = int8_dir(Path(d))
    if impl_name == "ct2-int8":
        return (ct2_dir(Path(d)) / "model.bin").stat().st_size
    return sum(p.stat().st_size for p in Path(d).glob("*.safetensors"))


def main(argv=None):
    args = parse_args(argv)
    if args.rss_child:
        rss_child(*args.rss_child)
        return 0
    from cmlp import _gpt2

    cpu = cpu_name()
    print(
        f"CPU: {cpu}; threads {args.threads}; rounds {args.rounds}; dtype {args.dtype}; "
        f"OpenBLAS {_gpt2.blas_info()[0]}; load average {os.getloadavg()[0]:.1f}"
    )
    prompt = list(range(1, PROMPT + 1))
    prefill_ids = list(range(1, PREFILL + 1))
    for preset in args.presets.split(","):
        d = model_dir(args.model_root, preset, args.dtype)
        names = [
            n
            for n in IMPLS
            if (args.dtype == "bf16" or n != "torch-fp32") and not (args.no_int8 and n in INT8_IMPLS)
        ]
        impls = []
        for name in names:
            try:
                impls.append(IMPLS[name](d, args.threads))
            except ImportError as exc:
                print(f"{name}: skipped ({exc}; pip install ctranslate2)")
        results = {i.name: {"decode": [], "prefill": []} for i in impls}
        for _ in range(args.rounds):
            for impl in impls:
                results[impl.name]["decode"].append(time_decode(impl, prompt))
                results[impl.name]["prefill"].append(time_prefill(impl, prefill_ids))
        wb = weight_bytes(d)
        print(f"\n{preset} ({args.dtype}, weights {wb / 1e6:.0f} MB)")
        print(
            f"{'impl':10} {'decode ms/tok':>14} {'prefill ' + str(PREFILL) + ' ms':>14} "
            f"{'weight GB/s':>12} {'peak RSS MB':>12} {'RSS/weights':>12}"
        )
        del impls
        for name, r in results.items():
            dec, pre = statistics.median(r["decode"]), statistics.median(r["prefill"])
            rss = peak_rss(name, d, args.threads)
            wb = weight_bytes(d, name)
            print(
                f"{name:10} {dec:14.2f} {pre:14.1f} {wb / dec / 1e6:12.2f} {rss / 1e6:12.0f} {rss / wb:12.2f}"
            )
        pairs = [("cmlp", n) for n in results if n not in ("cmlp",) + INT8_IMPLS]
        pairs += [("cmlp-int8", n) for n in ("ct2-int8", "torch") if n in results and "cmlp-int8" in results]
        for ours, peer in pairs:
            c, t = results[ours], results[peer]
            print(
                f"{ours}/{peer}: decode "
                f"{statistics.median(c['decode']) / statistics.median(t['decode']):.2f}x, prefill "
                f"{statistics.median(c['prefill']) / statistics.median(t['prefill']):.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
