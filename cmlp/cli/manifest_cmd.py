"""``cmlp manifest``: the packaged example manifests and the manifest generator.

    cmlp manifest list
    cmlp manifest show NAME
    cmlp manifest copy NAME DEST [--force]
    cmlp manifest init --model-dir DIR --splits 6,6 [--relay | --vsock] [--host-blind] [--base-port P]
                       [--host ADDR] [--no-hashes] [--out FILE] [--force]
                       [--<extra> for each cmlp.manifest_gen.EXTRAS key]

NAME is a packaged example as ``list`` prints it (``2stage``, ``2stage_tiny``,
...); ``manifest_2stage`` and ``manifest_2stage.json`` are accepted too.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path

from cmlp.cli.common import add_log_level
from cmlp.errors import ManifestError

PREFIX, SUFFIX = "manifest_", ".json"


def packaged_dir() -> Path:
    return Path(str(resources.files("cmlp") / "data" / "manifests"))


def packaged() -> dict:
    """Short name -> path of every packaged example."""
    root = packaged_dir()
    paths = sorted(root.glob(f"{PREFIX}*{SUFFIX}")) if root.is_dir() else []
    return {p.name[len(PREFIX) : -len(SUFFIX)]: p for p in paths}


def find(name: str) -> Path:
    short = name.removesuffix(SUFFIX).removeprefix(PREFIX)
    examples = packaged()
    if short not in examples:
        raise ManifestError(
            f"no packaged manifest {name!r} (available: "
            f"{', '.join(examples) or 'none'}; see: cmlp manifest list)"
        )
    return examples[short]


def load_for_cli(path):
    """Manifest.load, and for a missing file named like a packaged example, how to get it."""
    from cmlp.manifest import Manifest

    try:
        return Manifest.load(path)
    except ManifestError as exc:
        name = Path(path).name
        short = name.removesuffix(SUFFIX).removeprefix(PREFIX)
        if Path(path).exists() or short not in packaged():
            raise
        raise ManifestError(
            f"{str(exc).removeprefix('manifest error: ')} (it is a packaged "
            f"example: get it with "
            f"cmlp manifest copy {short} {path})"
        ) from None


def summary(path: Path) -> str:
    """'2 stages: layers 0-6, 6-12; tcp, direct; hidden 768'."""
    from cmlp.manifest import Manifest

    m = Manifest.load(path)
    layers = ", ".join(f"{s.layer_start}-{s.layer_end}" for s in m.stages)
    transport = "tcp" if m.stages[0].endpoint.control.is_tcp else "vsock"
    links = "relayed" if m.relayed_links() else "direct"
    return (
        f"{m.num_stages} stage{'s' if m.num_stages > 1 else ''}: layers {layers}; "
        f"{transport}, {links}; hidden {m.activation_spec.hidden_dim}"
    )


def register(subparsers) -> None:
    cmd = subparsers.add_parser(
        "manifest",
        help="packaged example manifests; generate one for a model",
        description="List, print or copy the packaged example manifests, or generate a "
        "manifest for a model directory (any split, real weight hashes).",
    )
    sub = cmd.add_subparsers(dest="manifest_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("list", help="the packaged examples, one per line")
    add_log_level(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="print a packaged example")
    p.add_argument("name", metavar="NAME")
    add_log_level(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("copy", help="copy a packaged example to a file or directory")
    p.add_argument("name", metavar="NAME")
    p.add_argument("dest", metavar="DEST", type=Path)
    p.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    add_log_level(p)
    p.set_defaults(func=cmd_copy)

    from cmlp.manifest_gen import EXTRAS, LAYOUTS

    p = sub.add_parser(
        "init",
        help="generate a manifest for a model directory",
        description="Cut a model's layers into stages (--splits, layers per stage), give "
        "each stage endpoints from --base-port, and fill in the weight hashes "
        "of the tensors each stage loads.",
    )
    p.add_argument(
        "--model-dir", required=True, type=Path, help="model directory (config.json, model.safetensors)"
    )
    p.add_argument(
        "--splits",
        required=True,
        metavar="N,N,...",
        help="layers per stage, e.g. 6,6 for two stages of GPT-2 small",
    )
    layout = p.add_mutually_exclusive_group()
    layout.add_argument(
        "--relay",
        dest="layout",
        action="store_const",
        const="relay",
        help="route every inter-stage link through the orchestrator's relay",
    )
    layout.add_argument(
        "--vsock",
        dest="layout",
        action="store_const",
        const="vsock",
        help="the Nitro layout (enclaves on vsock; the host relays every link)",
    )
    layout.add_argument("--layout", dest="layout", choices=sorted(LAYOUTS), help=argparse.SUPPRESS)
    p.set_defaults(layout="direct", extras=[])
    for name, extra in EXTRAS.items():  # e.g. --host-blind, with its docstring as help
        p.add_argument(
            f"--{name}",
            dest="extras",
            action="append_const",
            const=name,
            help=(extra.__doc__ or "").strip().split("\n")[0] or None,
        )
    p.add_argument(
        "--base-port", type=int, default=None, help="first port (default: 9000 for tcp, 5000 for vsock)"
    )
    p.add_argument("--host", default="127.0.0.1", help="IP of every tcp endpoint (default: 127.0.0.1)")
    p.add_argument(
        "--host-blind",
        action="store_true",
        help="host-blind mode (cmlp serve / cmlp generate): stage 0 takes clients, "
        "the last stage feeds tokens back to stage 0 (docs/host-blind.md)",
    )
    p.add_argument(
        "--no-hashes", action="store_true", help="leave weight_hashes empty (stages then accept any weights)"
    )
    p.add_argument("--out", type=Path, default=None, help="write here (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    add_log_level(p)
    p.set_defaults(func=cmd_init)


def cmd_list(args) -> int:
    examples = packaged()
    if not examples:
        raise ManifestError(f"no packaged manifests in {packaged_dir()}")
    width = max(map(len, examples))
    for name, path in examples.items():
        print(f"{name:<{width}}  {summary(path)}")
    return 0


def cmd_show(args) -> int:
    sys.stdout.write(find(args.name).read_text(encoding="utf-8"))
    return 0


def _write_new(dest: Path, text: str, force: bool) -> None:
    if dest.exists() and not force:
        raise ManifestError(f"{dest} already exists (pass --force to overwrite it)")
    if dest.parent and not dest.parent.is_dir():
        raise ManifestError(f"{dest.parent}: no such directory")
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def cmd_copy(args) -> int:
    src = find(args.name)
    dest = args.dest / src.name if args.dest.is_dir() else args.dest
    text = src.read_text(encoding="utf-8")
    try:
        same = dest.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        same = False
    if same:  # running the same copy twice is fine
        print(f"{dest} already is the packaged {args.name!r}", file=sys.stderr)
    else:
        _write_new(dest, text, args.force)
    print(dest)
    return 0


def cmd_init(args) -> int:
    from cmlp.cli.common import require_model_dir
    from cmlp.manifest_gen import generate, parse_splits

    splits = parse_splits(args.splits)
    require_model_dir(args.model_dir)
    base = args.base_port if args.base_port is not None else (5000 if args.layout == "vsock" else 9000)
    manifest = generate(
        args.model_dir,
        splits,
        layout=args.layout,
        base_port=base,
        host=args.host,
        with_hashes=not args.no_hashes,
        host_blind=args.host_blind,
        extras=args.extras,
    )
    text = manifest.dumps()
    if args.out is None:
        sys.stdout.write(text)
    else:
        _write_new(args.out, text, args.force)
        print(args.out)
    return 0
