"""Shared CLI plumbing: logging setup and the one-line error policy.

Every command reports a failure as one clear line on stderr and a non-zero
exit; a traceback is printed only with ``--log-level debug``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cmlp.errors import CmlpError

LOG_LEVELS = ("debug", "info", "warning", "error")


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error policy (no usage dump on a bad value)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def arg_type(parse, what: str):
    """An argparse ``type=`` that keeps the parser's own error message."""

    def convert(text):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = what
    return convert


def prog_name(default: str) -> str:
    """The installed script's name, or ``default`` under ``python -m``."""
    name = os.path.basename(sys.argv[0])
    return default if name.endswith(".py") or name in ("", "-c", "__main__") else name


def add_log_level(parser, default: str = "warning") -> None:
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=default,
        help=f"logging verbosity on stderr (default: {default}); debug also prints tracebacks",
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so long-running servers exit cleanly.

    (Background jobs of a non-interactive shell start with SIGINT ignored, so
    service managers and scripts stop us with SIGTERM.)
    """
    import signal

    def _raise(signum, frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, _raise)


def console_main(build_parser, run, default_prog: str, argv=None) -> int:
    """Entry point of a console script: parse, then run with the error policy."""
    prog = prog_name(default_prog)
    args = build_parser(prog).parse_args(argv)
    args.prog_name = prog
    return run_command(run, args)


def run_command(func, args) -> int:
    level = getattr(args, "log_level", "warning")
    setup_logging(level)
    try:
        rc = func(args)
        return 0 if rc is None else int(rc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except (CmlpError, OSError, ValueError) as exc:
        if level == "debug":
            logging.getLogger("cmlp").exception("command failed")
        prog = getattr(args, "prog_name", "cmlp")
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def model_init_hint(model_dir, hidden_dim: int = 768) -> str:
    """The command that creates the model a command was pointed at (its path, its preset)."""
    import shlex

    preset = " --preset tiny" if hidden_dim == 64 else ""  # the tiny preset's n_embd
    return f"cmlp model init --out {shlex.quote(str(model_dir))}{preset}"


def require_model_dir(model_dir, hidden_dim: int = 768) -> None:
    """ModelError naming the missing file and how to create this very directory."""
    from pathlib import Path

    from cmlp.errors import ModelError

    model_dir = Path(model_dir)
    weights = (
        "model.safetensors.index.json"
        if (model_dir / "model.safetensors.index.json").is_file()
        else "model.safetensors"
    )  # sharded checkpoints have an index instead
    for name in ("config.json", weights):
        if not (model_dir / name).is_file():
            what = " (it does not exist)" if not model_dir.exists() else ""
            raise ModelError(
                f"model directory '{model_dir}' has no {name}{what} "
                f"(create it with: {model_init_hint(model_dir, hidden_dim)})"
            )
