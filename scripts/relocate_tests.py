#!/usr/bin/env python3
"""Move test files from tests/ into the directory that mirrors the package they test.

    python scripts/relocate_tests.py [--dry-run] [FILE...]

Without FILE, every ``tests/test_*.py`` in the tests/ root is placed; with FILE, only those
(anywhere under tests/).  Other modules in the tests/ root (helpers, formerly imported through
a sys.path edit in conftest.py) move to ``tests/helpers/``.  Each move is a ``git mv``
(history follows), then imports of the helpers become ``tests.helpers.*`` imports in every
file under tests/, and ``Path(__file__)`` arithmetic is fixed in the moved files for their
new depth.  Idempotent: files already in a subdirectory are left alone, so it can be re-run
after merging a branch that added tests or helpers in the root.  Helper *functions* that a
branch added to tests/conftest.py belong in tests/helpers/common.py (conftest.py keeps
fixtures and hooks only).

Placement (first matching rule wins, on the file name):
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"

# (directory under tests/, file-name pattern); the docstring lists them too
RULES = [
    ("cli", r"test_(cli|.*_cli)(_\w+)?\.py"),
    (
        "attestation",
        r"test_(nitro|nsm|attest|attestation|snp|sev|az_?snp|azure|tdx|tee|pki|cbor|"
        r"cose|x509|der|mock_att|clock)\w*\.py",
    ),
    (
        "model",
        r"test_(model|models|tokenizer|engine|gpt2_engine|llama|qwen|wkernels|quant|bf16|"
        r"int8|kernels|weights|safetensors|registry|chat|preset|sampling)\w*\.py",
    ),
    (
        "transport",
        r"test_(channel|frame|handshake|record|vector|interop|wire|transport|sockets|"
        r"netio|sodium)\w*\.py",
    ),
    (
        "pipeline",
        r"test_(pipeline|control|stage|orchestrator|relay|hostile|sustained|executor|"
        r"protocol|client|serve|proxy|generate|feedback|integrity|metrics|hostblind|batching)\w*\.py",
    ),
    ("packaging", r"test_(wheel|setup|deploy|fuzz|scripts|packaging|install)\w*\.py"),
    ("core", r"test_\w+\.py"),  # cmlp/*.py: manifest, errors, strict_json, retry, deadline, ...
]
__doc__ += "".join(f"    tests/{d + '/':13} {p}\n" for d, p in RULES)

# helper modules that lived in tests/ (reached through a sys.path edit) -> tests/helpers/;
# a helper not listed keeps its name (tests/foo.py -> tests/helpers/foo.py)
HELPERS = {
    "conftest": "tests.helpers.common",  # REPO, free_port, run_handshake, cli_env
    "pipeline_helpers": "tests.helpers.pipeline",
    "model_helpers": "tests.helpers.model",
    "nitro_pki": "tests.helpers.nitro_pki",
    "mitm": "tests.helpers.mitm",
    "independent_peer": "tests.helpers.independent_peer",
    "executors": "tests.helpers.executors",
}
NOT_HELPERS = {"conftest.py", "__init__.py"}


def place(name: str) -> str:
    for directory, pattern in RULES:
        if re.fullmatch(pattern, name):
            return directory
    raise SystemExit(f"relocate_tests: no rule places {name}")


def fix_imports(text: str, helpers: dict[str, str]) -> str:
    """Imports of the old flat helper modules -> the tests.helpers package."""
    for old, new in helpers.items():
        package, _, module = new.rpartition(".")
        # from old import a, b   ->   from tests.helpers.new import a, b
        text = re.sub(rf"^(\s*)from {old} import ", rf"\1from {new} import ", text, flags=re.M)
        # import old as x        ->   from tests.helpers import new as x
        text = re.sub(
            rf"^(\s*)import {old} as (\w+)", rf"\1from {package} import {module} as \2", text, flags=re.M
        )
        # import old             ->   from tests.helpers import new as old
        alias = "" if module == old else f" as {old}"
        text = re.sub(
            rf"^(\s*)import {old}\b(?! as)", rf"\1from {package} import {module}{alias}", text, flags=re.M
        )
    return text


def fix_depth(text: str) -> str:
    """``Path(__file__)`` arithmetic for a file that moved one directory down."""
    text = re.sub(
        r"Path\(__file__\)(\.resolve\(\))?\.parents\[(\d+)\]",
        lambda m: f"Path(__file__){m.group(1) or ''}.parents[{int(m.group(2)) + 1}]",
        text,
    )
    text = re.sub(
        r"Path\(__file__\)(\.resolve\(\))?\.parent\b(?!s)",
        lambda m: f"Path(__file__){m.group(1) or ''}.parents[1]",
        text,
    )
    return text


def ensure_package(directory: Path, dry: bool) -> None:
    """``directory/__init__.py`` (empty), so test modules get unique dotted names."""
    init = directory / "__init__.py"
    if not init.exists() and not dry:
        directory.mkdir(parents=True, exist_ok=True)
        init.write_text("")
        subprocess.run(["git", "add", str(init)], cwd=REPO, check=True)


def git_mv(src: Path, dst: Path, dry: bool) -> None:
    print(f"git mv {src.relative_to(REPO)} {dst.relative_to(REPO)}")
    if not dry:
        ensure_package(dst.parent, dry)
        subprocess.run(["git", "mv", str(src), str(dst)], cwd=REPO, check=True)


def rewrite(path: Path, moved: bool, helpers: dict[str, str], dry: bool) -> None:
    text = path.read_text()
    new = fix_imports(text, helpers)
    if moved:
        new = fix_depth(new)
    if new != text:
        print(f"fix imports{' and paths' if moved else ''}: {path.relative_to(REPO)}")
        if not dry:
            path.write_text(new)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("files", nargs="*", type=Path)
    args = ap.parse_args(argv)
    files = [f.resolve() for f in args.files] or sorted(TESTS.glob("test_*.py"))
    helpers = dict(HELPERS)
    moves = []
    for src in sorted(TESTS.glob("*.py")):
        if src.name in NOT_HELPERS or src.name.startswith("test_"):
            continue
        target = helpers.setdefault(src.stem, f"tests.helpers.{src.stem}")
        moves.append((src, REPO / (target.replace(".", "/") + ".py")))
    for src in files:
        if src.parent == TESTS:  # files in a subdirectory are placed already
            moves.append((src, TESTS / place(src.name) / src.name))
    ensure_package(TESTS, args.dry_run)
    moved = set()
    for src, dst in moves:
        git_mv(src, dst, args.dry_run)
        moved.add(src if args.dry_run else dst)
    # every test and helper module (moved or not) imports helpers the new way
    for path in sorted(TESTS.rglob("*.py")):
        rewrite(path, path in moved, helpers, args.dry_run)
    fix_references(moves, args.dry_run)
    return 0


def fix_references(moves, dry: bool) -> None:
    """Mentions of a moved file's old path (docs, docstrings, scripts) -> its new path."""
    renames = {f"tests/{src.relative_to(TESTS)}": f"tests/{dst.relative_to(TESTS)}" for src, dst in moves}
    if not renames:
        return
    pattern = re.compile("|".join(re.escape(old) + r"(?![\w/])" for old in renames))
    listed = subprocess.run(
        ["git", "ls-files", "*.md", "*.py", "*.sh", "*.toml", "*.cfg", "Makefile", ".ci/*"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in listed:
        path = REPO / name
        if not path.is_file() or path.resolve() == Path(__file__).resolve():
            continue
        text = path.read_text()
        new = pattern.sub(lambda m: renames[m.group(0)], text)
        if new != text:
            print(f"fix references: {name}")
            if not dry:
                path.write_text(new)


if __name__ == "__main__":
    sys.exit(main())
