#!/usr/bin/env python3
"""GPT-2 small at fp32 / bf16 / int8: cmlp vs CTranslate2, and the bandwidth ceiling.

    python bench/bench_precision.py [--threads 2] [--rounds 7] [--steps 16]

One process, the same synthetic GPT-2-small weights (``cmlp model init``,
seed 0) for everything:

- cmlp fp32, bf16 and int8 (``cmlp model quantize``: bf16, int8 weight-only
  with per-channel scales), each ``Gpt2Shard(threads=N)``;
- CTranslate2 converted once from the same HF checkpoint
  (``TransformersConverter``), loaded with compute_type float32, int16 and
  int8 (``intra_threads=N``); the compute type CT2 actually runs is printed
  (int16 needs Intel MKL: elsewhere CT2 falls back, and the table says so);
- a plain streaming read of a 512 MiB buffer (the pool, N threads, AVX-512
  adds): the bandwidth ceiling each precision's weight bytes/s is set against.

Each of --rounds rounds runs every implementation in turn (interleaved, so
load from other processes hits all alike), and the tables show medians:
decode = ms per token after a --context token prompt (--steps tokens timed
per round; CT2's from the gaps between ``generate_tokens`` yields), prefill
= one forward of --prefill tokens (CT2: ``generate_batch`` max_length 1,
i.e. prefill plus one lm_head, as cmlp's forward computes the last position's
logits).  Quality: logit error and perplexity of bf16/int8 against fp32 on
cmlp.model.quant_eval.FIXED_TEXT.

CTranslate2, transformers and torch are bench dependencies only (the
converter needs them); cmlp never imports them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import cpu_name  # bench/ is the script's own directory

PRECISIONS = ("fp32", "bf16", "int8")
CT2_TYPE = {"fp32": "float32", "bf16": "int16", "int8": "int8"}  # the peer of each precision
TARGET = {"fp32": 0.95, "bf16": 0.9, "int8": 0.9}  # cmlp / CT2 decode, at most
MiB = 1 << 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=16, help="decode tokens timed per round")
    p.add_argument("--context", type=int, default=128, help="prompt length before decode")
    p.add_argument("--prefill", type=int, default=512, help="prefill length")
    p.add_argument(
        "--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "cmlp-bench-precision-gpt2-small"
    )
    p.add_argument("--stream-mib", type=int, default=512, help="bandwidth probe buffer")
    p.add_argument("--no-ct2", action="store_true", help="cmlp only")
    p.add_argument("--no-quality", action="store_true")
    return p.parse_args(argv)


def prepare_models(model_dir: Path) -> dict[str, Path]:
    from cmlp.model.quantize import quantize_model
    from cmlp.model.synthetic import init_model

    if not (model_dir / "model.safetensors").exists():
        init_model(model_dir, preset="small", seed=0, overwrite=True)
    dirs = {"fp32": model_dir}
    for name, dtype in (("bf16", "bf16"), ("int8", "int8")):
        out = model_dir.with_name(f"{model_dir.name}-{name}")
        if not (out / "model.safetensors").exists():
            quantize_model(model_dir, out, dtype, overwrite=True)
        dirs[name] = out
    return dirs


def decode_bytes(shard) -> int:
    """Weight bytes one decode token reads: every tensor but wpe (one row of it)."""
    return sum(t.nbytes for name, t in shard._weights.tensors.items() if name != "wpe.weight")


class CmlpRunner:
    def __init__(self, model_dir: Path, threads: int):
        from cmlp.model.engine import Gpt2Shard

        self.shard = Gpt2Shard.load(model_dir, 0, 12, threads=threads)

    def prefill(self, ids: np.ndarray) -> float:
        self.shard.clear_cache()
        start = time.perf_counter()
        self.shard.forward(ids[None])
        return time.perf_counter() - start

    def decode(self, prompt: np.ndarray, steps: int) -> list[float]:
        self.shard.clear_cache()
        logits = self.shard.forward(prompt[None])
        token = np.zeros((1, 1), np.uint32)
        times = []
        for _ in range(steps):
            token[0, 0] = int(logits[0].argmax())
            start = time.perf_counter()
            logits = self.shard.forward(token)
            times.append(time.perf_counter() - start)
        return times


class Ct2Runner:
    def __init__(self, ct2_dir: Path, compute_type: str, threads: int, vocab):
        import ctranslate2

        self.gen = ctranslate2.Generator(
            str(ct2_dir), device="cpu", compute_type=compute_type, intra_threads=threads, inter_threads=1
        )
        self.compute_type = self.gen.compute_type
        self.vocab = vocab

    def tokens(self, ids: np.ndarray) -> list[str]:
        return [self.vocab[int(i)] for i in ids]

    def prefill(self, ids: np.ndarray) -> float:
        tokens = self.tokens(ids)
        start = time.perf_counter()
        self.gen.generate_batch(
            [tokens], max_length=1, beam_size=1, sampling_topk=1, include_prompt_in_result=False
        )
        return time.perf_counter() - start

    def decode(self, prompt: np.ndarray, steps: int) -> list[float]:
        tokens = self.tokens(prompt)
        stamps = []
        for _ in self.gen.generate_tokens(
            tokens, max_length=steps + 1, min_length=steps + 1, sampling_topk=1
        ):
            stamps.append(time.perf_counter())
        return list(np.diff(stamps))  # the first yield also holds the prefill: dropped


def convert_ct2(model_dir: Path) -> Path:
    import ctranslate2

    out = model_dir.with_name(f"{model_dir.name}-ct2")
    if not (out / "model.bin").exists():
        ctranslate2.converters.TransformersConverter(str(model_dir)).convert(
            str(out), quantization=None, force=True
        )
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from cmlp import _gpt2, _wkernels
    from cmlp.model.quant_eval import compare, fixed_ids

    dirs = prepare_models(args.model_dir)
    rng = np.random.default_rng(0)
    prefill_ids = rng.integers(0, 50257, args.prefill).astype(np.uint32)
    prompt = rng.integers(0, 50257, args.context).astype(np.uint32)

    runners: dict[str, object] = {}
    for name in PRECISIONS:
        runners[f"cmlp {name}"] = CmlpRunner(dirs[name], args.threads)
    ct2_note = {}
    if not args.no_ct2:
        try:
            import ctranslate2  # noqa: F401
            from tokenizers import Tokenizer
        except ImportError as exc:
            sys.exit(f"CTranslate2 is a bench dependency: pip install ctranslate2 ({exc})")
        ct2_dir = convert_ct2(args.model_dir)
        tok = Tokenizer.from_file(str(args.model_dir / "tokenizer.json"))
        vocab = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
        for name in PRECISIONS:
            wanted = CT2_TYPE[name]
            try:
                r = Ct2Runner(ct2_dir, wanted, args.threads, vocab)
            except ValueError as exc:
                ct2_note[name] = f"CT2 {wanted} unavailable: {exc}"
                continue
            runners[f"ct2 {wanted}"] = r
            if r.compute_type != wanted:
                ct2_note[name] = f"CT2 asked {wanted}, runs {r.compute_type}"

    stream = np.ones(args.stream_mib * MiB // 4, np.float32)
    prefill_t = {k: [] for k in runners}
    decode_t = {k: [] for k in runners}
    stream_t = []
    for rnd in range(args.rounds):
        stream_t += _wkernels.stream_read_seconds(stream, args.threads, 2)
        for key, r in runners.items():
            decode_t[key].append(statistics.median(r.decode(prompt, args.steps)))
            prefill_t[key].append(r.prefill(prefill_ids))
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    ceiling = stream.nbytes / statistics.median(stream_t)

    def med(d, k):
        return statistics.median(d[k]) * 1e3

    print(
        f"\nGPT-2 small (synthetic, seed 0), threads {args.threads}, CPU: {cpu_name()} "
        f"({os.cpu_count()} logical); {args.rounds} interleaved rounds, medians"
    )
    print(
        f"cmlp weight kernels: {_wkernels.isa_active()} (detected {_wkernels.isa_detected()}); "
        f"OpenBLAS {_gpt2.blas_info()[0]}"
    )
    print(f"streaming-read ceiling: {ceiling / 1e9:.1f} GB/s ({args.stream_mib} MiB, {args.threads} threads)")
    print("machine shared with other jobs: absolute numbers are noisy, ratios less so\n")
    hdr = (
        f"{'precision':9} {'cmlp ms/tok':>11} {'CT2 ms/tok':>16} {'ratio':>6} {'target':>7} "
        f"{'cmlp pf' + str(args.prefill):>11} {'CT2 pf':>8} {'ratio':>6} "
        f"{'MB/tok':>7} {'GB/s':>6} {'%ceil':>6}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name in PRECISIONS:
        ck = f"cmlp {name}"
        tk = f"ct2 {CT2_TYPE[name]}"
        d, p = med(decode_t, ck), med(prefill_t, ck)
        nbytes = decode_bytes(runners[ck].shard)
        gbs = nbytes / (d / 1e3) / 1e9
        if tk in runners:
            cd, cp = med(decode_t, tk), med(prefill_t, tk)
            ct2 = f"{cd:8.2f} ({runners[tk].compute_type[:7]})"
            ratio, pratio = f"{d / cd:6.2f}", f"{p / cp:6.2f}"
            cps = f"{cp:8.1f}"
        else:
            ct2, ratio, pratio, cps = f"{'-':>16}", f"{'-':>6}", f"{'-':>6}", f"{'-':>8}"
        print(
            f"{name:9} {d:11.2f} {ct2:>16} {ratio} {'<=' + str(TARGET[name]):>7} {p:11.1f} "
            f"{cps} {pratio} {nbytes / 1e6:7.1f} {gbs:6.1f} {gbs * 1e9 / ceiling:6.0%}"
        )
    for note in ct2_note.values():
        print("note:", note)
    print("\nspread over rounds (min / median / max):")
    for key in runners:
        d = sorted(x * 1e3 for x in decode_t[key])
        p = sorted(x * 1e3 for x in prefill_t[key])
        print(
            f"  {key:14} decode {d[0]:7.2f} / {statistics.median(d):7.2f} / {d[-1]:7.2f} ms"
            f"   prefill {p[0]:7.0f} / {statistics.median(p):7.0f} / {p[-1]:7.0f} ms"
        )

    if not args.no_quality:
        print("\nquality vs fp32 on the fixed text (teacher-forced decode):")
        ids = fixed_ids(50257, 64)
        for name in ("bf16", "int8"):
            report = compare(runners["cmlp fp32"].shard, runners[f"cmlp {name}"].shard, ids)
            print(f"  {name}: {report.line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
