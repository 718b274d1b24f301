"""``cmlp model``: synthetic model directories and shard weight hashes.

    cmlp model init --out DIR [--preset small|tiny] [--seed N] [--force]
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

PRESET_NAMES = ("small", "tiny")   # cmlp.model.synthetic.PRESETS, without importing numpy


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
    model = subparsers.add_parser("model", help="GPT-2 model files: synthetic init, weight hashes",
                                  description="GPT-2 model files: synthetic model directories "
                                              "and shard weight hashes.")
    sub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)

    init = sub.add_parser(
        "init", help="write a seeded random GPT-2 model directory (HF layout)",
        description="Write config.json, model.safetensors and tokenizer.json in the layout of "
                    "openai-community/gpt2, with deterministic random weights "
                    "(marked cmlp_synthetic in config.json).")
    init.add_argument("--out", required=True, type=Path, help="model directory to write")
    init.add_argument("--preset", choices=PRESET_NAMES, default="small",
                      help="small: GPT-2 small shapes (default); tiny: n_embd 64, 4 layers")
    init.add_argument("--seed", type=int, default=0, help="RNG seed (default: 0)")
    init.add_argument("--force", action="store_true", help="overwrite an existing model")
    add_log_level(init)
    init.set_defaults(func=cmd_init)

    hashes = sub.add_parser(
        "hashes", help="print the weight hashes of a shard, for a manifest",
        description="Print the SHA-256 of every tensor a shard of layers [START, END) loads, "
                    "one per line in canonical order (sorted by tensor name).")
    hashes.add_argument("--model-dir", required=True, type=Path)
    hashes.add_argument("--layers", required=True, type=parse_layers, metavar="START:END")
    hashes.add_argument("--with-names", action="store_true",
                        help="print '<sha256>  <tensor name>' lines")
    add_log_level(hashes)
    hashes.set_defaults(func=cmd_hashes)

    quantize = sub.add_parser(
        "quantize", help="write a bf16 or int8 (weight-only) copy of a model directory",
        description="Write a copy of a model directory with its matmul weights in bf16, or in "
                    "int8 with one fp32 scale per output channel (docs/quantization.md).")
    quantize.add_argument("--in", dest="in_dir", required=True, type=Path, help="model to read")
    quantize.add_argument("--out", required=True, type=Path, help="directory to write")
    quantize.add_argument("--dtype", choices=("int8", "bf16"), default="int8",
                          help="stored weight dtype (default: int8)")
    quantize.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    add_log_level(quantize)
    quantize.set_defaults(func=cmd_quantize)


def cmd_init(args) -> int:
    from cmlp.model.synthetic import init_model
    out = init_model(args.out, preset=args.preset, seed=args.seed, overwrite=args.force)
    print(out)
    return 0


def cmd_hashes(args) -> int:
    from cmlp.model.config import load_config
    from cmlp.model.weights import load_shard_weights
    start, end = args.layers
    config = load_config(args.model_dir)
    weights = load_shard_weights(args.model_dir, config, start, end)
    for name, digest in weights.hashes():
        print(f"{digest}  {name}" if args.with_names else digest)
    return 0


def cmd_quantize(args) -> int:
    from cmlp.model.quantize import quantize_model
    print(quantize_model(args.in_dir, args.out, dtype=args.dtype, overwrite=args.force))
    return 0
