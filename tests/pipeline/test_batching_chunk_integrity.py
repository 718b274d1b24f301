"""A host that drops, duplicates or reorders prompt Chunks (docs/batching.md) cannot make a
stage continue from the wrong position: every Chunk and Step names the context length it
ends at, and the stage checks it against its KV-cache slot before the forward."""

from __future__ import annotations

import numpy as np
import pytest

from cmlp.errors import ForwardFailed
from cmlp.pipeline.gpt2 import Gpt2Executor
from cmlp.transport.wire import DType, Tensor
from tests.helpers.model import PARITY
from tests.helpers.pipeline import make_manifest

C = PARITY.config.n_embd


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """The executor of stage 1 of 2 (hidden states in), with KV-cache slots."""
    model_dir = PARITY.write(tmp_path_factory.mktemp("parity"))
    m = make_manifest(2, splits=[(0, 2), (2, 4)], max_seq_len=128, hidden_dim=C)
    ex = Gpt2Executor(model_dir, threads=1)
    ex.init(m.stages[1], m.activation_spec, 2)
    ex.configure_slots(4)
    return ex


def chunk(t: int, seed: int = 0) -> Tensor:
    data = np.random.default_rng(seed).standard_normal((1, t, C)).astype(np.float32)
    return Tensor("hidden_states", DType.F32, data.shape, data)


def run(ex, seq, seq_len, row):
    ex.check_row(seq, 0, seq_len, row)
    return ex.forward_rows([seq], [row])


def test_chunks_in_order_are_accepted(stage1):
    stage1.open_seq(1)
    try:
        run(stage1, 1, 32, chunk(32))
        run(stage1, 1, 64, chunk(32, 1))
        run(stage1, 1, 70, chunk(6, 2))  # the last chunk (Step 0)
    finally:
        stage1.close_seq(1)


@pytest.mark.parametrize(
    "attack, sends",
    [
        ("duplicate", [(32, 32), (32, 32)]),  # the same chunk twice
        ("reorder", [(64, 32), (32, 32)]),  # the second chunk first
        ("drop", [(32, 32), (70, 6)]),  # the middle chunk never arrives
    ],
)
def test_a_hostile_host_cannot_shift_the_prompt(stage1, attack, sends):
    stage1.open_seq(2)
    try:
        with pytest.raises(ForwardFailed, match="position mismatch"):
            for i, (seq_len, t) in enumerate(sends):
                run(stage1, 2, seq_len, chunk(t, i))
    finally:
        stage1.close_seq(2)
    assert not stage1.has_seq(2)
