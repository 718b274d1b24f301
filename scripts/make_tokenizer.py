#!/usr/bin/env python3
"""Derive GPT-2's Hugging Face ``tokenizer.json`` from its tiktoken merge ranks.

Input: a ``.tiktoken`` ranks file, one ``base64(token_bytes) rank`` per line
(GPT-2's has ranks 0..50255; ``<|endoftext|>`` = 50256 is not in it).
Output: a byte-level BPE ``tokenizer.json`` in the layout Hugging Face uses
for openai-community/gpt2, so cmlp can tokenize offline.

How the file is derived:
  * vocab: every token's bytes, spelled with GPT-2's byte -> unicode table
    (printable Latin-1 bytes stand for themselves, the others are shifted to
    U+0100..), mapped to its rank, which is its id.
  * merges: for each multi-byte token in rank order, run BPE on its bytes
    allowing only lower ranks; what remains is exactly two lower-ranked tokens,
    and merging them is the merge rule that creates this token.  Rank order of
    the tokens is therefore also the priority order of the merges.

The output is deterministic: same input, same bytes.

Usage: python scripts/make_tokenizer.py [--ranks PATH] [--output PATH]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RANKS = REPO_ROOT.parent / "shared" / "data" / "gpt2.tiktoken"
DEFAULT_OUTPUT = REPO_ROOT / "cmlp" / "data" / "tokenizer.json"

EOT_TOKEN = "<|endoftext|>"
GPT2_RANK_COUNT = 50256  # ids 0..50255 are BPE tokens; 50256 is EOT_TOKEN


class RanksError(Exception):
    """The ranks file is not a well-formed GPT-2 tiktoken file."""


def load_ranks(path: Path) -> dict[bytes, int]:
    """Read a ``.tiktoken`` file into ``{token_bytes: rank}``, checking it is GPT-2's shape."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2:
                raise RanksError(f"{path}:{lineno}: expected 'base64 rank'")
            try:
                token = base64.b64decode(fields[0], validate=True)
                rank = int(fields[1])
            except (binascii.Error, ValueError) as exc:
                raise RanksError(f"{path}:{lineno}: {exc}") from None
            if not token or token in ranks:
                raise RanksError(f"{path}:{lineno}: empty or duplicate token")
            ranks[token] = rank
    # Ids must be exactly 0..n-1, or the vocab would have holes or clashes.
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise RanksError(f"{path}: ranks are not exactly 0..{len(ranks) - 1}")
    if len(ranks) != GPT2_RANK_COUNT:
        raise RanksError(f"{path}: {len(ranks)} ranks, GPT-2 has {GPT2_RANK_COUNT}")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise RanksError(f"{path}: single-byte tokens missing for bytes {missing[:8]}")
    return ranks


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> character table used to spell byte-level tokens.

    Bytes that are printable, non-space Latin-1 characters keep their own
    character; the remaining 68 bytes get U+0100, U+0101, ... in byte order,
    so no token string contains whitespace or control characters.
    """
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in kept}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def split_with_lower_ranks(token: bytes, ranks: dict[bytes, int]) -> list[bytes]:
    """Run BPE on ``token``'s bytes using only merges ranked below ``token`` itself."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best_rank, best_at = limit, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_rank, best_at = rank, i
        if best_at < 0:
            break
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return parts


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge rule creating each multi-byte token, in rank (= priority) order."""
    merges = []
    for token in sorted(ranks, key=ranks.__getitem__):
        if len(token) == 1:
            continue
        parts = split_with_lower_ranks(token, ranks)
        if len(parts) != 2:
            raise RanksError(
                f"token of rank {ranks[token]} splits into {len(parts)} parts, not 2: "
                "the ranks are not a BPE merge order"
            )
        merges.append((parts[0], parts[1]))
    return merges


def build_tokenizer_json(ranks: dict[bytes, int]) -> dict:
    """The tokenizer.json document, keys in Hugging Face's own order."""
    table = byte_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(table[b] for b in token)

    vocab = {spell(token): rank for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
    # A byte-level spelling never contains a space, so "left right" is unambiguous.
    merges = [f"{spell(left)} {spell(right)}" for left, right in derive_merges(ranks)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": len(ranks),
                "special": True,
                "content": EOT_TOKEN,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        # As in openai-community/gpt2; neither setting changes ids or decoded text.
        "post_processor": {**byte_level, "add_prefix_space": True, "trim_offsets": False},
        "decoder": {**byte_level, "add_prefix_space": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def render(document: dict) -> bytes:
    """Compact UTF-8 JSON with a fixed key order, as Hugging Face writes it."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def make_tokenizer_json(ranks_path: Path) -> bytes:
    return render(build_tokenizer_json(load_ranks(ranks_path)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ranks", type=Path, default=DEFAULT_RANKS, help=f"tiktoken ranks file (default: {DEFAULT_RANKS})"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"tokenizer.json to write (default: {DEFAULT_OUTPUT})",
    )
    args = parser.parse_args(argv)
    try:
        data = make_tokenizer_json(args.ranks)
    except (OSError, RanksError) as exc:
        print(f"make_tokenizer: {exc}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    print(f"wrote {args.output} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
