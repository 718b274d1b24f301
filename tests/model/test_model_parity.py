"""Logits and hidden states against Hugging Face transformers (float32).

The default run compares against tests/golden (made by scripts/make_golden.py,
no torch needed).  The ``torch``-marked tests recompute the same references
live, plus one full-size GPT-2-small-shaped model.
"""

from __future__ import annotations

import numpy as np
import pytest

from cmlp.model import Gpt2Shard
from tests.helpers.model import (
    ATOL,
    PARITY,
    SPECS,
    WIDE,
    HfSession,
    ShardedModel,
    hf_reference,
    layer_partitions,
    load_golden,
    load_hf_model,
)


@pytest.fixture(scope="module", params=sorted(SPECS))
def spec(request):
    return SPECS[request.param]


@pytest.fixture(scope="module")
def model_dir(spec, tmp_path_factory):
    return spec.write(tmp_path_factory.mktemp(spec.name) / "model")


@pytest.fixture(scope="module")
def golden(spec, model_dir):
    return load_golden(spec, model_dir)


def assert_close(actual, expected, what):
    diff = float(np.max(np.abs(np.asarray(actual) - np.asarray(expected))))
    assert diff <= ATOL, f"{what}: max abs diff {diff:.3g} > {ATOL}"


# ---------------------------------------------------------------------------
# Checks shared by the golden and the live runs
# ---------------------------------------------------------------------------


def check_prefill(model_dir, spec, ref):
    shard = Gpt2Shard.load(model_dir, 0, spec.config.n_layer, threads=2)
    for T in spec.prefill_lengths:
        shard.clear_cache()
        logits = shard.forward(ref[f"prefill_T{T}_ids"])
        assert logits.shape == (1, spec.config.vocab_size) and logits.dtype == np.float32
        assert_close(logits, ref[f"prefill_T{T}_logits"], f"prefill T={T}")
    shard.clear_cache()
    assert_close(shard.forward(ref["batch_ids"]), ref["batch_logits"], "batched prefill")


def check_decode(model_dir, spec, ref):
    shard = Gpt2Shard.load(model_dir, 0, spec.config.n_layer, threads=2)
    assert_close(shard.forward(ref["decode_prompt"]), ref["decode_prompt_logits"], "prompt")
    for step, token in enumerate(ref["decode_ids"]):
        logits = shard.forward(np.array([[token]], np.uint32))
        assert_close(logits, ref["decode_logits"][step], f"decode step {step}")
    assert shard.past_len == 5 + spec.decode_steps


def check_greedy(model_dir, spec, ref):
    shard = Gpt2Shard.load(model_dir, 0, spec.config.n_layer, threads=2)
    logits = shard.forward(ref["greedy_prompt"])
    ids = []
    for _ in range(spec.greedy_tokens):
        token = int(np.argmax(logits[0]))
        ids.append(token)
        logits = shard.forward(np.array([[token]], np.uint32))
    assert len(set(ids)) > 5, f"greedy ids barely vary: {ids}"
    assert ids == ref["greedy_ids"].tolist()


def check_every_partition(model_dir, spec, ref):
    n_layer = spec.config.n_layer
    partitions = list(layer_partitions(n_layer))
    assert len(partitions) == 2 ** (n_layer - 1) or n_layer > 4
    for ranges in partitions:
        model = ShardedModel(model_dir, ranges)
        label = f"shards {ranges}"
        assert_close(model.forward(ref["decode_prompt"]), ref["decode_prompt_logits"], label)
        for cut, hidden in model.cut_hidden.items():
            assert_close(hidden, ref["cut_hidden_prefill"][cut - 1], f"{label}, prefill cut {cut}")
        for step in range(spec.cut_decode_steps):
            token = np.array([[ref["decode_ids"][step]]], np.uint32)
            assert_close(model.forward(token), ref["decode_logits"][step], f"{label}, step {step}")
            for cut, hidden in model.cut_hidden.items():
                assert_close(
                    hidden, ref["cut_hidden_decode"][step][cut - 1], f"{label}, decode step {step} cut {cut}"
                )


# ---------------------------------------------------------------------------
# Against the committed golden files
# ---------------------------------------------------------------------------


def test_prefill_matches_golden(spec, model_dir, golden):
    check_prefill(model_dir, spec, golden)


def test_cached_decode_matches_golden(spec, model_dir, golden):
    check_decode(model_dir, spec, golden)


def test_greedy_ids_match_golden(spec, model_dir, golden):
    check_greedy(model_dir, spec, golden)


def test_every_partition_matches_golden(spec, model_dir, golden):
    check_every_partition(model_dir, spec, golden)


def test_prefixed_file_matches_golden(tmp_path):
    """Same weights saved with the ``transformer.`` prefix give the same outputs."""
    plain = PARITY.write(tmp_path / "plain")
    golden = load_golden(PARITY, plain)
    prefixed = PARITY.write(tmp_path / "prefixed", prefix="transformer.")
    check_decode(prefixed, PARITY, golden)
    check_every_partition(prefixed, PARITY, golden)


# ---------------------------------------------------------------------------
# Live against transformers
# ---------------------------------------------------------------------------


@pytest.mark.torch
def test_live_reference(spec, model_dir):
    ref = hf_reference(model_dir, spec)
    check_prefill(model_dir, spec, ref)
    check_decode(model_dir, spec, ref)
    check_greedy(model_dir, spec, ref)
    check_every_partition(model_dir, spec, ref)


@pytest.mark.torch
def test_live_prefixed_reference(tmp_path):
    model_dir = WIDE.write(tmp_path / "prefixed", prefix="transformer.")
    ref = hf_reference(model_dir, WIDE)
    check_prefill(model_dir, WIDE, ref)
    check_decode(model_dir, WIDE, ref)


@pytest.mark.torch
def test_live_gpt2_small_shape(tmp_path):
    """One full-size case: GPT-2-small shapes, synthetic weights, 3 shards."""
    from cmlp.model.synthetic import PRESETS, write_model

    config = PRESETS["small"]
    model_dir = write_model(tmp_path / "small", config, seed=7, std=0.05, ln_std=0.1, bias_std=0.02)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, config.vocab_size, (1, 64)).astype(np.uint32)
    session = HfSession(load_hf_model(model_dir))
    model = ShardedModel(model_dir, [(0, 5), (5, 6), (6, 12)])
    ref_logits, ref_hidden = session.forward(prompt)
    assert_close(model.forward(prompt), ref_logits, "small prefill")
    for cut, hidden in model.cut_hidden.items():
        assert_close(hidden, ref_hidden[cut], f"small prefill cut {cut}")
    token = np.array([[int(np.argmax(ref_logits))]], np.uint32)
    for step in range(5):
        ref_logits, _ = session.forward(token)
        assert_close(model.forward(token), ref_logits, f"small decode step {step}")
        token = np.array([[int(np.argmax(ref_logits))]], np.uint32)
