"""Gpt2Shard behaviour: input checks, position limit, cache semantics, threads."""

from __future__ import annotations

import numpy as np
import pytest

from cmlp.errors import InvalidModelInput, ModelError, PositionOverflow
from cmlp.model import Gpt2Config, Gpt2Shard
from cmlp.model.synthetic import write_model

CONFIG = Gpt2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=3, n_head=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model(
        tmp_path_factory.mktemp("engine") / "m", CONFIG, seed=5, std=0.1, ln_std=0.2, bias_std=0.1
    )


@pytest.fixture
def full(model_dir):
    return Gpt2Shard.load(model_dir, 0, 3, threads=2)


@pytest.fixture
def middle(model_dir):
    return Gpt2Shard.load(model_dir, 1, 2, threads=2)


def ids(*values):
    return np.array([values], np.uint32)


def hidden(B=1, T=2, seed=0):
    return np.random.default_rng(seed).standard_normal((B, T, CONFIG.n_embd)).astype(np.float32)


def test_properties(model_dir, full, middle):
    assert (full.is_first, full.is_last, full.layer_start, full.layer_end) == (True, True, 0, 3)
    assert (middle.is_first, middle.is_last) == (False, False)
    assert full.config == CONFIG and full.past_len == 0 and full.threads == 2
    last = Gpt2Shard.load(model_dir, 2, 3, threads=1)
    assert (last.is_first, last.is_last, last.threads) == (False, True, 1)


def test_output_shapes_and_past_len(full, middle):
    out = full.forward(ids(1, 2, 3))
    assert out.shape == (1, CONFIG.vocab_size) and out.dtype == np.float32
    assert full.past_len == 3
    full.forward(ids(4))
    assert full.past_len == 4
    out = middle.forward(hidden(2, 5))
    assert out.shape == (2, 5, CONFIG.n_embd) and middle.past_len == 5


def test_default_threads_is_cpu_count(model_dir):
    import os

    assert Gpt2Shard.load(model_dir, 0, 1).threads == min(os.cpu_count(), 64)


@pytest.mark.parametrize(
    "bad",
    [
        np.array([[1.0, 2.0]], np.float32),  # float ids
        np.array([[True, False]]),  # bool
        np.array([1, 2, 3], np.uint32),  # 1-D
        np.zeros((1, 1, 2), np.uint32),  # 3-D
        np.zeros((0, 3), np.uint32),  # B = 0
        np.zeros((1, 0), np.uint32),  # T = 0
        np.array([[1, 300]], np.uint32),  # id == vocab
        np.array([[1, -1]], np.int64),  # negative
        np.array([[2**40]], np.int64),  # wraps to a valid u32 if narrowed first
        np.array([["a"]]),  # strings
    ],
)
def test_bad_ids_are_rejected_without_state_change(full, bad):
    full.forward(ids(7, 8))
    with pytest.raises(InvalidModelInput):
        full.forward(bad)
    assert full.past_len == 2


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((1, 2, CONFIG.n_embd), np.float64),
        np.zeros((1, 2, CONFIG.n_embd), np.float16),
        np.zeros((1, 2, CONFIG.n_embd), np.uint32),
        np.zeros((1, 2, CONFIG.n_embd + 1), np.float32),
        np.zeros((2, CONFIG.n_embd), np.float32),
        np.zeros((0, 2, CONFIG.n_embd), np.float32),
    ],
)
def test_bad_hidden_is_rejected(middle, bad):
    with pytest.raises(InvalidModelInput):
        middle.forward(bad)
    assert middle.past_len == 0


def test_ids_to_middle_shard_and_hidden_to_first_are_rejected(full, middle):
    with pytest.raises(InvalidModelInput):
        middle.forward(ids(1, 2))
    with pytest.raises(InvalidModelInput):
        full.forward(hidden())


def test_error_message_names_the_bad_id(full):
    with pytest.raises(InvalidModelInput, match=r"token id 999 at \[0, 1\].*vocab_size 300"):
        full.forward(ids(1, 999))


def test_position_overflow_is_raised_before_any_state_change(full):
    first = full.forward(np.arange(30, dtype=np.uint32)[None]).copy()
    with pytest.raises(PositionOverflow, match="30 cached \\+ 3 new positions exceeds n_positions 32"):
        full.forward(ids(1, 2, 3))
    assert full.past_len == 30
    after = full.forward(ids(1, 2)).copy()  # exactly fills n_positions
    assert full.past_len == 32
    with pytest.raises(PositionOverflow):
        full.forward(ids(1))
    # the failed calls changed nothing: same result as a clean run
    full.clear_cache()
    np.testing.assert_array_equal(full.forward(np.arange(30, dtype=np.uint32)[None]), first)
    np.testing.assert_array_equal(full.forward(ids(1, 2)), after)


def test_position_overflow_on_a_single_long_input(full, middle):
    with pytest.raises(PositionOverflow):
        full.forward(np.zeros((1, 33), np.uint32))
    with pytest.raises(PositionOverflow):
        middle.forward(np.zeros((1, 33, CONFIG.n_embd), np.float32))
    assert issubclass(PositionOverflow, ModelError)


def test_batch_size_must_match_the_cache(full):
    full.forward(np.zeros((2, 3), np.uint32))
    with pytest.raises(InvalidModelInput, match="batch size 1"):
        full.forward(ids(1))
    full.forward(np.zeros((2, 1), np.uint32))
    full.clear_cache()
    assert full.forward(np.zeros((3, 2), np.uint32)).shape == (3, CONFIG.vocab_size)


def test_batch_and_token_limits(full):
    with pytest.raises(InvalidModelInput, match="batch size 65"):
        full.forward(np.zeros((65, 1), np.uint32))
    full.max_tokens = 16
    with pytest.raises(InvalidModelInput, match="exceed the maximum"):
        full.forward(np.zeros((4, 5), np.uint32))


def test_clear_cache_matches_a_fresh_shard(model_dir, full):
    sequence = [ids(5, 6, 7, 8), ids(9), ids(10)]
    fresh = [full.forward(x).copy() for x in sequence]
    full.clear_cache()
    assert full.past_len == 0
    again = [full.forward(x).copy() for x in sequence]
    other = Gpt2Shard.load(model_dir, 0, 3, threads=1)
    for a, b in zip(fresh, again, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, x in zip(fresh, sequence, strict=True):
        np.testing.assert_array_equal(a, other.forward(x))


def test_batched_rows_equal_single_sequences(model_dir):
    rng = np.random.default_rng(3)
    batch = rng.integers(0, CONFIG.vocab_size, (3, 6)).astype(np.uint32)
    shard = Gpt2Shard.load(model_dir, 0, 3, threads=2)
    out = shard.forward(batch).copy()
    step = shard.forward(np.array([[1], [2], [3]], np.uint32)).copy()
    for b in range(3):
        single = Gpt2Shard.load(model_dir, 0, 3, threads=2)
        np.testing.assert_allclose(single.forward(batch[b : b + 1])[0], out[b], atol=1e-5)
        np.testing.assert_allclose(single.forward(np.array([[b + 1]], np.uint32))[0], step[b], atol=1e-5)


def test_results_do_not_depend_on_thread_count(model_dir):
    sequence = [np.arange(20, dtype=np.uint32)[None], ids(3), ids(4)]
    outputs = []
    for threads in (1, 2, 3):
        shard = Gpt2Shard.load(model_dir, 0, 3, threads=threads)
        outputs.append([shard.forward(x).copy() for x in sequence])
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other, strict=True):
            np.testing.assert_array_equal(a, b)  # bitwise: per-chunk reduction order is fixed


def test_set_threads(full):
    a = full.forward(ids(1, 2, 3)).copy()
    full.set_threads(1)
    assert full.threads == 1
    full.clear_cache()
    np.testing.assert_array_equal(full.forward(ids(1, 2, 3)), a)
    for bad in (0, -1, 65, 1.5, True, "2"):
        with pytest.raises(ValueError):
            full.set_threads(bad)


def test_unaligned_noncontiguous_and_byteswapped_inputs(model_dir):
    x = hidden(2, 3, seed=1)
    reference = Gpt2Shard.load(model_dir, 1, 3, threads=2).forward(x).copy()

    raw = bytearray(x.nbytes + 1)
    unaligned = np.frombuffer(raw, np.float32, count=x.size, offset=1).reshape(x.shape)
    unaligned[...] = x
    assert not unaligned.flags.aligned
    wide = np.zeros((2, 3, 2 * CONFIG.n_embd), np.float32)
    wide[:, :, ::2] = x
    variants = {
        "unaligned": unaligned,
        "strided": wide[:, :, ::2],
        "fortran": np.asfortranarray(x),
        "big-endian": x.astype(">f4"),
        "read-only": np.frombuffer(x.tobytes(), np.float32).reshape(x.shape),
    }
    for name, variant in variants.items():
        shard = Gpt2Shard.load(model_dir, 1, 3, threads=2)
        np.testing.assert_array_equal(shard.forward(variant), reference, err_msg=name)


def test_unaligned_and_other_integer_ids(model_dir):
    tokens = np.array([[5, 17, 299, 0]], np.uint32)
    reference = Gpt2Shard.load(model_dir, 0, 3, threads=2).forward(tokens).copy()
    raw = bytearray(tokens.nbytes + 3)
    unaligned = np.frombuffer(raw, np.uint32, count=4, offset=3).reshape(1, 4)
    unaligned[...] = tokens
    variants = [
        unaligned,
        tokens.astype(np.int64),
        tokens.astype(">u4"),
        tokens.astype(np.uint16),
        np.asfortranarray(np.repeat(tokens, 2, axis=0))[:1],
        [[5, 17, 299, 0]],
    ]
    for variant in variants:
        shard = Gpt2Shard.load(model_dir, 0, 3, threads=2)
        np.testing.assert_array_equal(shard.forward(variant), reference)


def test_output_is_a_view_reused_by_the_next_forward(full):
    first = full.forward(ids(1, 2))
    kept = first.copy()
    second = full.forward(ids(3))
    assert np.shares_memory(first, second)
    assert not np.array_equal(first, kept)  # documented: valid until the next forward


def test_concurrent_forwards_are_serialised(model_dir):
    import threading

    shard = Gpt2Shard.load(model_dir, 0, 3, threads=2)
    errors = []

    def worker():
        try:
            for _ in range(10):
                shard.forward(ids(1))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and shard.past_len == 20


def test_prefill_in_chunks_equals_one_prefill(model_dir):
    tokens = np.random.default_rng(8).integers(0, CONFIG.vocab_size, (1, 12)).astype(np.uint32)
    whole = Gpt2Shard.load(model_dir, 0, 3, threads=2).forward(tokens).copy()
    chunked = Gpt2Shard.load(model_dir, 0, 3, threads=2)
    chunked.forward(tokens[:, :5])
    chunked.forward(tokens[:, 5:6])
    np.testing.assert_allclose(chunked.forward(tokens[:, 6:]), whole, atol=1e-5)


def test_engine_guards_memory_even_without_the_wrapper(full, middle):
    """cmlp._gpt2.ShardEngine re-checks what it needs to stay in bounds."""
    engine, hidden_engine = full._engine, middle._engine
    for bad in (
        np.zeros(3, np.uint32),
        np.full((1, 2), np.nan),
        np.zeros((1, 2, 3), np.uint32),
        np.zeros((0, 1), np.uint32),
        np.zeros((1, 33), np.uint32),
        np.array([[300]], np.uint32),
        np.array([[-1]], np.int32),
    ):
        with pytest.raises(InvalidModelInput):
            engine.forward_ids(bad)
    for bad in (
        np.zeros((2, CONFIG.n_embd), np.float32),
        np.zeros((1, 2, CONFIG.n_embd)),
        np.zeros((1, 2, 3), np.float32),
    ):
        with pytest.raises(InvalidModelInput):
            hidden_engine.forward_hidden(bad)
    assert engine.past_len == 0 and hidden_engine.past_len == 0
