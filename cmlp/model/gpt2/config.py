"""GPT-2 hyper-parameters from a Hugging Face ``config.json`` (pipeline.md 5.1)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cmlp.errors import ModelError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"

SYNTHETIC_KEY = "cmlp_synthetic"  # set by `cmlp model init` and synthetic.write_model

# config.json of an int8 checkpoint written by `cmlp model quantize` (docs/quantization.md):
#   "quantization_config": {"quant_method": "cmlp", "weight_dtype": "int8",
#                           "granularity": "per_channel", "scale_suffix": "_scale",
#                           "weight_layout": "out_in", "modules": [...]}
# int8 matrices are stored [out, in] (GPT-2's Conv1D ones transposed).
QUANT_KEY = "quantization_config"
QUANT_METHOD = "cmlp"
SCALE_SUFFIX = "_scale"


@dataclass(frozen=True)
class Gpt2Config:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    layer_norm_epsilon: float = 1e-5
    synthetic: bool = False
    int8: bool = False  # matrices stored int8 + per-channel scales (QUANT_KEY)

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelError(f"config {name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ModelError(f"config n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if self.vocab_size >= 2**32:
            raise ModelError(f"config vocab_size {self.vocab_size} does not fit token ids (u32)")
        eps = self.layer_norm_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ModelError(f"config layer_norm_epsilon must be in (0, 1), got {eps!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_inner(self) -> int:
        """MLP hidden width; GPT-2 always uses 4 * n_embd."""
        return 4 * self.n_embd


# Options of HF's GPT2Config that change the math; only the GPT-2 values run here.
_SUPPORTED_OPTIONS = {
    "activation_function": ("gelu_new",),
    "n_inner": (None,),  # None means 4 * n_embd
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "reorder_and_upcast_attn": (False,),
}


def load_config(model_dir) -> Gpt2Config:
    """Read ``model_dir/config.json``; ModelError names the file on any problem."""
    path = Path(model_dir) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: config file not found") from None
    except (OSError, ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8, bad JSON and json's int-digits limit; deep nesting
        # raises RecursionError
        raise ModelError(f"{path}: cannot read config: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: config is not a JSON object")
    missing = [k for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head") if k not in raw]
    if missing:
        raise ModelError(f"{path}: missing config keys {', '.join(missing)}")
    try:
        config = Gpt2Config(
            vocab_size=raw["vocab_size"],
            n_positions=raw["n_positions"],
            n_embd=raw["n_embd"],
            n_layer=raw["n_layer"],
            n_head=raw["n_head"],
            layer_norm_epsilon=raw.get("layer_norm_epsilon", 1e-5),
            synthetic=bool(raw.get(SYNTHETIC_KEY, False)),
            int8=_read_quantization(path, raw.get(QUANT_KEY)),
        )
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    for key, allowed in _SUPPORTED_OPTIONS.items():
        value = raw.get(key, allowed[0])
        if key == "n_inner" and value == config.n_inner:
            continue
        if value not in allowed:
            raise ModelError(f"{path}: unsupported {key} {value!r} (GPT-2 uses {allowed[0]!r})")
    return config


def _read_quantization(path: Path | str, qc) -> bool:
    """True for cmlp's int8 format; any other quantization is refused."""
    if qc is None:
        return False
    expected = {
        "quant_method": QUANT_METHOD,
        "weight_dtype": "int8",
        "granularity": "per_channel",
        "scale_suffix": SCALE_SUFFIX,
        "weight_layout": "out_in",
    }
    if not isinstance(qc, dict):
        raise ModelError(f"unsupported {QUANT_KEY}: not a JSON object")
    wrong = {k: qc.get(k) for k, v in expected.items() if qc.get(k) != v}
    if wrong:  # the caller prefixes the path
        raise ModelError(f"unsupported {QUANT_KEY} {str(wrong)[:200]} (cmlp reads {expected})")
    return True
