"""KV-cache slots: one per sequence, for continuous batching (docs/batching.md).

Family-neutral: a shard wrapper (Gpt2Shard, LlamaShard) mixes in ``SlotShard``
and its Cython engine provides ``slot_bytes``, ``configure_slots(n)``,
``slot_len(slot)``, ``clear_slot(slot)`` and ``forward_slots(x, slots)``.
Slots are whole rows of ``max_positions`` (virtual memory, backed only where
written): a stage holds a handful of sequences, so paged blocks would buy
little and cost a block table in every attention kernel.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from cmlp.errors import InvalidModelInput, PositionOverflow


class SlotTable:
    """Sequence ids -> KV-cache slots of one shard.

    Opening a slot for an id that has one, or running out of slots, is an error; freeing
    zeroes the slot's cache at once.  Used under the shard's lock by its owner only.
    """

    def __init__(self, engine: Any, n_slots: int):
        self.engine = engine
        self.n_slots = n_slots
        self.free = list(range(n_slots - 1, -1, -1))  # pop() gives slot 0 first
        self.by_seq: dict[int, int] = {}

    def open(self, seq: int) -> int:
        if seq in self.by_seq:
            raise InvalidModelInput(f"sequence {seq} already has a slot")
        if not self.free:
            raise InvalidModelInput(f"all {self.n_slots} KV-cache slots are in use")
        slot = self.free.pop()
        self.by_seq[seq] = slot
        return slot

    def close(self, seq: int) -> None:
        slot = self.by_seq.pop(seq, None)
        if slot is not None:
            self.engine.clear_slot(slot)
            self.free.append(slot)

    def close_all(self) -> None:
        for seq in list(self.by_seq):
            self.close(seq)

    def __contains__(self, seq: int) -> bool:
        return seq in self.by_seq

    def __len__(self) -> int:
        return len(self.by_seq)


def slot_count(slot_bytes: int, slots: int, kv_budget_bytes: int | None = None) -> int:
    """Slots that fit: ``slots``, or fewer when ``kv_budget_bytes`` (reserved KV bytes)
    cannot hold that many slots of ``slot_bytes``."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    if kv_budget_bytes is not None:
        fit = kv_budget_bytes // slot_bytes
        if fit < 1:
            raise ValueError(f"a KV budget of {kv_budget_bytes} bytes holds no slot of {slot_bytes} bytes")
        slots = min(slots, fit)
    return slots


def check_batch(shard: Any, x: np.ndarray, max_positions: int, slots: bool) -> None:
    """The size checks every shard wrapper makes after its dtype and shape checks: a
    non-empty batch within ``max_batch`` / ``max_tokens``, and (lockstep forwards; slotted
    ones are checked per slot by the engine) the cached batch and positions."""
    B, T = x.shape[0], x.shape[1]
    if B < 1 or T < 1:
        raise InvalidModelInput(f"empty input: shape {list(x.shape)}")
    if B > shard.max_batch:
        raise InvalidModelInput(f"batch size {B} exceeds the maximum of {shard.max_batch}")
    if B * T > shard.max_tokens:
        raise InvalidModelInput(f"{B * T} tokens in one forward exceed the maximum of {shard.max_tokens}")
    if slots:
        return  # positions are per slot: the engine checks them
    past = shard._engine.past_len
    if past > 0 and B != shard._engine.cache_batch:
        raise InvalidModelInput(
            f"batch size {B} does not match the {shard._engine.cache_batch} cached "
            "sequences; clear the cache to start a new batch"
        )
    if past + T > max_positions:
        raise PositionOverflow(past, T, max_positions)


class SlotShard:
    """The slot API of a shard wrapper; the class provides ``_engine``, ``_lock`` and
    ``_check_input(x, slots=True)`` (dtype, rank, width and size checks)."""

    _engine: Any
    _lock: threading.Lock
    slots: SlotTable | None = None

    def _check_input(self, x: np.ndarray, slots: bool = False) -> None:
        raise NotImplementedError

    def configure_slots(self, slots: int, kv_budget_bytes: int | None = None) -> SlotTable:
        """Reserve per-sequence KV-cache slots; returns the (empty) table."""
        n = slot_count(self._engine.slot_bytes, slots, kv_budget_bytes)
        with self._lock:
            self._engine.configure_slots(n)
            table = self.slots = SlotTable(self._engine, n)
        return table

    def slot_len(self, seq: int) -> int:
        table = self.slots
        if table is None:
            raise InvalidModelInput("no KV-cache slots configured")
        return int(self._engine.slot_len(table.by_seq[seq]))

    def forward_slots(self, x, seqs, lens=None) -> np.ndarray:
        """Rows of x continue sequences ``seqs`` (each with an open slot), each at its own
        position: [B, T] ids / [B, T, C] hidden (B sequences of T new positions), or with
        ``lens`` [1, M(, C)] holding sequence b's lens[b] positions back to back
        (cmlp.slot_rows: decode rows and short prompts together; a long prefill alone).
        Returns a view (logits [B, V] or hidden shaped as x) valid until the next forward."""
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        with self._lock:
            table = self.slots
            if table is None:
                raise InvalidModelInput("no KV-cache slots configured")
            missing = [s for s in seqs if s not in table]
            if missing:
                raise InvalidModelInput(f"sequence {missing[0]} has no slot")
            self._check_input(x, slots=True)
            return self._engine.forward_slots(x, [table.by_seq[s] for s in seqs], lens)
