"""JSON from untrusted peers and files: duplicate keys and deep nesting are errors.

``json.loads`` keeps the last of two equal keys (serde rejects them) and lets
a deeply nested document raise RecursionError.  ``loads`` turns both into
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


def loads(text):
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicates)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
