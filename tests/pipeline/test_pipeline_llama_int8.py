"""An int8 llama/qwen2 checkpoint (`cmlp model quantize --dtype int8`) through the
encrypted pipeline at every 1-4 stage cut: greedy ids equal transformers' argmax
running exactly q * scale in float32 (tests/model/test_quant_llama.py bounds the logits)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.numpy import load_file

from cmlp.manifest import Manifest
from cmlp.model.quant import LINEAR, dequantize_int8
from cmlp.model.quantize import quantize_model
from cmlp.pipeline.gpt2 import ModelExecutor, generate
from tests.helpers.llama_helpers import Case, build_hf_model, hf_logits, save
from tests.helpers.model import layer_partitions
from tests.helpers.pipeline import manifest_dict, running_pipeline

PROMPT = [5, 17, 250, 3, 99, 42]
TOKENS = 24
CASES = {
    "llama": Case(
        "llama-i8-pipe",
        "llama",
        dict(
            hidden_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=500000.0,
            tie_word_embeddings=True,
        ),
        seed=11,
    ),
    "qwen2": Case(
        "qwen2-i8-pipe", "qwen2", dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=1), seed=12
    ),
}


@pytest.fixture(scope="module", params=list(CASES))
def int8_model(request, tmp_path_factory):
    case = CASES[request.param]
    root = tmp_path_factory.mktemp(case.name)
    save(build_hf_model(case), root / "f32")
    q_dir = quantize_model(root / "f32", root / "i8", "int8")
    tensors = load_file(str(q_dir / "model.safetensors"))
    state = {
        n: torch.from_numpy(
            np.ascontiguousarray(
                dequantize_int8(a, tensors[n + "_scale"], LINEAR) if a.dtype == np.int8 else a,
                dtype=np.float32,
            )
        )
        for n, a in tensors.items()
        if not n.endswith("_scale")
    }
    reference = build_hf_model(case)
    reference.load_state_dict(state, strict=False)
    if case.kwargs.get("tie_word_embeddings"):
        reference.tie_weights()
    ids = list(PROMPT)
    for _ in range(TOKENS):
        ids.append(int(hf_logits(reference, ids)[-1].argmax()))
    return q_dir, ids[len(PROMPT) :]


# fast tier: one cut per family; every cut is slow
@pytest.mark.fast_cases("llama-0-1+1-2+2-4", "qwen2-0-3+3-4")
@pytest.mark.parametrize(
    "splits", list(layer_partitions(4)), ids=lambda s: "+".join(f"{a}-{b}" for a, b in s)
)
def test_int8_every_cut(int8_model, splits):
    q_dir, ref_ids = int8_model
    doc = manifest_dict(len(splits), splits=splits, max_seq_len=128, hidden_dim=128)
    doc["model_name"] = "test"
    m = Manifest.from_json(json.dumps(doc))
    with running_pipeline(m, [ModelExecutor(q_dir, threads=1) for _ in splits]) as (orch, _):
        gen = generate(orch, PROMPT, TOKENS)
        orch.shutdown()
    assert gen.generated_ids == ref_ids
    assert len(set(ref_ids)) >= 3
