"""llama/qwen2 through the encrypted pipeline: every 1-4 stage cut, F32 and BF16 on the wire.

Reference: transformers' argmax on the same prefix (float32, on the same
weights).  With BF16 hidden states on the wire, the reference is transformers
with the output of each cut's last decoder layer rounded to bfloat16 (a
forward hook): the same math as the pipeline, so the ids must agree exactly
(without the rounding they drift apart after ~15 tokens on these models).
"""

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from cmlp.errors import InitFailed
from cmlp.manifest import Manifest
from cmlp.pipeline.gpt2 import ModelExecutor, generate
from tests.helpers.llama_helpers import Case, build_hf_model, hf_logits, save
from tests.helpers.model import layer_partitions
from tests.helpers.pipeline import (
    manifest_dict,
    run_orch_process,
    running_pipeline,
    start_stage_process,
    stop_processes,
    write_manifest,
)

PROMPT = [5, 17, 250, 3, 99, 42]
TOKENS = 50
CASES = {
    "llama": Case(
        "llama-pipe",
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
        "qwen2-pipe", "qwen2", dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=1), seed=12
    ),
}


def manifest(splits, hidden, dtype="F32", model_name="test", **kw):
    doc = manifest_dict(len(splits), splits=splits, max_seq_len=128, hidden_dim=hidden, **kw)
    doc["activation_spec"]["dtype"] = dtype
    doc["model_name"] = model_name
    return Manifest.from_json(json.dumps(doc))


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def models(request, tmp_path_factory):
    case = CASES[request.param]
    model = build_hf_model(case)
    fp32 = save(model, tmp_path_factory.mktemp(case.name + "-fp32"))
    ref_ids = greedy_reference(model)
    half = save(model, tmp_path_factory.mktemp(case.name + "-bf16"), dtype="bf16")
    reference = build_hf_model(case)
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    return case, fp32, ref_ids, half, reference


def greedy_reference(model, cuts=()):
    """transformers' greedy ids; hidden states rounded to bf16 after each layer in cuts."""

    def to_bf16(module, args, output):
        if isinstance(output, tuple):
            return (output[0].to(torch.bfloat16).float(), *output[1:])
        return output.to(torch.bfloat16).float()

    hooks = [model.model.layers[c - 1].register_forward_hook(to_bf16) for c in cuts]
    try:
        ids = list(PROMPT)
        for _ in range(TOKENS):
            ids.append(int(hf_logits(model, ids)[-1].argmax()))
    finally:
        for h in hooks:
            h.remove()
    return ids[len(PROMPT) :]


def run(model_dir, splits, dtype):
    m = manifest(splits, 128, dtype)
    with running_pipeline(m, [ModelExecutor(model_dir, threads=1) for _ in splits]) as (orch, _):
        gen = generate(orch, PROMPT, TOKENS)
        orch.shutdown()
    return gen.generated_ids


# fast tier: one cut per family; every cut is slow
@pytest.mark.fast_cases("llama-0-1+1-3+3-4", "qwen2-0-2+2-4")
@pytest.mark.parametrize(
    "splits", list(layer_partitions(4)), ids=lambda s: "+".join(f"{a}-{b}" for a, b in s)
)
def test_every_cut_fp32(models, splits):
    case, fp32, ref_ids, _, _ = models
    assert run(fp32, splits, "F32") == ref_ids
    assert len(set(ref_ids)) >= 3


@pytest.mark.fast_cases("llama-0-4", "qwen2-0-1+1-3+3-4")
@pytest.mark.parametrize(
    "splits",
    [[(0, 4)], [(0, 2), (2, 4)], [(0, 1), (1, 3), (3, 4)]],
    ids=lambda s: "+".join(f"{a}-{b}" for a, b in s),
)
def test_bf16_weights_and_wire(models, splits):
    case, _, _, half, reference = models
    ref_ids = greedy_reference(reference, cuts=[b for _, b in splits[:-1]])
    assert run(half, splits, "BF16") == ref_ids


def test_bf16_wire_halves_the_hop(models):
    case, _, _, half, _ = models
    ex = [ModelExecutor(half, threads=1), ModelExecutor(half, threads=1)]
    m = manifest([(0, 2), (2, 4)], 128, "BF16")
    for i, e in enumerate(ex):
        e.init(m.stage(i), m.activation_spec, 2)
    from cmlp.pipeline.gpt2 import _ids_tensor, cache_clear_sentinel

    for e in ex:
        e.begin_request(1, len(PROMPT), 1)
    out = ex[0].forward(1, 0, [cache_clear_sentinel(), _ids_tensor(PROMPT)])
    assert out[1].dtype.name == "BF16" and out[1].data.nbytes == len(PROMPT) * 128 * 2
    logits = ex[1].forward(1, 0, out)[0]
    assert logits.dtype.name == "F32" and logits.shape == (1, 301)


def test_model_name_of_another_family_is_refused(models):
    case, fp32, *_ = models
    m = manifest([(0, 4)], 128, model_name="gpt2")
    with pytest.raises(InitFailed, match="names the gpt2 family"):
        ModelExecutor(fp32, model_name=m.model_name).init(m.stage(0), m.activation_spec, 1)


def test_bf16_wire_refused_for_an_fp32_model(models):
    case, fp32, *_ = models
    m = manifest([(0, 4)], 128, "BF16")
    with pytest.raises(InitFailed, match="activation dtype BF16 is not supported"):
        ModelExecutor(fp32).init(m.stage(0), m.activation_spec, 1)


def test_cli_two_stage_llama_end_to_end(tmp_path):
    """What the README shows: `cmlp model init --arch llama --dtype bf16`, two stage
    processes, the orchestrator with the model's own tokenizer."""
    import subprocess

    from tests.helpers.pipeline import cli_env

    model = tmp_path / "llama"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cmlp.cli.main",
            "model",
            "init",
            "--arch",
            "llama",
            "--preset",
            "tiny",
            "--dtype",
            "bf16",
            "--out",
            str(model),
        ],
        check=True,
        env=cli_env(),
        capture_output=True,
    )
    m = manifest([(0, 2), (2, 4)], 64, "BF16", model_name="llama-tiny")
    path = write_manifest(tmp_path, m)
    procs = [start_stage_process(path, i, model) for i in range(2)]
    try:
        result = run_orch_process(path, "Hello", max_tokens=5, extra=["--tokenizer", str(model)])
    finally:
        stop_processes(procs)
    assert result.returncode == 0, result.stderr


def test_hostile_inputs_are_forward_failures(models):
    """Wrong dtype, shape, width or ids from the network: ForwardFailed, state unchanged."""
    from cmlp.errors import ForwardFailed
    from cmlp.pipeline.gpt2 import _ids_tensor, cache_clear_sentinel
    from cmlp.transport.wire import DType, Tensor

    case, _, _, half, _ = models
    m = manifest([(0, 2), (2, 4)], 128, "BF16")
    first, second = ModelExecutor(half, threads=1), ModelExecutor(half, threads=1)
    first.init(m.stage(0), m.activation_spec, 2)
    second.init(m.stage(1), m.activation_spec, 2)

    def bf16(shape):
        return Tensor("hidden_states", DType.BF16, shape, np.zeros(shape, np.uint16))

    bad = [
        (first, [_ids_tensor([5, 301])]),  # id >= vocab
        (first, [bf16((1, 2, 128))]),  # hidden to stage 0
        (second, [_ids_tensor([1, 2])]),  # ids to stage 1
        (second, [bf16((1, 2, 127))]),  # wrong width
        (second, [bf16((1, 0, 128))]),  # empty
        (second, [Tensor("h", DType.F16, (1, 1, 128), np.zeros((1, 1, 128), np.float16))]),
        (second, [bf16((1, 200, 128))]),  # past max_seq_len
    ]
    for ex, inputs in bad:
        # the request claims exactly this input's length, so the shard's own checks answer
        shape = inputs[0].shape
        ex.begin_request(1, int(shape[1]) if len(shape) > 1 else 1, 1)
        with pytest.raises(ForwardFailed):
            ex.forward(1, 0, inputs)
    assert second.shard.past_len == 0
    f32 = Tensor("hidden_states", DType.F32, (1, 2, 128), np.zeros((1, 2, 128), np.float32))
    second.begin_request(1, 2, 1)
    assert second.forward(1, 0, [cache_clear_sentinel(), f32])[0].shape == (1, 301)
