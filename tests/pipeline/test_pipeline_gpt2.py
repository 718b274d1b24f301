"""GPT-2 through the encrypted pipeline: identical greedy ids for every cut and topology.

The parity model (vocab 512, 4 layers, scaled-up weights) has transformers'
greedy ids committed in tests/golden; every 1-4 stage cut, direct and relayed,
must reproduce them exactly, and so must the unsharded engine.
"""

import numpy as np
import pytest

from cmlp.model import Gpt2Shard
from cmlp.pipeline.gpt2 import Gpt2Executor, generate, greedy_token
from tests.helpers.model import PARITY, layer_partitions, load_golden
from tests.helpers.pipeline import StageThread, make_manifest, orchestrator, running_pipeline


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    model_dir = PARITY.write(tmp_path_factory.mktemp("parity"))
    return model_dir, load_golden(PARITY, model_dir)


def pipeline_manifest(splits, relay):
    return make_manifest(len(splits), splits=splits, relay=relay, max_seq_len=512, hidden_dim=64)


def engine_greedy(model_dir, prompt, n):
    """The unsharded engine, step by step (the independent in-process reference)."""
    shard = Gpt2Shard.load(model_dir, 0, PARITY.config.n_layer, threads=1)
    ids, out = list(prompt), []
    logits = shard.forward(np.asarray([ids], np.uint32))
    for _ in range(n):
        tok = greedy_token(logits[0])
        out.append(tok)
        logits = shard.forward(np.asarray([[tok]], np.uint32))
    return out


def test_unsharded_engine_matches_transformers(parity):
    model_dir, golden = parity
    prompt = golden["greedy_prompt"][0].tolist()
    ids = engine_greedy(model_dir, prompt, 100)
    assert ids == golden["greedy_ids"].tolist()
    assert len(set(ids)) >= 5  # the check has teeth: ids vary


# fast tier: 1, 2 (relayed) and 4 stages; every cut is slow
@pytest.mark.fast_cases("0-4-direct", "0-2+2-4-relayed", "0-1+1-2+2-3+3-4-direct")
@pytest.mark.parametrize("relay", [False, True], ids=["direct", "relayed"])
@pytest.mark.parametrize(
    "splits", list(layer_partitions(PARITY.config.n_layer)), ids=lambda s: "+".join(f"{a}-{b}" for a, b in s)
)
def test_every_cut_gives_transformers_ids(parity, splits, relay):
    model_dir, golden = parity
    if relay and len(splits) == 1:
        pytest.skip("a single stage has no inter-stage link to relay")
    m = pipeline_manifest(splits, relay)
    with running_pipeline(m, [Gpt2Executor(model_dir, threads=1) for _ in splits]) as (orch, _):
        gen = generate(orch, golden["greedy_prompt"][0].tolist(), 100)
        orch.shutdown()
    assert gen.generated_ids == golden["greedy_ids"].tolist()
    assert len(gen.latencies_ms) == 100
    assert all(len(c) == len(splits) and all(x is not None for x in c) for c in gen.stage_compute_us)


@pytest.mark.slow  # 21 sessions; tests/pipeline/test_pipeline.py and test_integrity_cache_bleed.py: fast
def test_persistent_stages_serve_20_prompts_like_fresh_runs(parity):
    """The cache-clear sentinel reaches every stage: session after session, same answers."""
    model_dir, _ = parity
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, PARITY.config.vocab_size, rng.integers(1, 30)).tolist() for _ in range(20)]
    expected = [engine_greedy(model_dir, p, 8) for p in prompts]
    m = pipeline_manifest([(0, 1), (1, 3), (3, 4)], relay=True)
    stages = [StageThread(m, i, Gpt2Executor(model_dir, threads=1), persistent=True) for i in range(3)]
    try:
        for p, want in zip(prompts, expected, strict=True):  # one session per prompt
            orch = orchestrator(m)
            orch.start()
            assert generate(orch, p, 8).generated_ids == want
            orch.shutdown()
        orch = orchestrator(m)  # all prompts in one session
        orch.start()
        for p, want in zip(prompts, expected, strict=True):
            assert generate(orch, p, 8).generated_ids == want
        orch.shutdown()
        assert [s.worker.sessions for s in stages] == [21, 21, 21]
    finally:
        for s in stages:
            s.stop()


def test_context_longer_than_the_model_is_refused_before_sending(parity):
    model_dir, _ = parity
    n_pos = PARITY.config.n_positions
    m = make_manifest(2, splits=[(0, 2), (2, 4)], max_seq_len=n_pos, hidden_dim=64)
    with running_pipeline(m, [Gpt2Executor(model_dir, threads=1) for _ in range(2)]) as (orch, _):
        from cmlp.errors import ProtocolError

        prompt = list(range(n_pos))
        generate(orch, prompt, 1)  # exactly n_positions: fine
        with pytest.raises(ProtocolError, match=f"seq_len {n_pos + 1} exceeds"):
            generate(orch, prompt + [1], 1)
        assert not orch.tainted
        assert generate(orch, [1, 2, 3], 3).generated_ids == engine_greedy(model_dir, [1, 2, 3], 3)
        orch.shutdown()


def test_a_manifest_allowing_more_positions_than_the_model_is_refused_at_init(parity):
    model_dir, _ = parity
    from cmlp.errors import InitFailed

    m = make_manifest(1, splits=[(0, 4)], max_seq_len=PARITY.config.n_positions + 1, hidden_dim=64)
    ex = Gpt2Executor(model_dir, threads=1)
    with pytest.raises(InitFailed, match="exceeds the model's n_positions"):
        ex.init(m.stages[0], m.activation_spec, 1)
    m = make_manifest(1, splits=[(0, 4)], max_seq_len=16, hidden_dim=65)
    with pytest.raises(InitFailed, match="hidden_dim 65 does not match"):
        Gpt2Executor(model_dir, threads=1).init(m.stages[0], m.activation_spec, 1)


def test_wrong_input_dtype_is_rejected_by_the_stage(parity):
    model_dir, _ = parity
    m = make_manifest(1, splits=[(0, 4)], max_seq_len=512, hidden_dim=64)
    from cmlp.errors import RequestFailed
    from cmlp.transport.wire import Tensor

    with running_pipeline(m, [Gpt2Executor(model_dir, threads=1)]) as (orch, _):
        bad = Tensor.from_array("input_ids", np.zeros((1, 3), np.float32))
        with pytest.raises(RequestFailed, match="expected a U32 input tensor"):
            orch.infer([[bad]], seq_len=3)
        big = Tensor.from_array("input_ids", np.full((1, 3), 10**6, np.uint32))
        with pytest.raises(RequestFailed, match="vocab"):
            orch.infer([[big]], seq_len=3)
        orch.shutdown()
