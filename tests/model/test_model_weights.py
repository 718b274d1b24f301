"""Shard loading from model.safetensors: what is read, errors, weight hashes."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from cmlp.errors import ModelError
from cmlp.model import Gpt2Config, Gpt2Shard
from cmlp.model import weights as weights_mod
from cmlp.model.synthetic import write_model
from cmlp.model.weights import detect_prefix, load_shard_weights, shard_tensor_shapes

CONFIG = Gpt2Config(vocab_size=100, n_positions=16, n_embd=16, n_layer=4, n_head=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("w") / "m", CONFIG, seed=3, std=0.1, ln_std=0.1, bias_std=0.1)


@pytest.fixture
def broken(model_dir, tmp_path):
    """A copy of the model whose tensors (or config) a test edits."""

    def make(edit_tensors=None, edit_config=None, prefix=""):
        tensors = load_file(str(model_dir / "model.safetensors"))
        if edit_tensors:
            edit_tensors(tensors)
        out = tmp_path / "broken"
        out.mkdir(exist_ok=True)
        save_file(
            {prefix + k: v for k, v in tensors.items()},
            str(out / "model.safetensors"),
            metadata={"format": "pt"},
        )
        config = json.loads((model_dir / "config.json").read_text())
        if edit_config:
            edit_config(config)
        (out / "config.json").write_text(json.dumps(config))
        return out

    return make


def file_hashes(path, prefix=""):
    tensors = load_file(str(path))
    return {k[len(prefix) :]: hashlib.sha256(v.tobytes()).hexdigest() for k, v in tensors.items()}


# ---------------------------------------------------------------------------
# What a shard holds
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "start,end,extra",
    [
        (0, 4, {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"}),
        (0, 2, {"wte.weight", "wpe.weight"}),
        (1, 3, set()),
        (3, 4, {"wte.weight", "ln_f.weight", "ln_f.bias"}),
    ],
)
def test_shard_holds_exactly_its_tensors(model_dir, start, end, extra):
    w = load_shard_weights(model_dir, CONFIG, start, end)
    blocks = {f"h.{i}.{n}" for i in range(start, end) for n in weights_mod.BLOCK_TENSORS}
    assert set(w.tensors) == blocks | extra
    assert not any(re.fullmatch(r"h\.\d+\.attn\.bias", name) for name in w.tensors)
    assert all(t.dtype == np.float32 and t.flags.c_contiguous for t in w.tensors.values())
    assert all(t.ctypes.data % 64 == 0 for t in w.tensors.values())


def test_only_the_shard_tensors_are_read(model_dir, monkeypatch):
    read = []
    real = weights_mod._safe_open

    class Spy:
        def __init__(self, path):
            self.f = real(path)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def get_slice(self, name):
            read.append(name)
            return self.inner.get_slice(name)

    monkeypatch.setattr(weights_mod, "_safe_open", Spy)
    load_shard_weights(model_dir, CONFIG, 1, 2)
    assert {n.split(".")[1] for n in read} == {"1"}


def test_conv1d_weights_are_kept_as_stored(model_dir):
    w = load_shard_weights(model_dir, CONFIG, 0, 1)
    stored = load_file(str(model_dir / "model.safetensors"))
    for name in ("h.0.attn.c_attn.weight", "h.0.mlp.c_proj.weight", "wte.weight"):
        np.testing.assert_array_equal(w.tensors[name], stored[name])
    assert w.tensors["h.0.attn.c_attn.weight"].shape == (16, 48)  # [in, out]


def test_weight_bytes(model_dir):
    shard = Gpt2Shard.load(model_dir, 0, 4, threads=1)
    shapes = shard_tensor_shapes(CONFIG, 0, 4)
    assert shard.weight_bytes == 4 * sum(int(np.prod(s)) for s in shapes.values())


# ---------------------------------------------------------------------------
# Weight hashes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("start,end", [(0, 4), (0, 1), (1, 3), (2, 4)])
def test_weight_hashes_match_hashlib_over_the_file(model_dir, start, end):
    shard = Gpt2Shard.load(model_dir, start, end, threads=1)
    hashes = shard.weight_hashes()
    names = [name for name, _ in hashes]
    assert names == sorted(shard_tensor_shapes(CONFIG, start, end))  # canonical order
    expected = file_hashes(model_dir / "model.safetensors")
    assert hashes == [(name, expected[name]) for name in names]
    assert names.count("wte.weight") <= 1


def test_prefixed_file_gives_the_same_names_and_hashes(model_dir, broken):
    prefixed = broken(prefix="transformer.")
    assert Gpt2Shard.load(prefixed, 0, 4).weight_hashes() == Gpt2Shard.load(model_dir, 0, 4).weight_hashes()


def test_prefix_detection():
    assert detect_prefix(["transformer.wte.weight", "lm_head.weight"]) == "transformer."
    assert detect_prefix(["h.0.ln_1.weight"]) == ""
    assert detect_prefix(["lm_head.weight", "wpe.weight"]) == ""
    assert detect_prefix(["something.else"]) == "transformer."
    assert detect_prefix([]) == "transformer."


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_missing_tensor_is_named(broken):
    d = broken(lambda t: t.pop("h.2.mlp.c_fc.bias"))
    with pytest.raises(ModelError, match=r"missing tensor h\.2\.mlp\.c_fc\.bias"):
        Gpt2Shard.load(d, 2, 3)
    Gpt2Shard.load(d, 0, 2)  # a shard that does not need it loads fine


def test_missing_prefixed_tensor_is_named_with_its_prefix(broken):
    d = broken(lambda t: t.pop("ln_f.bias"), prefix="transformer.")
    with pytest.raises(ModelError, match=r"missing tensor transformer\.ln_f\.bias"):
        Gpt2Shard.load(d, 3, 4)


def test_wrong_shape_is_named(broken):
    def edit(t):
        t["h.1.attn.c_attn.weight"] = np.zeros((48, 16), np.float32)  # transposed

    with pytest.raises(
        ModelError,
        match=r"h\.1\.attn\.c_attn\.weight has shape \[48, 16\], "
        r"expected \[16, 48\]",
    ):
        Gpt2Shard.load(broken(edit), 0, 4)


def test_wrong_dtype_is_named(broken):
    def edit(t):
        t["wpe.weight"] = t["wpe.weight"].astype(np.float16)

    with pytest.raises(ModelError, match=r"wpe\.weight has dtype F16, expected F32"):
        Gpt2Shard.load(broken(edit), 0, 1)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("n_embd", 32, r"wte\.weight has shape \[100, 16\], expected \[100, 32\]"),
        ("vocab_size", 101, r"wte\.weight has shape \[100, 16\], expected \[101, 16\]"),
        ("n_positions", 32, r"wpe\.weight has shape"),
        ("n_layer", 3, r"holds block h\.3 but config n_layer is 3"),
        ("n_layer", 5, r"missing tensor h\.4\."),
    ],
)
def test_config_that_does_not_match_the_file(broken, key, value, match):
    d = broken(edit_config=lambda c: c.update({key: value}))
    with pytest.raises(ModelError, match=match):
        Gpt2Shard.load(d, 0, json.loads((d / "config.json").read_text())["n_layer"])


@pytest.mark.parametrize("start,end", [(2, 1), (1, 1), (-1, 2), (0, 5), (0, 1.5), (True, 2)])
def test_bad_layer_ranges(model_dir, start, end):
    with pytest.raises(ModelError, match="layer range"):
        Gpt2Shard.load(model_dir, start, end)


def test_truncated_file(model_dir, tmp_path):
    for cut in (1, 1000, 10_000):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / "config.json").write_bytes((model_dir / "config.json").read_bytes())
        data = (model_dir / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[:-cut])
        with pytest.raises(ModelError, match="model.safetensors"):
            Gpt2Shard.load(d, 0, 4)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b"",
        lambda b: b[:5],
        lambda b: (2**62).to_bytes(8, "little") + b[8:],  # absurd header length
        lambda b: b[:8] + b"{" * 40 + b[48:],  # broken JSON header
        lambda b: b.replace(b'"F32"', b'"Q99"', 1),  # unknown dtype
    ],
)
def test_corrupted_file(model_dir, tmp_path, corrupt):
    (tmp_path / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    (tmp_path / "model.safetensors").write_bytes(corrupt((model_dir / "model.safetensors").read_bytes()))
    with pytest.raises(ModelError):
        Gpt2Shard.load(tmp_path, 0, 4)


def test_missing_files(model_dir, tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        Gpt2Shard.load(tmp_path, 0, 1)
    (tmp_path / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    with pytest.raises(ModelError, match="model.safetensors: weights file not found"):
        Gpt2Shard.load(tmp_path, 0, 1)


def test_shard_rss_stays_close_to_its_weights(tmp_path):
    """Optional memory check: steady RSS growth <= 1.25x the weights held."""
    config = Gpt2Config(vocab_size=50257, n_positions=1024, n_embd=256, n_layer=4, n_head=4)
    model = write_model(tmp_path / "m", config, seed=1)
    script = textwrap.dedent(f"""
        import numpy as np
        from cmlp.model import Gpt2Shard
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) * 1024
        before = rss()
        shard = Gpt2Shard.load({str(model)!r}, 0, 4, threads=2)
        shard.forward(np.arange(8, dtype=np.uint32)[None])
        for _ in range(8):
            shard.forward(np.array([[1]], np.uint32))
        print((rss() - before) / shard.weight_bytes)
    """)
    ratio = float(subprocess.check_output([sys.executable, "-c", script], text=True))
    assert ratio <= 1.25, f"RSS grew by {ratio:.2f}x the weight bytes"
