"""The tensors of one llama/qwen2 shard, read in their stored dtype.

HF names (LlamaForCausalLM / Qwen2ForCausalLM)::

    model.embed_tokens.weight                      [V, C]      first shard (and tied lm_head)
    model.layers.{i}.input_layernorm.weight        [C]
    model.layers.{i}.self_attn.q_proj.weight       [H*D, C]    (+ .bias: qwen2, attention_bias)
    model.layers.{i}.self_attn.k_proj.weight       [KVH*D, C]
    model.layers.{i}.self_attn.v_proj.weight       [KVH*D, C]
    model.layers.{i}.self_attn.o_proj.weight       [C, H*D]    (+ .bias: llama attention_bias)
    model.layers.{i}.post_attention_layernorm.weight [C]
    model.layers.{i}.mlp.{gate,up}_proj.weight     [I, C]
    model.layers.{i}.mlp.down_proj.weight          [C, I]
    model.norm.weight                              [C]         last shard
    lm_head.weight                                 [V, C]      last shard, unless tied

Matrices stay F32, BF16 (uint16 bits) or F16 as stored; norm weights and
biases (a few KB) are widened to float32.  An int8 checkpoint (config
``quantization_config``, written by ``cmlp model quantize --dtype int8``)
stores every matrix above (embed_tokens and lm_head included) as I8 [out, in]
plus ``<name>_scale`` F32 [out]; norms and biases stay float.  Weight hashes are SHA-256 over
the stored bytes, sorted by name (as for GPT-2).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np

from cmlp.errors import ModelError
from cmlp.model.gpt2.config import SCALE_SUFFIX
from cmlp.model.llama.config import LlamaConfig
from cmlp.model.quant import QuantizedWeight
from cmlp.model.safetensors_io import Checkpoint, widen

LAYER = "model.layers.{i}."
MATRICES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
NORMS = ("input_layernorm", "post_attention_layernorm")
INT8 = {"I8": np.dtype(np.int8)}
SCALES = {"F32": np.dtype(np.float32)}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")


def layer_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    C, inter = cfg.hidden_size, cfg.intermediate_size  # C, I above
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    shapes = {
        "input_layernorm.weight": (C,),
        "post_attention_layernorm.weight": (C,),
        "self_attn.q_proj.weight": (q, C),
        "self_attn.k_proj.weight": (kv, C),
        "self_attn.v_proj.weight": (kv, C),
        "self_attn.o_proj.weight": (C, q),
        "mlp.gate_proj.weight": (inter, C),
        "mlp.up_proj.weight": (inter, C),
        "mlp.down_proj.weight": (C, inter),
    }
    if cfg.attention_bias:
        shapes.update(
            {"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)}
        )
        if cfg.family == "llama":
            shapes["self_attn.o_proj.bias"] = (C,)
    return shapes


def check_layer_range(cfg: LlamaConfig, start: int, end: int) -> None:
    for value in (start, end):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelError(f"layer range bounds must be integers, got {value!r}")
    if not 0 <= start < end <= cfg.num_hidden_layers:
        raise ModelError(
            f"invalid layer range [{start}, {end}): need 0 <= start < end <= "
            f"num_hidden_layers ({cfg.num_hidden_layers})"
        )


def shard_tensor_shapes(cfg: LlamaConfig, start: int, end: int) -> dict[str, tuple[int, ...]]:
    """Full HF name -> shape of every tensor the shard holds."""
    check_layer_range(cfg, start, end)
    C, V = cfg.hidden_size, cfg.vocab_size
    first, last = start == 0, end == cfg.num_hidden_layers
    shapes: dict[str, tuple[int, ...]] = {}
    if first or (last and cfg.tie_word_embeddings):
        shapes["model.embed_tokens.weight"] = (V, C)
    block = layer_shapes(cfg)
    for i in range(start, end):
        for name, shape in block.items():
            shapes[LAYER.format(i=i) + name] = shape
    if last:
        shapes["model.norm.weight"] = (C,)
        if not cfg.tie_word_embeddings:
            shapes["lm_head.weight"] = (V, C)
    return shapes


@dataclass
class LlamaWeights:
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # stored dtype
    stored_bytes: int = 0

    def hashes(self) -> list[tuple[str, str]]:
        return [(name, hashlib.sha256(self.tensors[name].data).hexdigest()) for name in sorted(self.tensors)]

    def matrix(self, name: str):
        """A matrix as the engine takes it: the stored array, or QuantizedWeight for int8."""
        arr = self.tensors.get(name)
        if arr is not None and arr.dtype == np.int8:
            return QuantizedWeight(arr, "i8", self.tensors[name + SCALE_SUFFIX])
        return arr

    def layer(self, i: int) -> dict[str, np.ndarray]:
        """The engine's per-layer dict: matrices as stored, norms/biases as float32."""
        p = LAYER.format(i=i)
        t = self.tensors
        out = {n: widen(t[p + n + ".weight"]) for n in NORMS}
        for m in MATRICES:
            short = m.split(".")[1]
            out[short] = self.matrix(p + m + ".weight")
            if p + m + ".bias" in t:
                out[short.replace("_proj", "_bias")] = widen(t[p + m + ".bias"])
        return out


def load_shard_weights(model_dir, cfg: LlamaConfig, start: int, end: int) -> LlamaWeights:
    """Check every tensor (present, dtype, shape) before reading any, then read."""
    ckpt = Checkpoint(model_dir)
    wanted = shard_tensor_shapes(cfg, start, end)
    extra = sorted(
        {int(m.group(1)) for m in map(_LAYER_RE.match, ckpt.names()) if m} - set(range(cfg.num_hidden_layers))
    )
    if extra:
        raise ModelError(
            f"{ckpt.index_path or ckpt.model_dir}: holds model.layers.{extra[0]} "
            f"but config num_hidden_layers is {cfg.num_hidden_layers}"
        )
    infos = []
    for name, shape in wanted.items():
        if cfg.int8 and len(shape) == 2:  # every matrix: I8 + its per-row scales
            infos.append(ckpt.check(name, shape, dtypes=INT8))
            infos.append(ckpt.check(name + SCALE_SUFFIX, shape[:1], dtypes=SCALES))
        else:
            infos.append(ckpt.check(name, shape))
    weights = LlamaWeights()
    for info in infos:
        weights.tensors[info.name] = ckpt.read(info)
        weights.stored_bytes += info.nbytes
    return weights
