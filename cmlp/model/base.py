"""The engine interface every family's shard implements (what executors call).

    shard = family.load_shard(model_dir, layer_start, layer_end, threads=..., max_seq_len=...)
    out = shard.forward(x)   # first shard: ids [B, T]; others: hidden [B, T, hidden_size]
                             # last shard: logits [B, vocab] (last position), else hidden
    shard.clear_cache(); shard.past_len; shard.weight_hashes()
    shard.configure_slots(n); shard.forward_slots(x, seqs)   # continuous batching (slots.py)

Each family package also answers, without building an engine, what a manifest
needs: ``model_facts(model_dir)`` and ``shard_hashes(model_dir, start, end)``.

Outputs are float32 views of internal buffers, valid until the next call.
Hidden inputs may be float32 or (``wire_dtype`` "BF16") bfloat16 bits as uint16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ModelFacts:
    """What `cmlp manifest generate` writes about a model directory."""

    n_layer: int
    hidden_size: int
    max_positions: int  # the activation spec's max_seq_len
    wire_dtype: str  # "F32" or "BF16": the activation dtype between stages


class ShardEngine(Protocol):
    layer_start: int
    layer_end: int
    is_first: bool
    is_last: bool
    hidden_size: int  # width of the hidden states between stages
    vocab_size: int
    n_layer: int
    max_positions: int  # KV cache capacity in positions
    wire_dtype: str  # "F32" or "BF16": the activation dtype this model prefers
    past_len: int
    weight_bytes: int
    threads: int

    def forward(self, x: np.ndarray) -> np.ndarray: ...

    def clear_cache(self) -> None: ...

    def weight_hashes(self) -> list[tuple[str, str]]: ...
