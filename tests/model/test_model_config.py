"""config.json parsing (pipeline.md 5.1)."""

from __future__ import annotations

import json

import pytest

from cmlp.errors import ModelError
from cmlp.model import Gpt2Config, load_config

BASE = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}


def write(tmp_path, content):
    path = tmp_path / "config.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return tmp_path


def test_published_gpt2_config(tmp_path):
    published = {
        **BASE,
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": 1024,
        "task_specific_params": {"text-generation": {"do_sample": True}},
    }
    cfg = load_config(write(tmp_path, published))
    assert cfg == Gpt2Config(50257, 1024, 768, 12, 12, 1e-5, False)
    assert (cfg.head_dim, cfg.n_inner) == (64, 3072)


def test_defaults_and_synthetic_marker(tmp_path):
    cfg = load_config(write(tmp_path, {**BASE, "cmlp_synthetic": True}))
    assert cfg.layer_norm_epsilon == 1e-5 and cfg.synthetic
    assert load_config(write(tmp_path, {**BASE, "layer_norm_epsilon": 1e-6})).layer_norm_epsilon == 1e-6
    assert load_config(write(tmp_path, {**BASE, "n_inner": 3072})).n_inner == 3072


@pytest.mark.parametrize(
    "edit,match",
    [
        ({"n_embd": None}, "n_embd must be a positive integer"),
        ({"n_head": 0}, "n_head must be a positive integer"),
        ({"n_layer": 1.5}, "n_layer must be a positive integer"),
        ({"vocab_size": True}, "vocab_size must be a positive integer"),
        ({"n_head": 7}, "not a multiple of n_head"),
        ({"layer_norm_epsilon": -1}, "layer_norm_epsilon"),
        ({"activation_function": "gelu"}, "unsupported activation_function 'gelu'"),
        ({"n_inner": 1000}, "unsupported n_inner"),
        ({"scale_attn_by_inverse_layer_idx": True}, "unsupported scale_attn_by_inverse_layer_idx"),
    ],
)
def test_invalid_values(tmp_path, edit, match):
    with pytest.raises(ModelError, match=match):
        load_config(write(tmp_path, {**BASE, **edit}))


def test_missing_keys_are_listed(tmp_path):
    with pytest.raises(ModelError, match="missing config keys n_layer, n_head"):
        load_config(write(tmp_path, {k: v for k, v in BASE.items() if k not in ("n_layer", "n_head")}))


@pytest.mark.parametrize("content", ["{", "[1, 2]", "\xff", ""])
def test_unreadable_config(tmp_path, content):
    with pytest.raises(ModelError, match="config.json"):
        load_config(write(tmp_path, content))


def test_missing_config(tmp_path):
    with pytest.raises(ModelError, match="config file not found"):
        load_config(tmp_path)
