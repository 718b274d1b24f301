"""Seeded random llama/qwen2 model directories in the published HF layout.

``cmlp model init --arch llama|qwen2 --preset NAME [--dtype bf16]`` writes::

    config.json               HF keys (loadable by transformers) + "cmlp_synthetic": true
    generation_config.json    bos/eos token ids
    model.safetensors         or model-0000x-of-0000y.safetensors + model.safetensors.index.json
                              (shards of at most SHARD_BYTES, as save_pretrained does)
    tokenizer.json            byte-level BPE without merges: 256 byte tokens + specials
    tokenizer_config.json     bos_token, eos_token, chat_template (ChatML)

Presets with real shapes: smollm2-135m, llama-3.2-1b (llama), qwen2.5-0.5b
(qwen2); ``tiny`` for tests.  Weights: normal(0, std), norm weights 1, biases
0 (HF's init); tensors are generated one at a time while streaming to disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cmlp.errors import ModelError
from cmlp.model.llama.config import SYNTHETIC_KEY, config_from_dict
from cmlp.model.llama.weights import LAYER, layer_shapes
from cmlp.model.safetensors_io import INDEX_FILE, SINGLE_FILE, write_safetensors

SHARD_BYTES = 2 << 30
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

# config.json values of the published models (shapes only; the weights are random)
PRESETS: dict[str, dict[str, dict[str, Any]]] = {  # family -> preset -> config.json keys
    "llama": {
        "tiny": dict(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
        "smollm2-135m": dict(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=8192,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
        "llama-3.2-1b": dict(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            max_position_embeddings=131072,
            rope_theta=500000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            rope_scaling=_LLAMA3_SCALING,
        ),
    },
    "qwen2": {
        "tiny": dict(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        ),
        "qwen2.5-0.5b": dict(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        ),
    },
}
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
DTYPES = {"fp32": ("F32", "float32"), "bf16": ("BF16", "bfloat16"), "fp16": ("F16", "float16")}


def hf_config(family: str, shape: dict, dtype: str, **extra) -> dict:
    eos = 0  # <|endoftext|> (see byte_level_tokenizer: specials come first)
    return {
        "architectures": [ARCHITECTURES[family]],
        "model_type": family,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "use_cache": True,
        "torch_dtype": DTYPES[dtype][1],
        **({"attention_bias": False} if family == "llama" else {"use_sliding_window": False}),
        **shape,
        SYNTHETIC_KEY: True,
        **extra,
    }


def byte_level_tokenizer(vocab_size: int = 0):
    """specials at ids 0..2, then the 256 byte-level symbols; ids up to vocab_size are
    filled with tokens " t<n>" (never produced by encode, since there are no merges,
    but decodable: a random model's output ids always have text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({c: len(SPECIAL_TOKENS) + i for i, c in enumerate(alphabet)})
    for n in range(vocab_size - len(vocab)):
        vocab[f"\u0120t{n}"] = len(vocab)  # U+0120 is the byte-level space
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def _tensor_specs(cfg, st_dtype: str, rng_seed: int, std: float):
    """(name, dtype, shape, make) in HF's order; make() draws that tensor's values."""
    specs = []
    order: list[tuple[str, tuple[int, ...]]] = [
        ("model.embed_tokens.weight", (cfg.vocab_size, cfg.hidden_size))
    ]
    for i in range(cfg.num_hidden_layers):
        order += [(LAYER.format(i=i) + n, s) for n, s in layer_shapes(cfg).items()]
    order.append(("model.norm.weight", (cfg.hidden_size,)))
    if not cfg.tie_word_embeddings:
        order.append(("lm_head.weight", (cfg.vocab_size, cfg.hidden_size)))
    for index, (name, shape) in enumerate(order):

        def make(name=name, shape=shape, index=index):
            if name.endswith("norm.weight"):
                x = np.ones(shape, np.float32)
            elif name.endswith(".bias"):
                x = np.zeros(shape, np.float32)
            else:  # one stream per tensor: any tensor can be regenerated alone
                rng = np.random.default_rng([rng_seed, index])
                x = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
            return to_stored(x, st_dtype)

        specs.append((name, st_dtype, shape, make))
    return specs


def to_stored(x: np.ndarray, st_dtype: str) -> np.ndarray:
    if st_dtype == "F32":
        return x
    if st_dtype == "F16":
        return x.astype(np.float16)
    from cmlp.pipeline.gpt2 import f32_to_bf16_bits

    return f32_to_bf16_bits(x)


def write_model(
    out_dir,
    family: str,
    shape: dict,
    *,
    dtype: str = "fp32",
    seed: int = 0,
    std: float = 0.02,
    shard_bytes: int = SHARD_BYTES,
    overwrite: bool = True,
    extra_config: dict | None = None,
) -> Path:
    out = Path(out_dir)
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    raw = hf_config(family, shape, dtype, cmlp_seed=seed, **(extra_config or {}))
    cfg = config_from_dict(raw, family)
    if not overwrite and ((out / SINGLE_FILE).exists() or (out / INDEX_FILE).exists()):
        raise ModelError(f"{out} already holds a model (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("model-*-of-*.safetensors"), out / SINGLE_FILE, out / INDEX_FILE]:
        stale.unlink(missing_ok=True)
    specs = _tensor_specs(cfg, DTYPES[dtype][0], seed, std)
    shards: list[list[tuple]] = []  # per file: (name, dtype, shape, make) specs
    current: list[tuple] = []
    size = 0
    for spec in specs:
        nbytes = int(np.prod(spec[2])) * (4 if spec[1] == "F32" else 2)
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(spec)
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        _atomic(out / SINGLE_FILE, lambda tmp: write_safetensors(tmp, shards[0]))
    else:
        weight_map, total = {}, 0
        for k, shard in enumerate(shards, 1):
            name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            total += _atomic(out / name, lambda tmp, shard=shard: write_safetensors(tmp, shard))
            weight_map.update({spec[0]: name for spec in shard})
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _atomic(out / INDEX_FILE, lambda tmp: tmp.write_text(json.dumps(index, indent=2) + "\n"))
    _json(out / "config.json", raw)
    _json(out / "generation_config.json", {"bos_token_id": 0, "eos_token_id": 0})
    _json(
        out / "tokenizer_config.json",
        {
            "bos_token": None,
            "eos_token": SPECIAL_TOKENS[0],
            "chat_template": CHATML,
            "model_max_length": cfg.max_position_embeddings,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    )
    tok = byte_level_tokenizer(cfg.vocab_size)
    _atomic(out / "tokenizer.json", lambda tmp: tok.save(str(tmp)))
    return out


def init_model(
    out_dir, family: str, preset: str = "tiny", dtype: str = "fp32", seed: int = 0, overwrite: bool = False
) -> Path:
    presets = PRESETS[family]
    if preset not in presets:
        raise ModelError(f"unknown {family} preset {preset!r} (choose from {', '.join(sorted(presets))})")
    return write_model(
        out_dir,
        family,
        presets[preset],
        dtype=dtype,
        seed=seed,
        overwrite=overwrite,
        extra_config={"cmlp_preset": preset},
    )


def _json(path: Path, obj) -> None:
    _atomic(
        path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    )


def _atomic(path: Path, write):
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        result = write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return result
    finally:
        if tmp.exists():
            tmp.unlink()


__all__ = ["PRESETS", "byte_level_tokenizer", "init_model", "write_model"]
