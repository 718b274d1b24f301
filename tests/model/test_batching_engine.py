"""Engine slots (docs/batching.md): batched decode rows are bit-identical to solo runs,
for every family (gpt2, llama, qwen2) and every weight dtype (fp32, bf16, int8)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmlp.errors import InvalidModelInput
from cmlp.model import Gpt2Shard
from cmlp.model.llama import synthetic as llama_synthetic
from cmlp.model.quantize import quantize_model
from cmlp.model.registry import load_shard
from tests.helpers.model import PARITY

V = PARITY.config.vocab_size
NL = PARITY.config.n_layer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return PARITY.write(tmp_path_factory.mktemp("parity"))


@pytest.fixture(scope="module")
def family_models(tmp_path_factory, model_dir):
    """(family, dtype) -> model directory: the GPT-2 parity model and tiny llama / qwen2
    models, each as fp32, bf16 and int8 (``cmlp model quantize``)."""
    base = tmp_path_factory.mktemp("families")
    fp32 = {"gpt2": model_dir}
    for family in ("llama", "qwen2"):
        fp32[family] = llama_synthetic.init_model(base / family, family, "tiny", seed=3)
    out = {}
    for family, src in fp32.items():
        out[family, "fp32"] = src
        for dtype in ("bf16", "int8"):
            out[family, dtype] = quantize_model(src, base / f"{family}-{dtype}", dtype)
    return out


def n_layers(path) -> int:
    cfg = json.loads((path / "config.json").read_text())
    return int(cfg.get("num_hidden_layers") or cfg["n_layer"])


def greedy(row):
    return int(len(row) - 1 - np.argmax(row[::-1]))


def prompts(vocab, n=9):
    rng = np.random.default_rng(0)
    return [rng.integers(0, vocab, (1, int(rng.integers(1, 20)))).astype(np.uint32) for _ in range(n)]


def load_split(path, split):
    """One shard of the whole model, or two cut after layer ``split``."""
    n_layer = n_layers(path)
    if split is None:
        return [load_shard(path, 0, n_layer, threads=2)]
    return [load_shard(path, 0, split, threads=2), load_shard(path, split, n_layer, threads=1)]


def chain(shards):
    """forward(x, seqs, lens) through every shard, hidden states in the model's wire dtype
    between them as stages send them."""

    def fwd(x, seqs, lens=None):
        for s in shards:
            x = s.forward_slots(x, seqs, lens)
            if s.wire_dtype == "BF16" and not s.is_last:
                from cmlp.pipeline.gpt2 import f32_to_bf16_bits

                x = f32_to_bf16_bits(x)
        return x

    return fwd


def solo_runs(shards, fwd, ps, steps):
    """Each prompt prefilled and greedily decoded ``steps`` tokens alone: its logits."""
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
    return want


def assert_equal_runs(got, want):
    for i in range(len(want)):
        assert len(got[i]) == len(want[i])
        for a, b in zip(got[i], want[i], strict=True):
            assert np.array_equal(a, b), f"sequence {i} differs from its solo run"


CASES = [(f, d) for f in ("gpt2", "llama", "qwen2") for d in ("fp32", "bf16", "int8")]


@pytest.mark.parametrize("split", [None, 1])
@pytest.mark.parametrize("family,dtype", CASES)
def test_batched_decode_is_bit_identical_to_solo(family_models, family, dtype, split):
    """Sequences join one by one (batch sizes 1..9: every matmul kernel, including the
    wkernels' slab sizes), each at its own position; with ``split`` the rows pass a first
    shard and a second one (hidden states, in the model's wire dtype as stages send them)."""
    shards = load_split(family_models[family, dtype], split)
    check_batched_equals_solo(shards, prompts(shards[0].vocab_size), steps=10)


@pytest.mark.fast_cases("gpt2-fp32-1", "llama-bf16-None", "qwen2-int8-1")
@pytest.mark.parametrize("split", [None, 1])
@pytest.mark.parametrize("family,dtype", CASES)
def test_mixed_forwards_are_bit_identical_to_solo(family_models, family, dtype, split):
    """Short prompts join the decode rows' forward (``lens``: ragged rows, several prompts
    at once); prompts longer than ``mix_rows`` run alone.  Every sequence's logits equal
    its solo run's bits."""
    shards = load_split(family_models[family, dtype], split)
    mix = shards[0]._engine.mix_rows
    ps = prompts(shards[0].vocab_size, n=9)
    ps.append(np.resize(ps[0], (1, mix + 2)))  # one long prompt: alone
    steps = 6
    for s in shards:
        s.configure_slots(len(ps))
    fwd = chain(shards)
    want = solo_runs(shards, fwd, ps, steps)
    got = {i: [] for i in range(len(ps))}
    pending = list(range(len(ps)))
    while pending or any(len(v) <= steps for v in got.values()):
        # this step: every decoding sequence, plus up to 3 waiting short prompts
        rows = [
            (j, np.array([[greedy(got[j][-1])]], np.uint32)) for j in got if got[j] and len(got[j]) <= steps
        ]
        joining = [j for j in pending if ps[j].shape[1] <= mix][:3]
        long_ones = [j for j in pending if ps[j].shape[1] > mix][:1]
        for j in joining + long_ones:
            pending.remove(j)
            for s in shards:
                s.slots.open(j)
        rows += [(j, ps[j]) for j in joining]
        if rows:
            x = np.concatenate([r.reshape(1, -1) for _, r in rows], axis=1)
            out = fwd(x, [j for j, _ in rows], [r.shape[1] for _, r in rows])
            for r, (j, _) in enumerate(rows):
                got[j].append(out[r].copy())
        for j in long_ones:
            got[j].append(fwd(ps[j], [j])[0].copy())
    assert_equal_runs(got, want)


def test_batched_decode_is_bit_identical_at_odd_widths(tmp_path):
    """GPT-2 fp32 at widths that are not multiples of the kernels' tiles (n_embd 40: 120,
    40 and 160 columns end in a partial 48-column strip and a scalar tail; 301 vocabulary
    rows), with up to 11 rows in a step (a second 8-row tile)."""
    from tests.helpers.model import Gpt2Config, write_model

    cfg = Gpt2Config(vocab_size=301, n_positions=64, n_embd=40, n_layer=2, n_head=2)
    path = write_model(tmp_path / "odd", cfg, seed=7, std=0.1, ln_std=0.2, bias_std=0.1)
    shards = [load_shard(path, 0, cfg.n_layer, threads=2)]
    check_batched_equals_solo(shards, prompts(cfg.vocab_size, n=11), steps=6)


def check_batched_equals_solo(shards, ps, steps):
    """Each prompt decoded alone, then all of them joining one by one (batch sizes 1..len(ps)):
    every sequence's logits must be the same bits both ways."""
    for s in shards:
        s.configure_slots(len(ps))
    fwd = chain(shards)
    want = solo_runs(shards, fwd, ps, steps)
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
    assert_equal_runs(got, want)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_slotted_llama_matches_the_lockstep_forward(family_models, family):
    """Slots only move the KV rows and positions: a slotted prefill + decode gives the
    logits of the one-sequence lockstep forward (same kernels at batch 1: a prompt longer
    than ``mix_rows``, which both compute with the blocked GEMM)."""
    path = family_models[family, "fp32"]
    slotted = load_shard(path, 0, n_layers(path), threads=2)
    lockstep = load_shard(path, 0, n_layers(path), threads=2)
    slotted.configure_slots(3).open(1)
    slotted.slots.open(2)
    p = prompts(slotted.vocab_size, 2)
    long_prompt = np.resize(p[1], (1, slotted._engine.mix_rows + 3))
    slotted.forward_slots(p[0], [2])  # another sequence's rows in the other slot
    a = slotted.forward_slots(long_prompt, [1])[0].copy()
    b = lockstep.forward(long_prompt)[0].copy()
    assert np.array_equal(a, b)
    for _ in range(5):
        tok = np.array([[greedy(a)]], np.uint32)
        a = slotted.forward_slots(tok, [1])[0].copy()
        b = lockstep.forward(tok)[0].copy()
        assert np.array_equal(a, b)


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
    with pytest.raises(InvalidModelInput, match="runs alone"):
        s.forward_slots(np.zeros((2, 17), np.uint32), [7, 8])  # two long prefills
    with pytest.raises(InvalidModelInput, match="runs alone"):
        s.forward_slots(np.zeros((1, 18), np.uint32), [7, 8], lens=[1, 17])
    with pytest.raises(InvalidModelInput, match="add up"):
        s.forward_slots(np.zeros((1, 5), np.uint32), [7, 8], lens=[1, 3])
    with pytest.raises(InvalidModelInput, match="at least one"):
        s.forward_slots(np.zeros((1, 3), np.uint32), [7, 8], lens=[3, 0])
    with pytest.raises(InvalidModelInput, match=r"\[1, M\]"):
        s.forward_slots(np.zeros((2, 2), np.uint32), [7, 8], lens=[2, 2])
    with pytest.raises(InvalidModelInput, match="1 slots for 2"):
        s.forward_slots(np.zeros((1, 3), np.uint32), [7], lens=[1, 2])
    with pytest.raises(InvalidModelInput, match="3 sequences in one forward with 2 slots"):
        s.forward_slots(np.zeros((1, 3), np.uint32), [7, 8], lens=[1, 1, 1])
    assert s.slot_len(7) == 0 and s.slot_len(8) == 0  # nothing ran
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
    p = prompts(V, 2)
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
