"""A strict, bounded DER TLV reader for the few vendor extensions the
verifiers read (Intel SGX PCK extensions).  Definite lengths only, at most
4 length bytes, minimal length encoding, no trailing bytes inside a parent.
Raises ValueError; callers map it to a coded VerificationFailed.
"""

from __future__ import annotations

from typing import List, Tuple

TAG_INTEGER, TAG_OCTET_STRING, TAG_OID, TAG_ENUMERATED, TAG_SEQUENCE = 0x02, 0x04, 0x06, 0x0A, 0x30
MAX_ITEMS = 256


def read_tlv(data: bytes, pos: int) -> Tuple[int, bytes, int]:
    """-> (tag, value, next position)."""
    if pos + 2 > len(data):
        raise ValueError("DER: truncated header")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("DER: multi-byte tags are not supported")
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ValueError("DER: bad length")
        length = int.from_bytes(data[pos : pos + n], "big")
        if length < 0x80 or data[pos] == 0:
            raise ValueError("DER: non-minimal length")
        pos += n
    if length > len(data) - pos:
        raise ValueError("DER: value runs past the end")
    return tag, data[pos : pos + length], pos + length


def children(value: bytes) -> List[Tuple[int, bytes]]:
    out: List[Tuple[int, bytes]] = []
    pos = 0
    while pos < len(value):
        if len(out) >= MAX_ITEMS:
            raise ValueError("DER: too many items")
        tag, val, pos = read_tlv(value, pos)
        out.append((tag, val))
    return out


def expect(data: bytes, tag: int) -> bytes:
    t, val, end = read_tlv(data, 0)
    if t != tag or end != len(data):
        raise ValueError(f"DER: expected tag {tag:#x} spanning the input")
    return val


def decode_oid(value: bytes) -> str:
    if not value or value[-1] & 0x80:
        raise ValueError("DER: bad OID")
    parts, acc = [], 0
    for b in value:
        acc = (acc << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(acc)
            acc = 0
    first = parts[0]
    head = [0, first] if first < 40 else ([1, first - 40] if first < 80 else [2, first - 80])
    return ".".join(str(p) for p in head + parts[1:])


def decode_uint(value: bytes) -> int:
    if not value or value[0] & 0x80 or (len(value) > 1 and value[0] == 0 and not value[1] & 0x80):
        raise ValueError("DER: bad non-negative INTEGER")
    if len(value) > 9:
        raise ValueError("DER: INTEGER too large")
    return int.from_bytes(value, "big")
