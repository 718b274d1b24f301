"""`cmlp model init` / `cmlp model hashes` and the synthetic model layout."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from safetensors import safe_open

from cmlp.cli.main import main
from cmlp.errors import ModelError
from cmlp.model import Gpt2Shard, load_config, synthetic
from cmlp.model.synthetic import PRESETS, write_model

PUBLISHED_BLOCK_NAMES = {
    "ln_1.weight",
    "ln_1.bias",
    "attn.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny"
    assert main(["model", "init", "--out", str(out), "--preset", "tiny", "--seed", "3"]) == 0
    return out


def test_init_writes_the_published_layout(tiny):
    assert sorted(p.name for p in tiny.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    config = json.loads((tiny / "config.json").read_text())
    assert config["cmlp_synthetic"] is True and config["model_type"] == "gpt2"
    assert config["activation_function"] == "gelu_new" and config["n_ctx"] == 1024
    assert (config["vocab_size"], config["n_embd"], config["n_layer"], config["n_head"]) == (50257, 64, 4, 4)
    assert load_config(tiny).synthetic
    with safe_open(str(tiny / "model.safetensors"), "numpy") as f:
        assert f.metadata() == {"format": "pt"}
        names = set(f.keys())
        expected = {f"h.{i}.{n}" for i in range(4) for n in PUBLISHED_BLOCK_NAMES}
        assert names == expected | {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"}
        assert all(f.get_slice(n).get_dtype() == "F32" for n in names)
        mask = f.get_tensor("h.0.attn.bias")
        assert mask.shape == (1, 1, 1024, 1024)
        np.testing.assert_array_equal(mask[0, 0], np.tril(np.ones((1024, 1024), np.float32)))
        assert f.get_tensor("h.1.ln_2.weight").tolist() == [1.0] * 64  # HF init
        assert not f.get_tensor("h.1.mlp.c_fc.bias").any()
        std = f.get_tensor("wte.weight").std()
        assert 0.019 < std < 0.021


def test_init_is_deterministic(tiny, tmp_path):
    def digest(d):
        return hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()

    assert main(["model", "init", "--out", str(tmp_path / "same"), "--preset", "tiny", "--seed", "3"]) == 0
    assert main(["model", "init", "--out", str(tmp_path / "other"), "--preset", "tiny", "--seed", "4"]) == 0
    assert digest(tmp_path / "same") == digest(tiny)
    assert digest(tmp_path / "other") != digest(tiny)


def test_init_model_runs_end_to_end_with_the_tokenizer(tiny):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    ids = tokenizer.encode("The capital of France is", add_special_tokens=False).ids
    assert ids == [464, 3139, 286, 4881, 318]  # pipeline.md 5.8
    first = Gpt2Shard.load(tiny, 0, 2, threads=1)
    last = Gpt2Shard.load(tiny, 2, 4, threads=1)
    logits = last.forward(first.forward(np.array([ids], np.uint32)))
    assert logits.shape == (1, 50257) and np.isfinite(logits).all()
    tokenizer.decode([int(np.argmax(logits))])


def test_init_refuses_to_overwrite_without_force(tiny, capsys):
    assert main(["model", "init", "--out", str(tiny), "--preset", "tiny"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["model", "init", "--out", str(tiny), "--preset", "tiny", "--seed", "3", "--force"]) == 0


def test_init_without_embedded_tokenizer_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(synthetic, "embedded_tokenizer", _missing_tokenizer)
    out = tmp_path / "m"
    assert main(["model", "init", "--out", str(out), "--preset", "tiny"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tokenizer" in err and "missing" in err
    assert not out.exists() or not any(out.iterdir())


def _missing_tokenizer():
    raise ModelError("embedded tokenizer /nowhere/tokenizer.json is missing")


def test_small_preset_has_gpt2_small_shapes():
    small = PRESETS["small"]
    assert (small.vocab_size, small.n_positions, small.n_embd, small.n_layer, small.n_head) == (
        50257,
        1024,
        768,
        12,
        12,
    )


def test_hashes_prints_the_canonical_list(tiny, capsys):
    assert main(["model", "hashes", "--model-dir", str(tiny), "--layers", "1:4"]) == 0
    lines = capsys.readouterr().out.split()
    expected = Gpt2Shard.load(tiny, 1, 4, threads=1).weight_hashes()
    assert lines == [digest for _, digest in expected]
    assert all(re.fullmatch(r"[0-9a-f]{64}", line) for line in lines)
    assert main(["model", "hashes", "--model-dir", str(tiny), "--layers", "1:4", "--with-names"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{d}  {n}" for n, d in expected]


@pytest.mark.parametrize("layers", ["2", "a:b", "1:2:3"])
def test_hashes_rejects_a_malformed_range(tiny, capsys, layers):
    with pytest.raises(SystemExit) as exc:
        main(["model", "hashes", "--model-dir", str(tiny), "--layers", layers])
    assert exc.value.code == 2 and "expected START:END" in capsys.readouterr().err


@pytest.mark.parametrize("layers", ["3:9", "2:2", "-1:2"])
def test_hashes_rejects_a_range_outside_the_model(tiny, capsys, layers):
    assert main(["model", "hashes", "--model-dir", str(tiny), f"--layers={layers}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid layer range" in err


def test_hashes_on_a_missing_model(tmp_path, capsys):
    assert main(["model", "hashes", "--model-dir", str(tmp_path), "--layers", "0:1"]) == 1
    assert "config.json" in capsys.readouterr().err


def test_write_model_options(tmp_path):
    config = PRESETS["tiny"]
    d = write_model(
        tmp_path / "p",
        config,
        seed=1,
        std=0.1,
        ln_std=0.2,
        bias_std=0.05,
        prefix="transformer.",
        attn_bias=False,
    )
    with safe_open(str(d / "model.safetensors"), "numpy") as f:
        names = list(f.keys())
        assert all(n.startswith("transformer.") for n in names)
        assert not any(n.endswith(".attn.bias") for n in names)
        assert f.get_tensor("transformer.h.0.ln_1.weight").std() > 0.1
        assert f.get_tensor("transformer.h.0.attn.c_attn.bias").any()
    assert not (d / "tokenizer.json").exists()
    with pytest.raises(ValueError):
        write_model(tmp_path / "q", config, prefix="model.")


@pytest.mark.torch
def test_transformers_loads_the_init_model(tiny):
    """The synthetic directory is a valid HF checkpoint with the same outputs."""
    from tests.helpers.model import ATOL, HfSession, load_hf_model

    ids = np.array([[464, 3139, 286, 4881, 318]], np.uint32)
    ref, _ = HfSession(load_hf_model(tiny)).forward(ids)
    ours = Gpt2Shard.load(tiny, 0, 4, threads=2).forward(ids)
    assert np.max(np.abs(ours - ref)) <= ATOL
