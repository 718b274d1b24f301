"""Strict, bounded CBOR (RFC 8949 subset): the one CBOR implementation in cmlp.

The reader rejects duplicate map keys, trailing bytes, every CBOR tag except
an explicitly allowed top-level one, reserved encodings, invalid UTF-8, more
than ``max_depth`` nested containers and more than ``max_items`` items.
Byte strings are returned as the exact received bytes (nothing is re-encoded,
so a signature always covers what arrived).

The encoder (:func:`encode_cbor`) writes the small deterministic subset the
NSM request and the COSE Sig_structure need: unsigned/negative integers,
byte and text strings, null, booleans, arrays and text/int-keyed maps.
"""

from __future__ import annotations

import struct
from typing import Optional

MAX_CBOR_DEPTH = 16  # real documents nest 3 deep
MAX_CBOR_ITEMS = 4096  # real documents hold < 100 items


class CborError(ValueError):
    """Malformed or out-of-profile CBOR.  Callers turn it into a typed AttestError."""


class _Undefined:
    """CBOR ``undefined`` (simple value 23), kept distinct from null."""

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED = _Undefined()
_BREAK = object()


class _Reader:
    __slots__ = ("data", "pos", "items", "max_depth", "max_items")

    def __init__(self, data: bytes, max_depth: int, max_items: int):
        self.data = data
        self.pos = 0
        self.items = 0
        self.max_depth = max_depth
        self.max_items = max_items

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise CborError(
                f"truncated: needs {n} bytes at offset {self.pos}, {len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def head(self):
        """One initial byte plus argument: ``(major, argument or None if indefinite)``."""
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info
        if info <= 27:
            return major, info, int.from_bytes(self.take(1 << (info - 24)), "big")
        if info == 31:
            return major, info, None
        raise CborError(f"reserved additional information {info} at offset {self.pos - 1}")

    def count_item(self) -> None:
        self.items += 1
        if self.items > self.max_items:
            raise CborError(f"more than {self.max_items} CBOR items")

    def item(self, depth: int, allow_break: bool = False):
        self.count_item()
        major, info, arg = self.head()
        if major == 0:
            if arg is None:
                raise CborError("indefinite-length integer")
            return arg
        if major == 1:
            if arg is None:
                raise CborError("indefinite-length integer")
            return -1 - arg
        if major in (2, 3):
            return self.string(major, arg)
        if major in (4, 5):
            if depth >= self.max_depth:
                raise CborError(f"nesting deeper than {self.max_depth}")
            return self.array(arg, depth + 1) if major == 4 else self.map(arg, depth + 1)
        if major == 6:
            raise CborError(f"CBOR tag {arg} not allowed here")
        return self.simple(info, arg, allow_break)

    def string(self, major: int, length: Optional[int]):
        if length is not None:
            raw = self.take(length)
        else:  # indefinite: definite chunks of the same major type, then break
            chunks = []
            while True:
                self.count_item()
                c_major, c_info, c_len = self.head()
                if c_major == 7 and c_info == 31:
                    break
                if c_major != major or c_len is None:
                    raise CborError("bad chunk in indefinite-length string")
                chunks.append(self.take(c_len))
            raw = b"".join(chunks)
        if major == 2:
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CborError("text string is not valid UTF-8") from None

    def array(self, length: Optional[int], depth: int) -> list:
        out: list = []
        if length is None:
            while True:
                value = self.item(depth, allow_break=True)
                if value is _BREAK:
                    return out
                out.append(value)
        if length > len(self.data) - self.pos:  # each item takes >= 1 byte
            raise CborError(f"array of {length} items exceeds the input")
        for _ in range(length):
            out.append(self.item(depth))
        return out

    def map(self, length: Optional[int], depth: int) -> dict:
        out: dict = {}
        if length is not None and 2 * length > len(self.data) - self.pos:
            raise CborError(f"map of {length} entries exceeds the input")
        n = 0
        while length is None or n < length:
            key = self.item(depth, allow_break=length is None)
            if key is _BREAK:
                break
            # Only int/text/bytes keys: no float/bool aliasing (1 == 1.0 == True).
            if type(key) not in (int, str, bytes):
                raise CborError(f"unsupported map key type {type(key).__name__}")
            if key in out:
                raise CborError(f"duplicate map key {key!r}")
            out[key] = self.item(depth)
            n += 1
        return out

    def simple(self, info: int, arg, allow_break: bool):
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 23:
            return UNDEFINED
        if info == 25:
            return struct.unpack(">e", arg.to_bytes(2, "big"))[0]
        if info == 26:
            return struct.unpack(">f", arg.to_bytes(4, "big"))[0]
        if info == 27:
            return struct.unpack(">d", arg.to_bytes(8, "big"))[0]
        if info == 31:
            if allow_break:
                return _BREAK
            raise CborError("unexpected break")
        raise CborError(f"unsupported simple value {arg}")


def decode_cbor(
    data: bytes,
    *,
    allow_tag: Optional[int] = None,
    max_depth: int = MAX_CBOR_DEPTH,
    max_items: int = MAX_CBOR_ITEMS,
):
    """Decode exactly one CBOR item spanning all of ``data``.

    ``allow_tag`` permits that one tag number on the top-level item only.
    Maps become dicts, arrays lists, byte strings ``bytes`` (exact input
    bytes), text ``str``, null ``None``, undefined :data:`UNDEFINED`.
    Raises :class:`CborError`.
    """
    data = bytes(data)
    reader = _Reader(data, max_depth, max_items)
    if allow_tag is not None and data and data[0] >> 5 == 6:
        _, _, tag = reader.head()
        if tag != allow_tag:
            raise CborError(f"CBOR tag {tag} not allowed here")
    value = reader.item(0)
    if reader.pos != len(data):
        raise CborError(f"{len(data) - reader.pos} trailing bytes")
    return value


def cbor_head(major: int, n: int) -> bytes:
    """Initial byte(s) of a definite-length item, shortest form."""
    if n < 24:
        return bytes([(major << 5) | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([(major << 5) | info]) + n.to_bytes(size, "big")
    raise ValueError("CBOR argument too large")


def encode_cbor(value) -> bytes:
    """Deterministic encoding of None/bool/int/bytes/str/list/dict (map keys in given order)."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _encode(value, out: bytearray, depth: int) -> None:
    if depth > MAX_CBOR_DEPTH:
        raise ValueError("value nests too deeply for CBOR encoding")
    if value is None:
        out += b"\xf6"
    elif value is True:
        out += b"\xf5"
    elif value is False:
        out += b"\xf4"
    elif type(value) is int:
        out += cbor_head(0, value) if value >= 0 else cbor_head(1, -1 - value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
        out += cbor_head(2, len(value)) + value
    elif type(value) is str:
        raw = value.encode("utf-8")
        out += cbor_head(3, len(raw)) + raw
    elif type(value) in (list, tuple):
        out += cbor_head(4, len(value))
        for item in value:
            _encode(item, out, depth + 1)
    elif type(value) is dict:
        out += cbor_head(5, len(value))
        for key, item in value.items():
            if type(key) not in (int, str):
                raise ValueError(f"unsupported CBOR map key type {type(key).__name__}")
            _encode(key, out, depth + 1)
            _encode(item, out, depth + 1)
    else:
        raise ValueError(f"cannot CBOR-encode {type(value).__name__}")
