"""The row layout of one slotted forward, checked once for every engine (cmlp._gpt2,
cmlp._llama): which sequences it continues and how many new positions each brings.

A forward either has B sequences of T new positions each (``x`` [B, T(, C)]), or, with
``lens``, len(lens) sequences of lens[b] positions stored back to back (``x``
[1, sum(lens)(, C)]): decode rows and short prompts in one forward, so the weights are
read once for all of them (docs/batching.md, "Mixed forwards").

A sequence of more than ``mix_rows`` new positions runs alone: the engines compute rows
of such a long prefill with a blocked GEMM whose result depends on the other rows, while
everything up to ``mix_rows`` goes through kernels that compute each row as if alone.
Nothing here imports the package's heavier modules (the engines import it).
"""

from __future__ import annotations

from collections.abc import Callable

from cmlp.errors import InvalidModelInput


def plan_rows(
    shape: tuple, slots, lens, n_slots: int, mix_rows: int, slot_len: Callable[[int], int], max_positions: int
) -> list[int]:
    """New positions of each sequence of a forward of input ``shape`` (its first two
    dimensions) continuing ``slots`` (each in range, once, with room for its new positions:
    ``slot_len(slot)`` are cached, at most ``max_positions`` in all), or InvalidModelInput."""
    if len(shape) < 2 or shape[0] < 1 or shape[1] < 1:
        raise InvalidModelInput(f"invalid slot forward of shape {list(shape)}")
    if lens is None:
        seg = [int(shape[1])] * int(shape[0])
    else:
        if shape[0] != 1:
            raise InvalidModelInput(f"sequences of given lengths come as one row [1, M], got {list(shape)}")
        seg = [int(n) for n in lens]
        if any(n < 1 for n in seg):
            raise InvalidModelInput(f"every sequence brings at least one position, got {seg}")
        if sum(seg) != shape[1]:
            raise InvalidModelInput(f"lengths {seg} do not add up to the {shape[1]} rows given")
    if not 1 <= len(seg) <= n_slots:
        raise InvalidModelInput(f"{len(seg)} sequences in one forward with {n_slots} slots")
    if len(slots) != len(seg):
        raise InvalidModelInput(f"{len(slots)} slots for {len(seg)} sequences")
    seen: set[int] = set()
    for s, n_new in zip(slots, seg, strict=True):
        if not 0 <= s < n_slots:
            raise InvalidModelInput(f"slot {s} out of range [0, {n_slots})")
        if s in seen:
            raise InvalidModelInput(f"slot {s} appears twice in one forward")
        seen.add(s)
        cached = slot_len(s)
        if cached + n_new > max_positions:
            raise InvalidModelInput(
                f"slot {s}: {cached} cached + {n_new} new positions exceed {max_positions}"
            )
    if len(seg) > 1 and max(seg) > mix_rows:
        raise InvalidModelInput(f"a prefill of more than {mix_rows} positions runs alone, got lengths {seg}")
    return seg
