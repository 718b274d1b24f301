"""`cmlp model quantize` end to end: files, loader, engine parity, quality.

Parity is against Hugging Face transformers in fp32 on the same stored
weights: the bf16 checkpoint is loaded by transformers itself (it is a
plain HF bf16 checkpoint); the int8 one through an fp32 checkpoint holding
exactly q * scale.  Quality (logit error, perplexity) is against the
unquantized model on cmlp.model.quant_eval.FIXED_TEXT.
"""

import json
import struct

import numpy as np
import pytest

from cmlp.cli.main import main as cli_main
from cmlp.errors import ModelError
from cmlp.model import quant
from cmlp.model.engine import Gpt2Shard
from cmlp.model.quant_eval import compare, fixed_ids
from cmlp.model.quantize import quantize_model
from cmlp.model.safetensors_io import read_header
from tests.helpers.model import PARITY, WIDE, HfSession, load_hf_model

N_LAYER = PARITY.config.n_layer


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("quant")
    ref = PARITY.write(base / "fp32")
    return {
        "fp32": ref,
        "int8": quantize_model(ref, base / "int8", "int8"),
        "bf16": quantize_model(ref, base / "bf16", "bf16"),
    }


def test_int8_files_and_config(models):
    config = json.loads((models["int8"] / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "cmlp" and qc["weight_dtype"] == "int8"
    assert qc["granularity"] == "per_channel" and qc["scale_suffix"] == "_scale"
    assert qc["weight_layout"] == "out_in"
    header, _ = read_header(models["int8"] / "model.safetensors")
    C = PARITY.config.n_embd
    assert header["h.0.attn.c_attn.weight"]["dtype"] == "I8"
    assert header["h.0.attn.c_attn.weight"]["shape"] == [3 * C, C]  # [out, in]
    assert header["h.0.attn.c_attn.weight_scale"] == {
        **header["h.0.attn.c_attn.weight_scale"],
        "dtype": "F32",
        "shape": [3 * C],
    }
    assert header["wte.weight"]["dtype"] == "I8"
    assert header["wte.weight_scale"]["shape"] == [PARITY.config.vocab_size]
    assert header["h.0.ln_1.weight"]["dtype"] == "F32"
    assert header["wpe.weight"]["dtype"] == "F32"
    assert sorted(qc["modules"]) == sorted(n for n, e in header.items() if e["dtype"] == "I8")
    # the library itself reads our file
    from safetensors import safe_open

    with safe_open(str(models["int8"] / "model.safetensors"), "numpy") as f:
        assert f.get_tensor("h.1.mlp.c_fc.weight").dtype == np.int8


def test_bf16_files_and_config(models):
    config = json.loads((models["bf16"] / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and "quantization_config" not in config
    header, _ = read_header(models["bf16"] / "model.safetensors")
    assert {e["dtype"] for e in header.values()} == {"BF16"}
    assert (models["bf16"] / "tokenizer.json").exists() == (models["fp32"] / "tokenizer.json").exists()


@pytest.mark.parametrize("dtype,stored", [("int8", "i8"), ("bf16", "bf16")])
def test_loader_holds_stored_dtype(models, dtype, stored):
    shard = Gpt2Shard.load(models[dtype], 0, N_LAYER, threads=1)
    ref = Gpt2Shard.load(models["fp32"], 0, N_LAYER, threads=1)
    assert shard.weight_dtype == stored
    assert ref.weight_dtype == "f32"
    assert shard.weight_bytes < ref.weight_bytes * (0.4 if dtype == "int8" else 0.55)  # wpe, norms stay fp32


def test_hashes_cover_stored_tensors_and_scales(models, capsys):
    assert (
        cli_main(
            [
                "model",
                "hashes",
                "--model-dir",
                str(models["int8"]),
                "--layers",
                f"0:{N_LAYER}",
                "--with-names",
            ]
        )
        == 0
    )
    names = [line.split()[1] for line in capsys.readouterr().out.splitlines()]
    assert "h.0.attn.c_attn.weight_scale" in names and "wte.weight_scale" in names
    assert names == sorted(names)
    shard = Gpt2Shard.load(models["int8"], 0, N_LAYER, threads=1)
    assert [n for n, _ in shard.weight_hashes()] == names


def test_quantize_cli(models, tmp_path, capsys):
    out = tmp_path / "q"
    assert (
        cli_main(["model", "quantize", "--in", str(models["fp32"]), "--out", str(out), "--dtype", "int8"])
        == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    assert (out / "model.safetensors").read_bytes() == (
        models["int8"] / "model.safetensors"
    ).read_bytes()  # deterministic
    # non-empty --out without --force: a clear CLI error, non-zero exit
    assert cli_main(["model", "quantize", "--in", str(models["fp32"]), "--out", str(out)]) != 0
    assert "exists and is not empty" in capsys.readouterr().err


def test_quantize_refuses_bad_input(models, tmp_path):
    with pytest.raises(ModelError, match="already quantized"):
        quantize_model(models["int8"], tmp_path / "again", "int8")
    with pytest.raises(ModelError, match="unknown target dtype"):
        quantize_model(models["fp32"], tmp_path / "x", "int4")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelError, match="no model.safetensors"):
        quantize_model(empty, tmp_path / "y", "int8")


def _rewrite_config(src, dst, **changes):
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            config.pop(k, None)
        else:
            config[k] = v
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_loader_errors_name_the_tensor(models, tmp_path):
    # int8 tensors without the quantization marker: refused, the tensor named
    plain = _rewrite_config(models["int8"], tmp_path / "nomark", quantization_config=None)
    with pytest.raises(ModelError, match=r"tensor wte\.weight has dtype I8, expected F32"):
        Gpt2Shard.load(plain, 0, N_LAYER)
    # a marker cmlp does not implement
    other = _rewrite_config(
        models["fp32"], tmp_path / "gptq", quantization_config={"quant_method": "gptq", "bits": 4}
    )
    with pytest.raises(ModelError, match="unsupported quantization_config"):
        Gpt2Shard.load(other, 0, N_LAYER)
    # the marker on fp32 tensors: scales missing
    fake = _rewrite_config(
        models["fp32"],
        tmp_path / "fake",
        quantization_config=json.loads((models["int8"] / "config.json").read_text())["quantization_config"],
    )
    with pytest.raises(ModelError, match=r"expected I8|missing tensor .*_scale"):
        Gpt2Shard.load(fake, 0, N_LAYER)


def test_corrupt_bf16_offsets_are_caught(models, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(models["bf16"], bad)
    path = bad / "model.safetensors"
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    begin, end = header["h.0.attn.c_attn.weight"]["data_offsets"]
    header["h.0.attn.c_attn.weight"]["data_offsets"] = [begin, end + 2]  # wrong byte count
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))
    assert len(text) == n
    path.write_bytes(bytes(raw[:8]) + text + bytes(raw[8 + n :]))
    with pytest.raises(ModelError, match="model.safetensors"):
        Gpt2Shard.load(bad, 0, N_LAYER)  # the library's check
    with pytest.raises(ModelError, match=r"tensor h\.0\.attn\.c_attn\.weight: \d+ data bytes for BF16"):
        read_header(path)  # and the raw BF16 reader's own


# ---- parity with transformers --------------------------------------------------------


def _hf_dequantized_int8(int8_dir, fp32_dir, out_dir):
    """An fp32 HF checkpoint holding exactly q * scale (what cmlp int8 computes with)."""
    import shutil

    from safetensors import safe_open
    from safetensors.numpy import save_file

    shutil.copytree(fp32_dir, out_dir)
    tensors = {}
    with safe_open(str(int8_dir / "model.safetensors"), "numpy") as f:
        for name in f.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
            if name.endswith("_scale"):
                continue
            t = f.get_tensor(name)
            if t.dtype == np.int8:  # stored [out, in]: back to HF's Conv1D [in, out]
                t = quant.dequantize_int8(t, f.get_tensor(name + "_scale"), quant.LINEAR)
                if name != "wte.weight":
                    t = np.ascontiguousarray(t.T)
            tensors[name] = t
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


# bf16, batch 1: fp32 activations on every path, only fp32 rounding differs.
# int8: on AVX-512 VNNI CPUs the activations are rounded to int16 per row
# (<= 2^-16 of the row max per element); elsewhere fp32 rounding only.
BOUNDS = {"bf16": 1e-4, "int8": 1e-3}


@pytest.mark.fast_cases("ranges0-bf16", "ranges1-int8")
@pytest.mark.parametrize("dtype", ["bf16", "int8"])
@pytest.mark.parametrize("ranges", [[(0, N_LAYER)], [(0, 1), (1, 3), (3, N_LAYER)]])
def test_parity_with_transformers(models, tmp_path, dtype, ranges):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    hf_dir = (
        models["bf16"]
        if dtype == "bf16"
        else _hf_dequantized_int8(models["int8"], models["fp32"], tmp_path / "hf")
    )
    hf = HfSession(load_hf_model(hf_dir))
    shards = [Gpt2Shard.load(models[dtype], a, b, threads=2) for a, b in ranges]

    def run(ids):
        x = ids
        for s in shards:
            x = s.forward(x)
        return x.copy()

    rng = np.random.default_rng(11)
    prompt = rng.integers(0, PARITY.config.vocab_size, (1, 40)).astype(np.uint32)  # tiled path
    ref, _ = hf.forward(prompt)
    bound = BOUNDS[dtype]
    assert np.abs(run(prompt) - ref).max() <= bound
    ids = []
    for step in range(20):  # decode: the slab kernels
        token = rng.integers(0, PARITY.config.vocab_size, (1, 1)).astype(np.uint32)
        ref, _ = hf.forward(token)
        got = run(token)
        assert np.abs(got - ref).max() <= bound, f"step {step}"
        ids.append((int(got.argmax()), int(ref.argmax())))
    assert sum(a == b for a, b in ids) >= 19


# ---- quality against the unquantized model -------------------------------------------

# rms logit error / logit std, and |perplexity ratio - 1|, on FIXED_TEXT
QUALITY_BOUNDS = {"int8": (0.05, 0.02), "bf16": (0.02, 0.01)}


@pytest.mark.parametrize("spec", [PARITY, WIDE], ids=lambda s: s.name)
@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_quality_cost_is_bounded(tmp_path, spec, dtype):
    ref_dir = spec.write(tmp_path / "fp32")
    q_dir = quantize_model(ref_dir, tmp_path / dtype, dtype)
    n = spec.config.n_layer
    report = compare(
        Gpt2Shard.load(ref_dir, 0, n, threads=2),
        Gpt2Shard.load(q_dir, 0, n, threads=2),
        fixed_ids(spec.config.vocab_size, 100),
    )
    rms_bound, ppl_bound = QUALITY_BOUNDS[dtype]
    assert report.rms_logit_err <= rms_bound * report.ref_logit_std, report.line()
    assert abs(report.ppl_ratio - 1) <= ppl_bound, report.line()
    assert report.top1_agreement >= 0.9, report.line()
    assert report.max_abs_logit_err > 0, "quantization changed nothing: the test cannot fail"


@pytest.fixture
def forced_isa(request):
    from cmlp import _wkernels as wk

    names = wk.isa_names()
    if names.index(request.param) > names.index(wk.isa_detected()):
        pytest.skip(f"CPU has no {request.param}")
    before = wk.isa_active()
    wk.set_isa(request.param)
    yield request.param
    wk.set_isa(before)


# fast tier: the bf16 and VNNI instructions and the portable path; every ISA x dtype is slow
@pytest.mark.fast_cases("bf16-avx512bf16", "int8-generic", "int8-avx512vnni")
@pytest.mark.parametrize(
    "forced_isa", ["generic", "avx2", "avx512", "avx512vnni", "avx512bf16"], indirect=True
)
@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_every_dispatch_path_end_to_end(models, tmp_path, forced_isa, dtype):
    """The whole engine on each forced kernel path against transformers."""
    pytest.importorskip("transformers")
    hf_dir = (
        models["bf16"]
        if dtype == "bf16"
        else _hf_dequantized_int8(models["int8"], models["fp32"], tmp_path / "hf")
    )
    hf = HfSession(load_hf_model(hf_dir))
    shard = Gpt2Shard.load(models[dtype], 0, N_LAYER, threads=2)
    rng = np.random.default_rng(5)
    prompt = rng.integers(0, PARITY.config.vocab_size, (1, 20)).astype(np.uint32)
    ref, _ = hf.forward(prompt)
    assert np.abs(shard.forward(prompt) - ref).max() <= BOUNDS[dtype], forced_isa
    for _ in range(3):
        token = rng.integers(0, PARITY.config.vocab_size, (1, 1)).astype(np.uint32)
        ref, _ = hf.forward(token)
        assert np.abs(shard.forward(token) - ref).max() <= BOUNDS[dtype], forced_isa


def test_fp16_checkpoint_runs_in_fp16(models, tmp_path):
    """An HF checkpoint stored F16 is held as fp16 and matches transformers on it."""
    pytest.importorskip("transformers")
    import shutil

    from safetensors import safe_open
    from safetensors.numpy import save_file

    out = tmp_path / "f16"
    shutil.copytree(models["fp32"], out)
    with safe_open(str(models["fp32"] / "model.safetensors"), "numpy") as f:
        tensors = {name: f.get_tensor(name).astype(np.float16) for name in f.keys()}  # noqa: SIM118
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    shard = Gpt2Shard.load(out, 0, N_LAYER, threads=2)
    assert shard.weight_dtype == "f16"
    hf = HfSession(load_hf_model(out))
    rng = np.random.default_rng(6)
    for ids in (
        rng.integers(0, PARITY.config.vocab_size, (1, 30)),
        rng.integers(0, PARITY.config.vocab_size, (1, 1)),
    ):
        ref, _ = hf.forward(ids.astype(np.uint32))
        assert np.abs(shard.forward(ids.astype(np.uint32)) - ref).max() <= 1e-4
