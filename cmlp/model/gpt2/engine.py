"""``Gpt2Shard``: one contiguous layer range of GPT-2 with its KV cache.

The pipeline's stage executor calls exactly this API (pipeline.md 5.3-5.4)::

    shard = Gpt2Shard.load(model_dir, layer_start, layer_end, threads=None)
    out = shard.forward(x)     # ids [B, T] on the first shard, hidden [B, T, C] after
    shard.clear_cache()
    shard.weight_hashes()      # [(name, sha256 hex)], sorted by name

Returned arrays are VIEWS of internal buffers: hidden [B, T, n_embd] float32,
or on the last shard logits [B, vocab] float32 of the last position.  They
stay valid only until the next ``forward()`` or ``clear_cache()``; copy them
to keep them.

Inputs usually come from the network, so everything is checked before any
state changes: dtype, ndim, shape, token id range, batch size against the
cache, and the position limit (``PositionOverflow``).  Bad input raises
``InvalidModelInput``; nothing is ever read out of bounds.

Threads: ``threads`` (default ``os.cpu_count()``) is the number of threads a
forward uses, the caller included.  Work is split by a pool in the C engine;
OpenBLAS itself is set to one thread and runs inside that pool, because
OpenBLAS's own idle workers busy-spin (sched_yield loop, ~0.1 s after every
call) and would starve another stage sharing the cores.  Our workers spin at
most 100 us between steps, then sleep.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from cmlp import _gpt2
from cmlp.errors import InvalidModelInput
from cmlp.model.gpt2.config import Gpt2Config, load_config
from cmlp.model.gpt2.weights import ShardWeights, load_shard_weights
from cmlp.model.slots import SlotShard, check_batch

MAX_THREADS = _gpt2.MAX_POOL_THREADS


class Gpt2Shard(SlotShard):
    """Blocks [layer_start, layer_end) of a GPT-2 model; see the module docstring."""

    #: largest batch accepted by forward(); bounds the buffers a peer can make us allocate
    max_batch = 64
    #: largest B*T of one forward (activation buffers grow to it, never shrink)
    max_tokens = 8192

    def __init__(
        self,
        config: Gpt2Config,
        weights: ShardWeights,
        layer_start: int,
        layer_end: int,
        threads: int | None = None,
    ):
        self._config = config
        self._weights = weights
        self._layer_start = layer_start
        self._layer_end = layer_end
        self._lock = threading.Lock()
        self._engine = _gpt2.ShardEngine(
            n_embd=config.n_embd,
            n_head=config.n_head,
            n_vocab=config.vocab_size,
            n_positions=config.n_positions,
            eps=config.layer_norm_epsilon,
            is_first=self.is_first,
            is_last=self.is_last,
            blocks=[weights.block(i) for i in range(layer_start, layer_end)],
            wte=weights.engine_tensor("wte.weight"),
            wpe=weights.engine_tensor("wpe.weight"),
            ln_f_weight=weights.engine_tensor("ln_f.weight"),
            ln_f_bias=weights.engine_tensor("ln_f.bias"),
            threads=_check_threads(threads),
        )

    @classmethod
    def load(cls, model_dir, layer_start: int, layer_end: int, threads: int | None = None) -> "Gpt2Shard":
        """Read config.json, then only this shard's tensors of model.safetensors."""
        config = load_config(model_dir)
        weights = load_shard_weights(model_dir, config, layer_start, layer_end)
        return cls(config, weights, layer_start, layer_end, threads)

    # -- properties ----------------------------------------------------------------

    @property
    def config(self) -> Gpt2Config:
        return self._config

    @property
    def layer_start(self) -> int:
        return self._layer_start

    @property
    def layer_end(self) -> int:
        return self._layer_end

    @property
    def is_first(self) -> bool:
        return self._layer_start == 0

    @property
    def is_last(self) -> bool:
        return self._layer_end == self._config.n_layer

    # ShardEngine interface (cmlp.model.base)
    hidden_size = property(lambda self: self._config.n_embd)
    vocab_size = property(lambda self: self._config.vocab_size)
    n_layer = property(lambda self: self._config.n_layer)
    max_positions = property(lambda self: self._config.n_positions)
    wire_dtype = "F32"

    @property
    def past_len(self) -> int:
        """Positions held in the KV cache (the position of the next token)."""
        return self._engine.past_len

    @property
    def threads(self) -> int:
        return self._engine.threads

    @property
    def weight_dtype(self) -> str:
        """Stored dtype of the block matrices: f32, bf16, f16, i8 (or mixed)."""
        return self._engine.weight_dtype

    @property
    def weight_bytes(self) -> int:
        """Bytes of weight tensors held (wte counted once)."""
        return self._weights.nbytes

    # -- operations ----------------------------------------------------------------

    def set_threads(self, n: int | None) -> None:
        """Threads per forward, the caller included (None: os.cpu_count())."""
        with self._lock:
            self._engine.set_threads(_check_threads(n))

    def weight_hashes(self) -> list[tuple[str, str]]:
        """(tensor name without prefix, SHA-256 hex of its F32 bytes), sorted by name."""
        return self._weights.hashes()

    def clear_cache(self) -> None:
        """Start a new sequence: past_len = 0, cached K/V wiped."""
        with self._lock:
            self._engine.clear_cache()

    def forward(self, x) -> np.ndarray:
        """Run the shard on ids [B, T] (first) or hidden [B, T, n_embd] (others).

        Returns a view of an internal buffer (see the module docstring).
        """
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        with self._lock:
            self._check_input(x)
            if self.is_first:
                return self._engine.forward_ids(x)
            return self._engine.forward_hidden(x)

    def _check_input(self, x: np.ndarray, slots: bool = False) -> None:
        cfg = self._config
        if self.is_first:
            if x.dtype.kind not in "ui":
                raise InvalidModelInput(f"token ids must be an integer array, got dtype {x.dtype}")
            if x.ndim != 2:
                raise InvalidModelInput(f"token ids must be [B, T], got shape {list(x.shape)}")
        else:
            if x.dtype.kind != "f" or x.dtype.itemsize != 4:
                raise InvalidModelInput(f"hidden states must be float32, got dtype {x.dtype}")
            if x.ndim != 3 or x.shape[2] != cfg.n_embd:
                raise InvalidModelInput(
                    f"hidden states must be [B, T, {cfg.n_embd}], got shape {list(x.shape)}"
                )
        check_batch(self, x, cfg.n_positions, slots)


def _check_threads(threads) -> int:
    if threads is None:
        return min(os.cpu_count() or 1, MAX_THREADS)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an integer in [1, {MAX_THREADS}], got {threads!r}")
    return threads
