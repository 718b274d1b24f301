"""The TDX wire document (transport.md 5.8): ``"TDX_V1"`` + six 0x00 (12 B) |
u32 LE quote_size | quote.

Inside the quote field, bytes after the parsed quote may only be zero
padding (configfs and some QGS versions return zero-padded buffers); bytes
after the quote field are rejected.  The reference ignores both.
"""

from __future__ import annotations

import struct

from cmlp.attestation.coded import fail
from cmlp.attestation.snp.document import read_lv

MARKER = b"TDX_V1" + bytes(6)
MAX_DOCUMENT_SIZE = 65536


def encode_document(quote: bytes) -> bytes:
    quote = bytes(quote)
    return MARKER + struct.pack("<I", len(quote)) + quote


def decode_document(raw: bytes) -> bytes:
    raw = bytes(raw)
    if len(raw) > MAX_DOCUMENT_SIZE:
        raise fail("TDX_DOCUMENT_TOO_LARGE", f"TDX document is {len(raw)} bytes (max {MAX_DOCUMENT_SIZE})")
    if raw[: len(MARKER)] != MARKER:
        raise fail("TDX_NOT_TDX_DOCUMENT", "not a TDX attestation document")
    quote, pos = read_lv(raw, len(MARKER), "quote", "TDX")
    if pos != len(raw):
        raise fail("TDX_DOCUMENT_TRAILING_DATA", f"{len(raw) - pos} bytes after the quote")
    return quote
