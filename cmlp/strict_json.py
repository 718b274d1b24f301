"""JSON from untrusted peers and files: duplicate keys, deep nesting, NaN and lone
surrogates are errors.

``json.loads`` keeps the last of two equal keys (serde rejects them), lets a
deeply nested document raise RecursionError, accepts ``NaN`` / ``Infinity``
(not JSON, RFC 8259) and decodes a lone ``\ud800`` escape to a string that
cannot be encoded again (serde rejects both).  ``loads`` turns all of them into
``ValueError``, like any other malformed JSON, so callers catch one type.
"""

from __future__ import annotations

import json


def _reject_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _check_strings(value) -> None:
    """Every string (keys too) must be valid Unicode: no lone surrogate from a \\u escape."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string holds a lone surrogate") from None
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def loads(text, check_strings: bool = True):
    """``check_strings=False``: the caller checks each string field itself (the OpenAI proxy,
    whose errors name the field)."""
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if check_strings:
        _check_strings(doc)
    return doc
