"""``cmlp``: one console script with subcommands.

Each subcommand lives in its own module exposing ``register(subparsers)``,
which adds a parser whose ``func(args) -> int`` runs the command.  Modules are
imported lazily so ``cmlp --version`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import cmlp
from cmlp.cli.common import Parser

SUBCOMMAND_MODULES = (
    "cmlp.cli.echo",  # echo-server, echo-client
    "cmlp.cli.model_cmd",  # model init, model hashes
    "cmlp.cli.attest_cmd",  # attest verify
    "cmlp.cli.serve",  # serve (host-blind mode, host side)
    "cmlp.cli.generate",  # generate (host-blind mode, user side)
    "cmlp.cli.manifest_cmd",  # manifest list, show, copy, init
    "cmlp.cli.proxy_cmd",  # proxy (OpenAI-compatible API)
    "cmlp.cli.bench_cmd",  # bench serve (continuous batching)
)


def build_parser() -> Parser:
    parser = Parser(prog="cmlp", description=cmlp.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cmlp {cmlp.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # subcommand not built into this install
            raise
        module.register(sub)
    return parser


def main(argv=None) -> int:
    from cmlp.cli.common import run_command

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
