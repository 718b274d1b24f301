#!/usr/bin/env python3
"""Regenerate tests/golden/gpt2_*.{npz,json} with Hugging Face transformers.

    python scripts/make_golden.py            # all parity models
    python scripts/make_golden.py wide       # one of them

Each parity model (tests/helpers/model.py: PARITY, WIDE) is rebuilt from
its seed, run through transformers' GPT2LMHeadModel in float32, and the
inputs and outputs are saved next to a metadata file holding the SHA-256 of
the regenerated weights and the library versions.  The default test run
compares cmlp against these files without needing torch; if numpy ever draws
different random weights, the tests report the hash mismatch instead of a
numeric failure.  Needs torch + transformers; runs in well under a minute.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests package

from tests.helpers.model import GOLDEN_DIR, SPECS, golden_metadata, golden_paths, hf_reference  # noqa: E402

MAX_GOLDEN_BYTES = 2 << 20
MIN_GREEDY_MARGIN = 1e-3  # a smaller top-1/top-2 gap could flip an argmax on rounding


def make(spec) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = spec.write(Path(tmp) / spec.name)
        ref = hf_reference(model_dir, spec)
        meta = golden_metadata(spec, model_dir, ref)
    if len(set(ref["greedy_ids"].tolist())) < 5:
        raise SystemExit(f"{spec.name}: greedy ids barely vary; pick another seed or scale")
    if meta["greedy_min_margin"] < MIN_GREEDY_MARGIN:
        raise SystemExit(
            f"{spec.name}: greedy path has a near tie ({meta['greedy_min_margin']:.2e}); pick another seed"
        )
    npz_path, meta_path = golden_paths(spec)
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(npz_path, **ref)
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(
        f"{npz_path.relative_to(REPO)}: {npz_path.stat().st_size} bytes, "
        f"greedy min margin {meta['greedy_min_margin']:.3g}"
    )


def main(argv) -> int:
    names = argv or sorted(SPECS)
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        print(f"unknown model(s) {unknown}; choose from {sorted(SPECS)}", file=sys.stderr)
        return 2
    for name in names:
        make(SPECS[name])
    total = sum(p.stat().st_size for p in GOLDEN_DIR.iterdir())
    if total > MAX_GOLDEN_BYTES:
        print(f"warning: golden dir is {total} bytes (budget {MAX_GOLDEN_BYTES})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
