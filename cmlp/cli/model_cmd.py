"""``cmlp model``: synthetic model directories and shard weight hashes.

    cmlp model init --out DIR [--arch gpt2|llama|qwen2] [--preset NAME] [--dtype fp32|bf16|fp16]
                    [--seed N] [--force]
    cmlp model hashes --model-dir DIR --layers START:END [--with-names]
    cmlp model quantize --in DIR --out DIR [--dtype int8|bf16] [--force]

``hashes`` prints what a manifest stage's ``weight_hashes`` list needs: the
SHA-256 of every tensor the shard loads, one hex per line, in the canonical
order of ``Gpt2Shard.weight_hashes()`` (sorted by tensor name).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cmlp.cli.common import add_log_level

# the synthetic modules' PRESETS, without importing numpy (first preset: the default)
PRESET_NAMES = {
    "gpt2": ("small", "tiny"),
    "llama": ("tiny", "smollm2-135m", "llama-3.2-1b"),
    "qwen2": ("tiny", "qwen2.5-0.5b"),
}


def parse_layers(text: str) -> tuple[int, int]:
    """``START:END`` -> (start, end); the range itself is checked against the config."""
    start, sep, end = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(start), int(end)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:END (e.g. 0:6), got {text!r}") from None


def register(subparsers) -> None:
    model = subparsers.add_parser(
        "model",
        help="model files: synthetic init, weight hashes",
        description="Model files (gpt2, llama, qwen2): synthetic model directories and shard weight hashes.",
    )
    sub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)

    init = sub.add_parser(
        "init",
        help="write a seeded random model directory (HF layout)",
        description="Write config.json, model.safetensors (sharded above 2 GiB) and "
        "tokenizer.json in the published Hugging Face layout of the family, with "
        "deterministic random weights (marked cmlp_synthetic in config.json).",
    )
    init.add_argument("--out", required=True, type=Path, help="model directory to write")
    init.add_argument(
        "--arch", choices=tuple(PRESET_NAMES), default="gpt2", help="model family (default: gpt2)"
    )
    all_presets = sorted({p for names in PRESET_NAMES.values() for p in names})
    init.add_argument(
        "--preset",
        choices=all_presets,
        default=None,
        help="gpt2: small (default), tiny; llama: tiny (default), smollm2-135m, "
        "llama-3.2-1b; qwen2: tiny (default), qwen2.5-0.5b (real shapes)",
    )
    init.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="stored weight dtype for llama/qwen2 (default: fp32; gpt2: fp32 only)",
    )
    init.add_argument("--seed", type=int, default=0, help="RNG seed (default: 0)")
    init.add_argument(
        "--force",
        action="store_true",
        help="overwrite an existing model (without it, the same preset and seed "
        "already in DIR are reused and anything else is refused)",
    )
    add_log_level(init)
    init.set_defaults(func=cmd_init)

    hashes = sub.add_parser(
        "hashes",
        help="print the weight hashes of a shard, for a manifest",
        description="Print the SHA-256 of every tensor a shard of layers [START, END) loads, "
        "one per line in canonical order (sorted by tensor name).",
    )
    hashes.add_argument("--model-dir", required=True, type=Path)
    hashes.add_argument("--layers", required=True, type=parse_layers, metavar="START:END")
    hashes.add_argument("--with-names", action="store_true", help="print '<sha256>  <tensor name>' lines")
    add_log_level(hashes)
    hashes.set_defaults(func=cmd_hashes)

    quantize = sub.add_parser(
        "quantize",
        help="write a bf16 or int8 (weight-only) copy of a model directory",
        description="Write a copy of a model directory with its matmul weights in bf16, or in "
        "int8 with one fp32 scale per output channel (docs/quantization.md).",
    )
    quantize.add_argument("--in", dest="in_dir", required=True, type=Path, help="model to read")
    quantize.add_argument("--out", required=True, type=Path, help="directory to write")
    quantize.add_argument(
        "--dtype", choices=("int8", "bf16"), default="int8", help="stored weight dtype (default: int8)"
    )
    quantize.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    add_log_level(quantize)
    quantize.set_defaults(func=cmd_quantize)


def _same_llama(out: Path, arch: str, preset: str, dtype: str, seed: int) -> bool:
    """True when ``out`` already holds this synthetic llama-family model (reuse it); ModelError
    when it holds another model (never overwritten without --force); False when empty."""
    import json

    from cmlp.errors import ModelError
    from cmlp.model.llama.synthetic import DTYPES

    config_path = out / "config.json"
    if not config_path.is_file():
        return False
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = None
    same = (
        isinstance(cfg, dict)
        and cfg.get("cmlp_synthetic")
        and cfg.get("model_type") == arch
        and cfg.get("cmlp_preset") == preset
        and cfg.get("cmlp_seed") == seed
        and cfg.get("torch_dtype") == DTYPES[dtype][1]
    )
    if not same:
        raise ModelError(
            f"{out} already holds another model than the synthetic {arch} {preset!r} "
            f"({dtype}, seed {seed}): pass --force to overwrite it, or choose "
            "another --out"
        )
    return True


def cmd_init(args) -> int:
    import sys

    from cmlp.errors import ModelError

    preset = args.preset or PRESET_NAMES[args.arch][0]
    if preset not in PRESET_NAMES[args.arch]:
        raise ModelError(
            f"preset {preset!r} is not a {args.arch} preset "
            f"(choose from {', '.join(PRESET_NAMES[args.arch])})"
        )
    if args.arch == "gpt2":
        if args.dtype != "fp32":
            raise ModelError("gpt2 models are written in fp32 only")
        from cmlp.model.gpt2.synthetic import init_or_reuse

        out, reused = init_or_reuse(args.out, preset=preset, seed=args.seed, force=args.force)
    else:
        from cmlp.model.llama.synthetic import init_model as init_llama

        out, reused = (
            Path(args.out),
            (not args.force and _same_llama(Path(args.out), args.arch, preset, args.dtype, args.seed)),
        )
        if not reused:
            out = init_llama(
                args.out, args.arch, preset=preset, dtype=args.dtype, seed=args.seed, overwrite=args.force
            )
    if reused:
        print(
            f"{out} already holds the synthetic {args.arch} {preset!r} model "
            f"({args.dtype}, seed {args.seed}): reusing it (--force rewrites it)",
            file=sys.stderr,
        )
    print(out)
    return 0


def cmd_hashes(args) -> int:
    from cmlp.cli.common import require_model_dir
    from cmlp.model.registry import detect_family

    start, end = args.layers
    require_model_dir(args.model_dir)
    family = detect_family(args.model_dir)
    if family == "gpt2":
        from cmlp.model.gpt2.config import load_config as load_gpt2_config
        from cmlp.model.gpt2.weights import load_shard_weights as load_gpt2_shard

        hashes = load_gpt2_shard(args.model_dir, load_gpt2_config(args.model_dir), start, end).hashes()
    else:
        from cmlp.model.llama.config import load_config as load_llama_config
        from cmlp.model.llama.weights import load_shard_weights as load_llama_shard

        config = load_llama_config(args.model_dir, family)
        hashes = load_llama_shard(args.model_dir, config, start, end).hashes()
    for name, digest in hashes:
        print(f"{digest}  {name}" if args.with_names else digest)
    return 0


def cmd_quantize(args) -> int:
    from cmlp.model.quantize import quantize_model

    print(quantize_model(args.in_dir, args.out, dtype=args.dtype, overwrite=args.force))
    return 0
