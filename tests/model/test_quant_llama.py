"""llama/qwen2 on the tuned weight kernels: int8 checkpoints from ``cmlp model
quantize`` against transformers running the dequantized weights, bf16 through
every forced ISA path, int8 loader refusals, quantize on a sharded checkpoint.

Bounds: bf16 weights keep fp32 activations on every path (WK_FP32_ACT), so
only summation order differs from transformers in float32 on the upcast
weights: 1e-4 as tests/test_model_llama_parity.py.  int8: transformers runs
q * scale in float32.  Our generic/avx2/avx512 int8 paths keep fp32
activations (measured max logit diff <= 1.8e-5, bound 1e-4); avx512vnni and
avx512bf16 round activations to int16 per row (relative 2^-16 of the row max)
for vpdpwssd: measured max 2.5e-3 on logits of magnitude <= 6.3 (qwen2 case),
bound 5e-3.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file

from cmlp import _wkernels as wk
from cmlp.errors import ModelError
from cmlp.model.llama.engine import LlamaShard
from cmlp.model.quant import LINEAR, dequantize_int8
from cmlp.model.quantize import quantize_model
from cmlp.model.safetensors_io import STORAGE, read_header, read_into
from tests.helpers.llama_helpers import Case, Chain, build_hf_model, hf_logits, save
from tests.helpers.model import layer_partitions

BF16_ATOL = 1e-4
I8_ATOL_FP32_ACT = 1e-4
I8_ATOL_VNNI = 5e-3
PROMPT = [5, 17, 250, 3, 99, 42]
LONG_PROMPT = list(range(7, 7 + 3 * 13, 3))  # 13 rows: the tiled prefill path
GREEDY = 12
ISAS = ["generic", "avx2", "avx512", "avx512vnni", "avx512bf16"]

TIED = Case(
    "llama-gqa3-tied",
    "llama",
    dict(num_key_value_heads=1, num_attention_heads=3, tie_word_embeddings=True, rope_theta=500000.0),
    seed=1,
)
QWEN = Case(
    "qwen2-gqa2-untied-bias",
    "qwen2",
    dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=333),
    seed=5,
)


def i8_atol():
    return I8_ATOL_VNNI if wk.isa_active() in ("avx512vnni", "avx512bf16") else I8_ATOL_FP32_ACT


def raw_tensors(path):
    """Every tensor of one .safetensors file in its storage dtype (BF16 as uint16)."""
    header, _ = read_header(path)
    return {n: read_into(path, n, np.empty(e["shape"], STORAGE[e["dtype"]])) for n, e in header.items()}


def dequantized_reference(case, q_dir):
    """transformers float32 holding exactly q * scale for every int8 matrix of q_dir."""
    tensors = load_file(str(q_dir / "model.safetensors"))
    state = {}
    for name, arr in tensors.items():
        if name.endswith("_scale"):
            continue
        if arr.dtype == np.int8:
            arr = dequantize_int8(arr, tensors[name + "_scale"], LINEAR)
        state[name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    reference = build_hf_model(case)
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
    if case.kwargs.get("tie_word_embeddings"):
        reference.tie_weights()
    return reference


def max_diff(chain, reference, prompt=PROMPT):
    ids, logits = chain.greedy(prompt, GREEDY)
    ref = hf_logits(reference, prompt + ids[:-1])[len(prompt) - 1 :]
    assert ids == [int(i) for i in ref.argmax(axis=1)]
    return float(np.abs(logits - ref).max())


@pytest.fixture(scope="module", params=[TIED, QWEN], ids=lambda c: c.name)
def int8_model(request, tmp_path_factory):
    case = request.param
    root = tmp_path_factory.mktemp(case.name)
    save(build_hf_model(case), root / "f32")
    q_dir = quantize_model(root / "f32", root / "i8", "int8")
    return case, q_dir, dequantized_reference(case, q_dir)


def test_int8_checkpoint_layout(int8_model):
    case, q_dir, _ = int8_model
    tensors = load_file(str(q_dir / "model.safetensors"))
    qc = json.loads((q_dir / "config.json").read_text())["quantization_config"]
    assert qc["weight_dtype"] == "int8" and qc["weight_layout"] == "out_in"
    for name, arr in tensors.items():
        if name.endswith("_scale"):
            continue
        is_matrix = name.endswith("_proj.weight") or name in ("model.embed_tokens.weight", "lm_head.weight")
        assert (arr.dtype == np.int8) == is_matrix, name
        if is_matrix:
            assert tensors[name + "_scale"].dtype == np.float32
            assert tensors[name + "_scale"].shape == (arr.shape[0],)
        else:
            assert arr.dtype == np.float32, name  # norms, biases stay float
    assert ("lm_head.weight" in tensors) != bool(case.kwargs.get("tie_word_embeddings"))


def test_int8_matches_dequantized_transformers(int8_model):
    case, q_dir, reference = int8_model
    chain = Chain(q_dir, [(0, 4)])
    assert chain.shards[0].weight_bytes < 0.3 * sum(p.numel() * 4 for p in reference.parameters())
    assert max_diff(chain, reference) <= i8_atol()
    assert max_diff(chain, reference, LONG_PROMPT) <= i8_atol()
    ids = np.random.default_rng(0).integers(0, 301, (3, 9))
    with torch.no_grad():
        ref = reference(torch.as_tensor(ids, dtype=torch.long)).logits[:, -1].numpy()
    chain.clear_cache()
    assert float(np.abs(chain.forward(ids) - ref).max()) <= i8_atol()


# fast tier: one cut per model; every cut is slow
@pytest.mark.fast_cases("llama-gqa3-tied-0-1+1-3+3-4", "qwen2-gqa2-untied-bias-0-2+2-4")
@pytest.mark.parametrize(
    "splits", [s for s in layer_partitions(4) if len(s) > 1], ids=lambda s: "+".join(f"{a}-{b}" for a, b in s)
)
def test_int8_every_cut(int8_model, splits):
    case, q_dir, reference = int8_model
    assert max_diff(Chain(q_dir, splits), reference) <= i8_atol()


@pytest.fixture
def forced_isa(request):
    names = wk.isa_names()
    if names.index(request.param) > names.index(wk.isa_detected()):
        pytest.skip(f"this CPU cannot run {request.param} (best: {wk.isa_detected()})")
    before = wk.isa_active()
    wk.set_isa(request.param)
    yield request.param
    wk.set_isa(before)


@pytest.fixture(scope="module")
def bf16_and_i8(tmp_path_factory):
    root = tmp_path_factory.mktemp("isa")
    model = build_hf_model(QWEN)
    save(model, root / "f32")
    bf16 = quantize_model(root / "f32", root / "bf16", "bf16")
    reference = build_hf_model(QWEN)  # float32 on the bf16 weights, upcast exactly
    reference.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()})
    i8 = quantize_model(root / "f32", root / "i8", "int8")
    return bf16, reference, i8, dequantized_reference(QWEN, i8)


# fast tier: the portable path and the widest one; tests/model/test_wkernels.py covers every ISA fast
@pytest.mark.fast_cases("generic", "avx512bf16")
@pytest.mark.parametrize("forced_isa", ISAS, indirect=True)
def test_every_isa_path(bf16_and_i8, forced_isa):
    bf16, bf16_ref, i8, i8_ref = bf16_and_i8
    assert wk.isa_active() == forced_isa
    for d, ref, atol in ((bf16, bf16_ref, BF16_ATOL), (i8, i8_ref, i8_atol())):
        chain = Chain(d, [(0, 2), (2, 4)])
        for prompt in (PROMPT, LONG_PROMPT):  # slab (<= 8 rows) and tiled prefill
            assert max_diff(chain, ref, prompt) <= atol, (forced_isa, d.name)
        ids = np.random.default_rng(1).integers(0, 301, (4, 1))  # batched decode rows
        chain.clear_cache()
        with torch.no_grad():
            want = ref(torch.as_tensor(ids, dtype=torch.long)).logits[:, -1].numpy()
        assert float(np.abs(chain.forward(ids) - want).max()) <= atol, (forced_isa, d.name)


# ---- loader refusals -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_i8(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    save(build_hf_model(TIED), root / "f32")
    return quantize_model(root / "f32", root / "i8", "int8")


def _variant(src, dst, edit_tensors=None, edit_config=None):
    dst.mkdir()
    tensors = load_file(str(src / "model.safetensors"))
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    if edit_config:
        edit_config(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


Q = "model.layers.1.self_attn.q_proj.weight"


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda t: t.pop(Q + "_scale"), f"missing tensor {Q}_scale"),
        (lambda t: t.update({Q + "_scale": t[Q + "_scale"].astype(np.float16)}), "dtype F16"),
        (lambda t: t.update({Q + "_scale": t[Q + "_scale"][:-1].copy()}), "shape"),
        (lambda t: t.update({Q: t[Q].astype(np.float32)}), "dtype F32, expected I8"),
        (lambda t: t.update({Q: t[Q][:, :-1].copy()}), "shape"),
        (
            lambda t: t.update({"model.embed_tokens.weight": t["model.embed_tokens.weight"].view(np.uint8)}),
            "dtype U8",
        ),
    ],
    ids=["no-scale", "scale-f16", "scale-shape", "matrix-f32", "matrix-shape", "embed-u8"],
)
def test_int8_loader_refuses(small_i8, tmp_path, edit, message):
    bad = _variant(small_i8, tmp_path / "bad", edit_tensors=edit)
    with pytest.raises(ModelError, match=message):
        LlamaShard.load(bad, 0, 4)


@pytest.mark.parametrize(
    "qc",
    [
        {"quant_method": "gptq", "bits": 4},
        {
            "quant_method": "cmlp",
            "weight_dtype": "int4",
            "granularity": "per_channel",
            "scale_suffix": "_scale",
            "weight_layout": "out_in",
        },
        "int8",
    ],
)
def test_foreign_quantization_config_refused(small_i8, tmp_path, qc):
    bad = _variant(small_i8, tmp_path / "bad", edit_config=lambda c: c.update(quantization_config=qc))
    with pytest.raises(ModelError, match="quantization_config"):
        LlamaShard.load(bad, 0, 4)


def test_int8_tensors_without_quantization_config_refused(small_i8, tmp_path):
    bad = _variant(small_i8, tmp_path / "bad", edit_config=lambda c: c.pop("quantization_config"))
    with pytest.raises(ModelError, match="dtype I8"):
        LlamaShard.load(bad, 0, 4)


# ---- quantize ------------------------------------------------------------------------------


def test_quantize_sharded_checkpoint(tmp_path):
    model = build_hf_model(QWEN)
    save(model, tmp_path / "single")
    save(model, tmp_path / "sharded", max_shard_size="200KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 2
    for dtype in ("int8", "bf16"):
        a = quantize_model(tmp_path / "single", tmp_path / f"single-{dtype}", dtype)
        b = quantize_model(tmp_path / "sharded", tmp_path / f"sharded-{dtype}", dtype)
        ta, tb = raw_tensors(a / "model.safetensors"), raw_tensors(b / "model.safetensors")
        assert sorted(ta) == sorted(tb)
        assert all(np.array_equal(ta[n], tb[n]) for n in ta), dtype
        out_a = Chain(a, [(0, 4)]).forward([PROMPT])
        out_b = Chain(b, [(0, 1), (1, 4)]).forward([PROMPT])
        assert np.array_equal(out_a, out_b), dtype


def test_quantize_refuses_unknown_family(tmp_path):
    save(build_hf_model(TIED), tmp_path / "f32")
    config = json.loads((tmp_path / "f32" / "config.json").read_text())
    config["model_type"] = "mistral"
    (tmp_path / "f32" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="cannot quantize model_type 'mistral'"):
        quantize_model(tmp_path / "f32", tmp_path / "out", "int8")


def test_cli_quantize_llama(tmp_path, capsys):
    from cmlp.cli.main import main as cli_main

    model = build_hf_model(TIED)
    save(model, tmp_path / "f32", max_shard_size="200KB")
    rc = cli_main(
        ["model", "quantize", "--in", str(tmp_path / "f32"), "--out", str(tmp_path / "i8"), "--dtype", "int8"]
    )
    assert rc in (0, None)
    shard = LlamaShard.load(tmp_path / "i8", 0, 4)
    assert any(n.endswith("_scale") for n, _ in shard.weight_hashes())  # manifests cover scales
    reference = dequantized_reference(TIED, tmp_path / "i8")
    assert max_diff(Chain(tmp_path / "i8", [(0, 2), (2, 4)]), reference) <= i8_atol()
