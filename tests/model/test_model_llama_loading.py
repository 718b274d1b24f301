"""Loading llama/qwen2 checkpoints: layouts, dtypes kept as stored, and clear errors.

Every broken checkpoint must raise ModelError naming the file and (where there
is one) the tensor, before any tensor data is trusted.
"""

import json
import struct

import numpy as np
import pytest

from cmlp.errors import ModelError
from cmlp.model.llama.config import load_config
from cmlp.model.llama.synthetic import PRESETS, write_model
from cmlp.model.llama.weights import load_shard_weights, shard_tensor_shapes
from cmlp.model.registry import check_model_name, detect_family, load_shard
from cmlp.model.safetensors_io import (
    INDEX_FILE,
    SINGLE_FILE,
    Checkpoint,
    write_safetensors,
)

TINY = PRESETS["llama"]["tiny"]
Q_PROJ = "model.layers.1.self_attn.q_proj.weight"


@pytest.fixture
def single(tmp_path):
    return write_model(tmp_path / "single", "llama", TINY, std=0.1)


@pytest.fixture
def sharded(tmp_path):
    return write_model(tmp_path / "sharded", "llama", TINY, std=0.1, shard_bytes=60000)


def rewrite(model_dir, file, change):
    """Rewrite one .safetensors file with change(dict name -> (dtype, array))."""
    ckpt = Checkpoint(model_dir)
    infos = {n: ckpt.info(n) for n, f in ckpt.weight_map.items() if f == file}
    tensors = {n: (i.dtype, ckpt.read(i)) for n, i in infos.items()}
    change(tensors)
    write_safetensors(model_dir / file, [(n, d, a.shape, lambda a=a: a) for n, (d, a) in tensors.items()])


def test_sharded_equals_single(single, sharded):
    assert (sharded / INDEX_FILE).is_file() and not (sharded / SINGLE_FILE).exists()
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 2
    ids = np.array([[1, 2, 3, 300]])
    a = load_shard(single, 0, 4, threads=1).forward(ids).copy()
    b = load_shard(sharded, 0, 4, threads=1).forward(ids).copy()
    assert np.array_equal(a, b)
    assert (
        load_shard(single, 1, 3, threads=1).weight_hashes()
        == load_shard(sharded, 1, 3, threads=1).weight_hashes()
    )


@pytest.mark.parametrize("dtype,itemsize", [("fp32", 4), ("bf16", 2), ("fp16", 2)])
def test_weights_kept_in_stored_dtype(tmp_path, dtype, itemsize):
    d = write_model(tmp_path / dtype, "llama", TINY, dtype=dtype)
    cfg = load_config(d)
    w = load_shard_weights(d, cfg, 0, 4)
    stored = sum(int(np.prod(s)) for s in shard_tensor_shapes(cfg, 0, 4).values()) * itemsize
    assert w.stored_bytes == stored
    assert sum(t.nbytes for t in w.tensors.values()) == stored  # no float32 copy held
    assert w.tensors[Q_PROJ].dtype == {"fp32": np.float32, "bf16": np.uint16, "fp16": np.float16}[dtype]
    assert load_shard(d, 2, 4, threads=1).wire_dtype == ("BF16" if dtype == "bf16" else "F32")


def test_only_the_shard_tensors_are_read(sharded):
    w = load_shard_weights(sharded, load_config(sharded), 1, 3)
    assert set(w.tensors) == set(shard_tensor_shapes(load_config(sharded), 1, 3))
    assert not any(n.startswith(("model.layers.0.", "model.layers.3.")) for n in w.tensors)


def test_corrupted_index(sharded):
    (sharded / INDEX_FILE).write_text("{not json")
    with pytest.raises(ModelError, match=f"{INDEX_FILE}: corrupt index"):
        load_shard(sharded, 0, 4)
    (sharded / INDEX_FILE).write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ModelError, match="no weight_map"):
        load_shard(sharded, 0, 4)
    (sharded / INDEX_FILE).write_text(json.dumps({"weight_map": {Q_PROJ: "../../etc/passwd"}}))
    with pytest.raises(ModelError, match=f"tensor {Q_PROJ} maps to '../../etc/passwd'"):
        load_shard(sharded, 0, 4)


def test_missing_shard(sharded):
    index = json.loads((sharded / INDEX_FILE).read_text())
    file = index["weight_map"][Q_PROJ]
    (sharded / file).unlink()
    with pytest.raises(ModelError, match=f"{INDEX_FILE}: shard {file} is missing"):
        load_shard(sharded, 0, 4)


def test_tensor_missing_from_its_shard(sharded):
    index = json.loads((sharded / INDEX_FILE).read_text())
    file = index["weight_map"][Q_PROJ]
    rewrite(sharded, file, lambda t: t.pop(Q_PROJ))
    with pytest.raises(ModelError, match=f"{file}: missing tensor {Q_PROJ}"):
        load_shard(sharded, 0, 4)


def test_tensor_missing_from_the_index(sharded):
    index = json.loads((sharded / INDEX_FILE).read_text())
    del index["weight_map"][Q_PROJ]
    (sharded / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ModelError, match=f"{INDEX_FILE}: missing tensor {Q_PROJ}"):
        load_shard(sharded, 0, 4)
    load_shard(sharded, 2, 4, threads=1)  # a shard that does not need it still loads


def test_wrong_dtype(single):
    rewrite(single, SINGLE_FILE, lambda t: t.update({Q_PROJ: ("F64", t[Q_PROJ][1].astype(np.float64))}))
    with pytest.raises(
        ModelError, match=f"{SINGLE_FILE}: tensor {Q_PROJ} has dtype F64, expected F32 or BF16 or F16"
    ):
        load_shard(single, 0, 4)


def test_wrong_shape(single):
    rewrite(single, SINGLE_FILE, lambda t: t.update({Q_PROJ: ("F32", t[Q_PROJ][1][:-1].copy())}))
    with pytest.raises(
        ModelError,
        match=rf"{SINGLE_FILE}: tensor {Q_PROJ} has shape \[63, 64\], "
        r"expected \[64, 64\]",
    ):
        load_shard(single, 0, 4)


def test_more_layers_than_config(single):
    rewrite(
        single,
        SINGLE_FILE,
        lambda t: t.update({"model.layers.7.mlp.up_proj.weight": t["model.layers.0.mlp.up_proj.weight"]}),
    )
    with pytest.raises(ModelError, match="holds model.layers.7 but config num_hidden_layers is 4"):
        load_shard(single, 0, 4)


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda b: b[: len(b) // 2], "outside the file"),  # truncated data
        (lambda b: struct.pack("<Q", 1 << 40) + b[8:], "corrupt safetensors header length"),
        (lambda b: b[:8] + b"\xff" * 16 + b[24:], "corrupt safetensors header"),
        (lambda b: b"\x01", "shorter than 8 bytes"),
    ],
)
def test_corrupt_file(single, mutate, fragment):
    path = single / SINGLE_FILE
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(ModelError, match=fragment) as info:
        load_shard(single, 0, 4)
    assert str(path) in str(info.value)


def test_header_lying_about_sizes(single):
    """data_offsets that disagree with dtype x shape are refused before any read."""
    path = single / SINGLE_FILE
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header[Q_PROJ]["shape"] = [64, 65]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text)) if len(text) <= n else b""
    assert len(text) == n
    path.write_bytes(raw[:8] + text + raw[8 + n :])
    with pytest.raises(ModelError, match=f"tensor {Q_PROJ}: 16384 data bytes for F32"):
        load_shard(single, 0, 4)


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads"),
        ({"hidden_act": "gelu"}, "unsupported hidden_act"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope_scaling type"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
        ({"vocab_size": -1}, "vocab_size must be a positive integer"),
        ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "unsupported model"),
    ],
)
def test_config_errors(single, change, fragment):
    cfg = json.loads((single / "config.json").read_text())
    cfg.update(change)
    (single / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=fragment) as info:
        load_shard(single, 0, 4)
    assert "config.json" in str(info.value)


def test_family_detection(tmp_path, single):
    assert detect_family(single) == "llama"
    q = write_model(tmp_path / "q", "qwen2", PRESETS["qwen2"]["tiny"])
    assert detect_family(q) == "qwen2"
    cfg = json.loads((q / "config.json").read_text())
    del cfg["model_type"]  # architectures alone also tell
    (q / "config.json").write_text(json.dumps(cfg))
    assert detect_family(q) == "qwen2"


@pytest.mark.parametrize(
    "name,family,ok",
    [
        ("HuggingFaceTB/SmolLM2-135M", "llama", True),
        ("meta-llama/Llama-3.2-1B", "llama", True),
        ("Qwen/Qwen2.5-0.5B", "qwen2", True),
        ("gpt2", "gpt2", True),
        ("my-finetune", "qwen2", True),
        ("gpt2", "llama", False),
        ("Qwen/Qwen2.5-0.5B", "llama", False),
        ("SmolLM2", "gpt2", False),
    ],
)
def test_model_name_check(name, family, ok):
    if ok:
        check_model_name(name, family)
    else:
        with pytest.raises(ModelError, match="names the"):
            check_model_name(name, family)


def test_random_corruption_is_always_a_model_error(tmp_path):
    """Seeded byte flips, truncations and header splices: ModelError or a clean load."""
    good = write_model(tmp_path / "good", "llama", dict(TINY, num_hidden_layers=1), std=0.1)
    raw = (good / SINGLE_FILE).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    rng = np.random.default_rng(7)
    d = tmp_path / "bad"
    d.mkdir()
    (d / "config.json").write_bytes((good / "config.json").read_bytes())
    for _ in range(200):
        data = bytearray(raw)
        kind = rng.integers(3)
        if kind == 0:  # flip bytes in the header
            for pos in rng.integers(0, 8 + n, rng.integers(1, 4)):
                data[pos] ^= int(rng.integers(1, 256))
        elif kind == 1:  # truncate anywhere
            data = data[: int(rng.integers(0, len(data)))]
        else:  # a lying header length
            data[:8] = struct.pack("<Q", int(rng.integers(0, 2**63)))
        (d / SINGLE_FILE).write_bytes(bytes(data))
        try:
            load_shard(d, 0, 1, threads=1)
        except ModelError as exc:
            assert SINGLE_FILE in str(exc) or "config.json" in str(exc)
