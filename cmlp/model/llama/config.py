"""Llama-family hyper-parameters from a Hugging Face ``config.json`` (llama, qwen2).

Also computes RoPE's inverse frequencies the way transformers does
(``rope_type`` default, linear, llama3), in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cmlp.errors import ModelError
from cmlp.model.gpt2.config import QUANT_KEY
from cmlp.model.gpt2.config import _read_quantization as read_quantization
from cmlp.model.registry import read_config_json

SYNTHETIC_KEY = "cmlp_synthetic"
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class LlamaConfig:
    family: str  # "llama" or "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v (and for llama o) biases; qwen2: q/k/v always
    synthetic: bool = False
    int8: bool = False  # matrices stored I8 + per-channel F32 scales (quantize)

    @property
    def n_layer(self) -> int:
        return self.num_hidden_layers

    def inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies [head_dim / 2], float32, as transformers computes them."""
        dim = self.head_dim
        exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
        inv = (np.float32(1.0) / (np.float32(self.rope_theta) ** exponent)).astype(np.float32)
        scaling = self.rope_scaling or {}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "linear":
            inv = (inv / np.float32(scaling["factor"])).astype(np.float32)
        elif kind == "llama3":
            inv = _llama3_inv_freq(inv, scaling)
        return np.ascontiguousarray(inv, dtype=np.float32)


def _llama3_inv_freq(inv: np.ndarray, s: dict) -> np.ndarray:
    """Llama 3.1's frequency-dependent scaling: long wavelengths divided by ``factor``,
    short ones kept, a linear blend in between (in wavelength ratio)."""
    factor = np.float32(s["factor"])
    low, high = np.float32(s["low_freq_factor"]), np.float32(s["high_freq_factor"])
    old_len = np.float32(s["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = np.float32(2 * math.pi) / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv).astype(np.float32)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (np.float32(1) - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, blended, scaled).astype(np.float32)


def _positive_int(raw: dict, key: str, where: str, default=None) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value >= 2**31:
        raise ModelError(f"{where}: config {key} must be a positive integer, got {value!r}")
    return value


def _float(raw: dict, key: str, where: str, default, lo: float, hi: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo < value < hi:
        raise ModelError(f"{where}: config {key} must be a number in ({lo}, {hi}), got {value!r}")
    return float(value)


def _rope(raw: dict, where: str) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling): published configs have both at the top level;
    transformers >= 5 writes them together as ``rope_parameters``."""
    params = raw.get("rope_parameters")
    if params is None:
        return _float(raw, "rope_theta", where, 10000.0, 0.0, 1e12), _rope_scaling(raw, where)
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        raise ModelError(f"{where}: rope_parameters must be one flat object")
    theta = _float(params, "rope_theta", where + " rope_parameters", 10000.0, 0.0, 1e12)
    kind = params.get("rope_type", params.get("type", "default"))
    return theta, (None if kind == "default" else _rope_scaling({"rope_scaling": params}, where))


def _rope_scaling(raw: dict, where: str) -> dict | None:
    s = raw.get("rope_scaling")
    if s is None:
        return None
    if not isinstance(s, dict):
        raise ModelError(f"{where}: rope_scaling must be an object or null")
    kind = s.get("rope_type", s.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ModelError(
            f"{where}: unsupported rope_scaling type {kind!r} (supported: {', '.join(ROPE_TYPES)})"
        )
    if kind in ("linear", "llama3"):
        _float(s, "factor", where + " rope_scaling", None, 0.0, 1e6)
    if kind == "llama3":
        _float(s, "low_freq_factor", where + " rope_scaling", None, 0.0, 1e6)
        _float(s, "high_freq_factor", where + " rope_scaling", None, 0.0, 1e6)
        _positive_int(s, "original_max_position_embeddings", where + " rope_scaling")
        if s["high_freq_factor"] <= s["low_freq_factor"]:
            raise ModelError(f"{where}: rope_scaling high_freq_factor must exceed low_freq_factor")
    return dict(s)


def load_config(model_dir, family: str = "llama") -> LlamaConfig:
    """Read ``model_dir/config.json`` of a llama or qwen2 model; ModelError names the file."""
    raw = read_config_json(model_dir)
    where = f"{model_dir}/config.json"
    return config_from_dict(raw, family, where)


def config_from_dict(raw: dict, family: str, where: str = "config.json") -> LlamaConfig:
    hidden = _positive_int(raw, "hidden_size", where)
    heads = _positive_int(raw, "num_attention_heads", where)
    kv_heads = _positive_int(raw, "num_key_value_heads", where, heads)
    head_dim = raw.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ModelError(
                f"{where}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            )
        head_dim = hidden // heads
    head_dim = _positive_int({"head_dim": head_dim}, "head_dim", where)
    if heads % kv_heads:
        raise ModelError(
            f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )
    if head_dim % 2:
        raise ModelError(f"{where}: head_dim {head_dim} must be even (RoPE)")
    rope_theta, rope_scaling = _rope(raw, where)
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise ModelError(f"{where}: unsupported hidden_act {act!r} (the {family} family uses silu)")
    if raw.get("mlp_bias", False):
        raise ModelError(f"{where}: mlp_bias is not supported")
    if family == "qwen2":
        if raw.get("use_sliding_window", False):
            raise ModelError(f"{where}: use_sliding_window is not supported")
        attention_bias = True
    else:
        attention_bias = raw.get("attention_bias", False)
        if not isinstance(attention_bias, bool):
            raise ModelError(f"{where}: attention_bias must be true or false")
    tie = raw.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise ModelError(f"{where}: tie_word_embeddings must be true or false")
    return LlamaConfig(
        family=family,
        vocab_size=_positive_int(raw, "vocab_size", where),
        hidden_size=hidden,
        intermediate_size=_positive_int(raw, "intermediate_size", where),
        num_hidden_layers=_positive_int(raw, "num_hidden_layers", where),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=_positive_int(raw, "max_position_embeddings", where),
        rms_norm_eps=_float(raw, "rms_norm_eps", where, 1e-6, 0.0, 1.0),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=tie,
        attention_bias=attention_bias,
        synthetic=bool(raw.get(SYNTHETIC_KEY, False)),
        int8=_quantization(raw, where),
    )


def _quantization(raw: dict, where: str) -> bool:
    """True for cmlp's int8 format (`cmlp model quantize`); any other is refused."""
    try:
        return read_quantization(where, raw.get(QUANT_KEY))
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None
