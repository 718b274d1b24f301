"""``LlamaShard``: one contiguous layer range of a llama/qwen2 model with its KV cache.

Same API as ``Gpt2Shard`` (the ShardEngine interface of cmlp.model.base)::

    shard = LlamaShard.load(model_dir, layer_start, layer_end, threads=None, max_seq_len=None)
    out = shard.forward(x)   # ids [B, T] first; hidden [B, T, C] float32 or bf16 bits after
    shard.clear_cache(); shard.weight_hashes()

The KV cache holds ``max_positions`` = min(max_position_embeddings,
max_seq_len or DEFAULT_MAX_POSITIONS) positions: Llama 3 announces 131072,
and a stage never needs more than the manifest's max_seq_len.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from cmlp import _llama
from cmlp.errors import InvalidModelInput
from cmlp.model.llama.config import LlamaConfig, load_config
from cmlp.model.llama.weights import LlamaWeights, load_shard_weights
from cmlp.model.slots import SlotShard, check_batch

MAX_THREADS = _llama.MAX_POOL_THREADS
DEFAULT_MAX_POSITIONS = 8192


class LlamaShard(SlotShard):
    max_batch = 64
    max_tokens = 8192

    def __init__(
        self,
        config: LlamaConfig,
        weights: LlamaWeights,
        layer_start: int,
        layer_end: int,
        threads: int | None = None,
        max_seq_len: int | None = None,
    ):
        self._config = config
        self._weights = weights
        self._layer_start = layer_start
        self._layer_end = layer_end
        self._lock = threading.Lock()
        limit = max_seq_len or DEFAULT_MAX_POSITIONS
        self._max_positions = min(config.max_position_embeddings, limit)
        t = weights.tensors
        embed = weights.matrix("model.embed_tokens.weight")
        lm_head = None
        if self.is_last:
            lm_head = embed if config.tie_word_embeddings else weights.matrix("lm_head.weight")
        self._wire = "BF16" if any(a.dtype == np.uint16 for a in t.values() if a.ndim == 2) else "F32"
        norm = t.get("model.norm.weight")
        self._engine = _llama.LlamaEngine(
            hidden=config.hidden_size,
            n_head=config.num_attention_heads,
            n_kv_head=config.num_key_value_heads,
            head_dim=config.head_dim,
            intermediate=config.intermediate_size,
            n_vocab=config.vocab_size,
            max_positions=self._max_positions,
            eps=config.rms_norm_eps,
            inv_freq=config.inv_freq(),
            rope_attention_scaling=1.0,
            is_first=self.is_first,
            is_last=self.is_last,
            layers=[weights.layer(i) for i in range(layer_start, layer_end)],
            embed=embed if self.is_first else None,
            lm_head=lm_head,
            final_norm=None if norm is None else _widen(norm),
            threads=_check_threads(threads),
        )

    @classmethod
    def load(
        cls,
        model_dir,
        layer_start: int,
        layer_end: int,
        threads: int | None = None,
        max_seq_len: int | None = None,
        family: str = "llama",
    ) -> LlamaShard:
        config = load_config(model_dir, family)
        weights = load_shard_weights(model_dir, config, layer_start, layer_end)
        return cls(config, weights, layer_start, layer_end, threads, max_seq_len)

    # ShardEngine interface (cmlp.model.base)
    config = property(lambda self: self._config)
    layer_start = property(lambda self: self._layer_start)
    layer_end = property(lambda self: self._layer_end)
    is_first = property(lambda self: self._layer_start == 0)
    is_last = property(lambda self: self._layer_end == self._config.num_hidden_layers)
    hidden_size = property(lambda self: self._config.hidden_size)
    vocab_size = property(lambda self: self._config.vocab_size)
    n_layer = property(lambda self: self._config.num_hidden_layers)
    max_positions = property(lambda self: self._max_positions)
    wire_dtype = property(lambda self: self._wire)
    past_len = property(lambda self: self._engine.past_len)
    threads = property(lambda self: self._engine.threads)
    weight_bytes = property(lambda self: self._weights.stored_bytes)

    def set_threads(self, n: int | None) -> None:
        with self._lock:
            self._engine.set_threads(_check_threads(n))

    def weight_hashes(self) -> list[tuple[str, str]]:
        return self._weights.hashes()

    def clear_cache(self) -> None:
        with self._lock:
            self._engine.clear_cache()

    def forward(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        with self._lock:
            self._check_input(x)
            if self.is_first:
                return self._engine.forward_ids(x)
            return self._engine.forward_hidden(x)

    def _check_input(self, x: np.ndarray, slots: bool = False) -> None:
        C = self._config.hidden_size
        if self.is_first:
            if x.dtype.kind not in "ui":
                raise InvalidModelInput(f"token ids must be an integer array, got dtype {x.dtype}")
            if x.ndim != 2:
                raise InvalidModelInput(f"token ids must be [B, T], got shape {list(x.shape)}")
        else:
            if x.dtype not in (np.float32, np.uint16):
                raise InvalidModelInput(
                    f"hidden states must be float32 or bfloat16 bits, got dtype {x.dtype}"
                )
            if x.ndim != 3 or x.shape[2] != C:
                raise InvalidModelInput(f"hidden states must be [B, T, {C}], got shape {list(x.shape)}")
        check_batch(self, x, self._max_positions, slots)


def _widen(arr: np.ndarray) -> np.ndarray:
    from cmlp.model.safetensors_io import widen

    return widen(arr)


def _check_threads(threads) -> int:
    if threads is None:
        return min(os.cpu_count() or 1, MAX_THREADS)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an integer in [1, {MAX_THREADS}], got {threads!r}")
    return threads
