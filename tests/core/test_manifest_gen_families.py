"""`cmlp manifest generate` for every registered family: layers, width, positions, the wire
dtype and the weight hashes come from the family package, and match what a stage loads."""

from __future__ import annotations

import pytest

from cmlp.manifest_gen import generate
from cmlp.model.gpt2.synthetic import init_model as init_gpt2
from cmlp.model.llama.synthetic import init_model as init_llama
from cmlp.model.quantize import quantize_model
from cmlp.model.registry import load_shard


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("families")
    gpt2 = init_gpt2(base / "gpt2", preset="tiny")
    llama = init_llama(base / "llama", "llama", "tiny", seed=1)
    qwen2 = init_llama(base / "qwen2", "qwen2", "tiny", seed=2)
    return {
        "gpt2": (gpt2, "F32"),
        "llama": (llama, "F32"),
        "llama-bf16": (quantize_model(llama, base / "llama-bf16", "bf16"), "BF16"),
        "qwen2-int8": (quantize_model(qwen2, base / "qwen2-int8", "int8"), "F32"),
    }


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama-bf16", "qwen2-int8"])
def test_generated_manifest_matches_the_loaded_shards(models, name):
    path, wire = models[name]
    m = generate(path, [1, 3], "relay", 9100, host_blind=True)
    assert m.activation_spec.dtype == wire
    assert m.model_name == name.split("-")[0]
    for st in m.stages:
        shard = load_shard(path, st.layer_start, st.layer_end, max_seq_len=m.activation_spec.max_seq_len)
        assert m.activation_spec.hidden_dim == shard.hidden_size
        assert m.activation_spec.max_seq_len == shard.max_positions
        assert shard.wire_dtype == wire
        assert st.weight_hashes == [d for _, d in shard.weight_hashes()]
    assert m.stages[-1].layer_end == shard.n_layer
