"""Engine slots (docs/batching.md): batched decode rows are bit-identical to solo runs."""

from __future__ import annotations

import numpy as np
import pytest

from cmlp.errors import InvalidModelInput
from cmlp.model import Gpt2Shard
from tests.helpers.model import PARITY

V = PARITY.config.vocab_size
NL = PARITY.config.n_layer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return PARITY.write(tmp_path_factory.mktemp("parity"))


def greedy(row):
    return int(len(row) - 1 - np.argmax(row[::-1]))


def prompts(n=9):
    rng = np.random.default_rng(0)
    return [rng.integers(0, V, (1, int(rng.integers(1, 20)))).astype(np.uint32) for _ in range(n)]


@pytest.mark.parametrize("split", [None, 2])
def test_batched_decode_is_bit_identical_to_solo(model_dir, split):
    """Sequences join one by one (batch sizes 1..9, both matmul kernels), each at its own
    position; with ``split`` the rows pass a first shard and a second one (hidden states)."""
    ps = prompts()
    steps = 10
    if split is None:
        shards = [Gpt2Shard.load(model_dir, 0, NL, threads=2)]
    else:
        shards = [
            Gpt2Shard.load(model_dir, 0, split, threads=2),
            Gpt2Shard.load(model_dir, split, NL, threads=1),
        ]
    for s in shards:
        s.configure_slots(len(ps))

    def fwd(x, seqs):
        for s in shards:
            x = s.forward_slots(x, seqs)
        return x

    want = []
    for i, p in enumerate(ps):
        for s in shards:
            s.slots.open(5000 + i)
        logits = [fwd(p, [5000 + i])[0].copy()]
        for _ in range(steps):
            logits.append(fwd(np.array([[greedy(logits[-1])]], np.uint32), [5000 + i])[0].copy())
        for s in shards:
            s.slots.close(5000 + i)
        want.append(logits)
    got = {i: [] for i in range(len(ps))}

    def decode_all():
        act = [j for j in got if got[j] and len(got[j]) <= steps]
        if act:
            out = fwd(np.array([[greedy(got[j][-1])] for j in act], np.uint32), act)
            for r, j in enumerate(act):
                got[j].append(out[r].copy())

    for i, p in enumerate(ps):
        for s in shards:
            s.slots.open(i)
        got[i].append(fwd(p, [i])[0].copy())
        decode_all()
    while any(len(v) <= steps for v in got.values()):
        decode_all()
    for i in range(len(ps)):
        assert len(got[i]) == len(want[i])
        for a, b in zip(got[i], want[i], strict=True):
            assert np.array_equal(a, b), f"sequence {i} differs from its solo run"


def test_slot_inputs_are_checked(model_dir):
    s = Gpt2Shard.load(model_dir, 0, NL, threads=1)
    with pytest.raises(InvalidModelInput):
        s.forward_slots(np.zeros((1, 1), np.uint32), [0])  # no slots yet
    table = s.configure_slots(2)
    table.open(7)
    table.open(8)
    with pytest.raises(InvalidModelInput, match="all 2"):
        table.open(9)
    with pytest.raises(InvalidModelInput, match="already"):
        table.open(7)
    with pytest.raises(InvalidModelInput, match="no slot"):
        s.forward_slots(np.zeros((1, 1), np.uint32), [9])
    with pytest.raises(InvalidModelInput, match="twice"):
        s._engine.forward_slots(np.zeros((2, 1), np.uint32), [0, 0])
    with pytest.raises(InvalidModelInput, match="out of range"):
        s._engine.forward_slots(np.zeros((1, 1), np.uint32), [2])
    with pytest.raises(InvalidModelInput, match="one sequence"):
        s.forward_slots(np.zeros((2, 3), np.uint32), [7, 8])
    with pytest.raises(InvalidModelInput):
        s.forward_slots(np.full((1, 1), V, np.uint32), [7])  # token id out of range
    with pytest.raises(InvalidModelInput):
        s.forward_slots(np.zeros((1, 1), np.float32), [7])  # dtype
    n = PARITY.config.n_positions
    s.forward_slots(np.zeros((1, n - 1), np.uint32), [7])
    s.forward_slots(np.zeros((1, 1), np.uint32), [7])
    with pytest.raises(InvalidModelInput, match="exceed"):
        s.forward_slots(np.zeros((1, 1), np.uint32), [7])  # position overflow
    assert s.slot_len(7) == n and s.slot_len(8) == 0


def test_a_freed_slot_is_wiped_and_reused_cleanly(model_dir):
    s = Gpt2Shard.load(model_dir, 0, NL, threads=1)
    table = s.configure_slots(1)
    p = prompts(2)
    table.open(1)
    s.forward_slots(p[0], [1])
    table.close(1)
    assert s._engine.slot_len(0) == 0
    table.open(2)  # the same physical slot
    first = s.forward_slots(p[1], [2])[0].copy()
    fresh = Gpt2Shard.load(model_dir, 0, NL, threads=1)
    fresh.configure_slots(1).open(3)
    assert np.array_equal(first, fresh.forward_slots(p[1], [3])[0])


def test_slot_budget_limits_the_slot_count(model_dir):
    s = Gpt2Shard.load(model_dir, 0, NL, threads=1)
    per = s._engine.slot_bytes
    assert s.configure_slots(8, kv_budget_bytes=3 * per + 1).n_slots == 3
    with pytest.raises(ValueError):
        s.configure_slots(8, kv_budget_bytes=per - 1)
