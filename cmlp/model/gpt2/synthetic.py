"""Seeded random GPT-2 model directories in the published HF layout.

``cmlp model init`` writes one (GPT-2 small shapes by default), so the
pipeline runs without downloading the real weights; tests write small ones
with custom shapes and scales.  The layout matches openai-community/gpt2:
``config.json`` (HF gpt2 keys, loadable by transformers, plus
``"cmlp_synthetic": true``), ``model.safetensors`` (F32, names without
prefix, ``h.{i}.attn.bias`` causal-mask buffers included, metadata
format=pt) and ``tokenizer.json``.

Default initialisation is HF's: weights normal(0, 0.02), LayerNorm weights 1,
biases 0.  Tests raise ``std`` and set ``ln_std``/``bias_std`` so that
activations and greedy ids are not degenerate.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from importlib import resources
from pathlib import Path

import numpy as np

from cmlp import progress
from cmlp.errors import ModelError
from cmlp.model.gpt2.config import CONFIG_FILE, SYNTHETIC_KEY, TOKENIZER_FILE, WEIGHTS_FILE, Gpt2Config
from cmlp.model.gpt2.weights import PREFIX, block_tensor_shapes

PRESETS = {
    "small": Gpt2Config(
        vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, synthetic=True
    ),
    "tiny": Gpt2Config(vocab_size=50257, n_positions=1024, n_embd=64, n_layer=4, n_head=4, synthetic=True),
}

GPT2_EOS = 50256  # <|endoftext|>


def embedded_tokenizer() -> Path:
    """The GPT-2 tokenizer.json shipped in cmlp/data (ModelError if absent)."""
    path = Path(str(resources.files("cmlp") / "data" / TOKENIZER_FILE))
    if not path.is_file():
        raise ModelError(
            f"embedded tokenizer {path} is missing: the package was built without cmlp/data/tokenizer.json"
        )
    return path


def hf_config(config: Gpt2Config, **extra) -> dict:
    """config.json content: the keys of HF's gpt2 config plus cmlp's markers."""
    special = GPT2_EOS if config.vocab_size > GPT2_EOS else config.vocab_size - 1
    return {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": special,
        "embd_pdrop": 0.1,
        "eos_token_id": special,
        "initializer_range": 0.02,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "model_type": "gpt2",
        "n_ctx": config.n_positions,
        "n_embd": config.n_embd,
        "n_head": config.n_head,
        "n_inner": None,
        "n_layer": config.n_layer,
        "n_positions": config.n_positions,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.1,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "vocab_size": config.vocab_size,
        SYNTHETIC_KEY: config.synthetic,
        **extra,
    }


def random_weights(
    config: Gpt2Config,
    seed: int = 0,
    std: float = 0.02,
    ln_std: float = 0.0,
    bias_std: float = 0.0,
    attn_bias: bool = True,
) -> dict[str, np.ndarray]:
    """All tensors of a GPT-2 model (names without prefix), drawn in a fixed order.

    Matrices ~ normal(0, std); LayerNorm weights 1 + normal(0, ln_std); biases
    (LayerNorm and Conv1D) normal(0, bias_std).  attn_bias adds HF's
    [1, 1, n_positions, n_positions] lower-triangular mask buffers.
    """
    rng = np.random.default_rng(seed)

    def normal(shape, scale):
        progress.advance(4 * int(np.prod(shape)))  # bytes drawn (an open bar, if any)
        if scale == 0.0:
            return np.zeros(shape, np.float32)
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)

    C = config.n_embd
    tensors = {
        "wte.weight": normal((config.vocab_size, C), std),
        "wpe.weight": normal((config.n_positions, C), std),
    }
    mask: np.ndarray | None = None
    if attn_bias:
        mask = np.tril(np.ones((config.n_positions, config.n_positions), np.float32))
        mask = mask.reshape(1, 1, config.n_positions, config.n_positions)
    for i in range(config.n_layer):
        for name, shape in block_tensor_shapes(config).items():
            if name.startswith("ln_") and name.endswith(".weight"):
                value = 1.0 + normal(shape, ln_std)
            elif name.endswith(".bias"):
                value = normal(shape, bias_std)
            else:
                value = normal(shape, std)
            tensors[f"h.{i}.{name}"] = value.astype(np.float32, copy=False)
        if mask is not None:
            tensors[f"h.{i}.attn.bias"] = mask
    tensors["ln_f.weight"] = (1.0 + normal((C,), ln_std)).astype(np.float32, copy=False)
    tensors["ln_f.bias"] = normal((C,), bias_std)
    return tensors


def model_nbytes(config: Gpt2Config) -> int:
    """Bytes of every F32 parameter of a model (attention mask buffers excluded)."""
    C = config.n_embd
    block = sum(int(np.prod(shape)) for shape in block_tensor_shapes(config).values())
    return 4 * ((config.vocab_size + config.n_positions) * C + config.n_layer * block + 2 * C)


def weights_digest(tensors: dict[str, np.ndarray]) -> str:
    """One SHA-256 over every tensor (sorted by name): detects RNG drift."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensors[name]).data)
    return digest.hexdigest()


def write_model(
    out_dir,
    config: Gpt2Config,
    *,
    seed: int = 0,
    std: float = 0.02,
    ln_std: float = 0.0,
    bias_std: float = 0.0,
    prefix: str = "",
    attn_bias: bool = True,
    tokenizer: bool = False,
    overwrite: bool = True,
    extra_config: dict | None = None,
) -> Path:
    """Write a model directory; returns its path.

    prefix "" (the published layout) or "transformer."; tokenizer=True copies
    the embedded tokenizer.json (ModelError when the package lacks it).
    """
    if prefix not in ("", PREFIX):
        raise ValueError(f"prefix must be '' or {PREFIX!r}, got {prefix!r}")
    out = Path(out_dir)
    tokenizer_src = embedded_tokenizer() if tokenizer else None  # fail before writing
    if not overwrite and (out / WEIGHTS_FILE).exists():
        raise ModelError(f"{out / WEIGHTS_FILE} already exists")
    out.mkdir(parents=True, exist_ok=True)

    # one bar: drawing the random parameters, then the file write (bytes of both)
    drawn = model_nbytes(config)
    masks = 4 * config.n_layer * config.n_positions**2 if attn_bias else 0
    with progress.bar(f"writing {out / WEIGHTS_FILE}", 2 * drawn + masks):
        tensors = random_weights(
            config, seed=seed, std=std, ln_std=ln_std, bias_std=bias_std, attn_bias=attn_bias
        )
        digest = weights_digest({k: v for k, v in tensors.items() if not k.endswith(".attn.bias")})
        meta = {"cmlp_seed": seed, "cmlp_weights_sha256": digest, **(extra_config or {})}
        _write_atomic(out / WEIGHTS_FILE, lambda tmp: _save_safetensors(tensors, prefix, tmp))
        progress.advance(drawn + masks)
    text = json.dumps(hf_config(config, **meta), indent=2, sort_keys=True) + "\n"
    _write_atomic(out / CONFIG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    if tokenizer_src is not None:
        _write_atomic(out / TOKENIZER_FILE, lambda tmp: shutil.copyfile(tokenizer_src, tmp))
    return out


def init_model(out_dir, preset: str = "small", seed: int = 0, overwrite: bool = False) -> Path:
    """`cmlp model init --arch gpt2`: a preset-shaped synthetic model with the embedded tokenizer."""
    if preset not in PRESETS:
        raise ModelError(f"unknown preset {preset!r} (choose from {', '.join(sorted(PRESETS))})")
    config = replace(PRESETS[preset], synthetic=True)
    return write_model(
        out_dir, config, seed=seed, tokenizer=True, overwrite=overwrite, extra_config={"cmlp_preset": preset}
    )


def file_tensor_shapes(config: Gpt2Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor ``write_model`` stores (attention masks included)."""
    from cmlp.model.gpt2.weights import shard_tensor_shapes

    shapes = dict(shard_tensor_shapes(config, 0, config.n_layer))
    for i in range(config.n_layer):
        shapes[f"h.{i}.attn.bias"] = (1, 1, config.n_positions, config.n_positions)
    return shapes


def init_or_reuse(out_dir, preset: str = "small", seed: int = 0, force: bool = False) -> tuple[Path, bool]:
    """`cmlp model init`: (path, reused).  The same preset and seed already there is reused;
    anything else there is refused unless ``force`` (ModelError says what is there)."""
    from cmlp.model.reuse import check_existing

    if preset not in PRESETS:
        raise ModelError(f"unknown preset {preset!r} (choose from {', '.join(sorted(PRESETS))})")
    if not force and check_existing(out_dir, preset, seed, file_tensor_shapes(PRESETS[preset])):
        return Path(out_dir), True
    return init_model(out_dir, preset=preset, seed=seed, overwrite=force), False


def _save_safetensors(tensors: dict[str, np.ndarray], prefix: str, path: Path) -> None:
    from safetensors.numpy import save_file

    save_file(
        {prefix + name: t for name, t in tensors.items()}, str(path), metadata={"format": "pt"}
    )  # transformers refuses files without it


def _write_atomic(path: Path, write) -> None:
    """Write to a temporary sibling, then rename: no half-written model files."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # model files are not secret; safetensors creates them 0600
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
