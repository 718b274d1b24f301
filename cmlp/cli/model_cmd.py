"""``cmlp model``: synthetic model directories and shard weight hashes.

    cmlp model init --out DIR [--preset small|tiny] [--seed N] [--force]
    cmlp model hashes --model-dir DIR --layers START:END [--with-names]

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
    init.add_argument("--force", action="store_true",
                      help="overwrite an existing model (without it, the same preset and seed "
                           "already in DIR are reused and anything else is refused)")
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


def cmd_init(args) -> int:
    import sys
    from cmlp.model.synthetic import init_or_reuse
    out, reused = init_or_reuse(args.out, preset=args.preset, seed=args.seed, force=args.force)
    if reused:
        print(f"{out} already holds the synthetic {args.preset!r} model with seed {args.seed}: "
              "reusing it (--force rewrites it)", file=sys.stderr)
    print(out)
    return 0


def cmd_hashes(args) -> int:
    from cmlp.model.config import load_config
    from cmlp.model.weights import load_shard_weights
    from cmlp.cli.common import require_model_dir
    start, end = args.layers
    require_model_dir(args.model_dir)
    config = load_config(args.model_dir)
    weights = load_shard_weights(args.model_dir, config, start, end)
    for name, digest in weights.hashes():
        print(f"{digest}  {name}" if args.with_names else digest)
    return 0
