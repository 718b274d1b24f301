"""Whether an existing model directory already is the synthetic model asked for.

``cmlp model init`` is idempotent: the same preset and seed in a directory
that already holds them is reused (a message says so), anything else is
refused unless ``--force``.  The check reads only config.json and the
safetensors header (names, dtypes, shapes, file size), never the 500 MB of
data, so a re-run is instant.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Optional

from cmlp.errors import ModelError
from cmlp.model.gpt2.config import CONFIG_FILE, SYNTHETIC_KEY, TOKENIZER_FILE, WEIGHTS_FILE


def describe(config: dict) -> str:
    """A short name for what a config.json describes."""
    if config.get(SYNTHETIC_KEY):
        return (
            f"the synthetic {config.get('cmlp_preset', '?')!r} model with seed {config.get('cmlp_seed', '?')}"
        )
    return "a model that `cmlp model init` did not write (real or downloaded weights?)"


def _read_config(out: Path) -> Optional[dict]:
    try:
        raw = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def _header_shapes(path: Path) -> Optional[dict]:
    """name -> (dtype, shape, end offset) from a safetensors header, or None if unreadable."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 << 20:
                return None
            header = json.loads(f.read(n))
            size = path.stat().st_size
    except (OSError, ValueError, struct.error):
        return None
    if not isinstance(header, dict):
        return None
    header.pop("__metadata__", None)
    try:
        end = max(int(v["data_offsets"][1]) for v in header.values())
        if 8 + n + end != size:
            return None  # truncated or padded: not the file we wrote
        return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items()}
    except (KeyError, TypeError, ValueError):
        return None


def check_existing(out, preset: str, seed: int, expected_shapes: dict) -> bool:
    """True when ``out`` already holds exactly this synthetic model (reuse it).

    False when there is no model there yet.  ModelError (naming what is there
    and how to proceed) when it holds something else or a damaged copy.
    ``expected_shapes`` maps every tensor name to its shape.
    """
    out = Path(out)
    weights = out / WEIGHTS_FILE
    if not weights.exists():
        return False
    config = _read_config(out)
    if config is None:
        raise ModelError(
            f"{weights} already exists but {out / CONFIG_FILE} is missing or "
            "unreadable: pass --force to rewrite the model, or choose another --out"
        )
    wanted = f"the synthetic {preset!r} model with seed {seed}"
    if not (
        config.get(SYNTHETIC_KEY) and config.get("cmlp_preset") == preset and config.get("cmlp_seed") == seed
    ):
        raise ModelError(
            f"{weights} already exists and holds {describe(config)}, not {wanted}: "
            "pass --force to overwrite it, or choose another --out"
        )
    shapes = _header_shapes(weights)
    want = {name: ("F32", tuple(shape)) for name, shape in expected_shapes.items()}
    if shapes != want or not (out / TOKENIZER_FILE).is_file():
        raise ModelError(
            f"{out} holds {wanted} but its files are incomplete or damaged: pass --force to rewrite them"
        )
    return True
