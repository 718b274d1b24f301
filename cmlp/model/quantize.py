"""``cmlp model quantize``: write a bf16 or int8 copy of a model directory.

Output layout (docs/quantization.md), HF-like so other tools can read it:

- ``--dtype bf16``: every floating tensor stored BF16, ``torch_dtype`` /
  ``dtype`` set to ``bfloat16`` in config.json: exactly what transformers'
  ``save_pretrained`` writes for a bf16 model (transformers loads it).
- ``--dtype int8``: each matmul weight ``W`` stored as ``<name>`` I8 in the
  nn.Linear orientation [out, in] for every family (GPT-2's Conv1D [in, out]
  matrices are transposed: one kernel layout, whose int8 path has a VNNI
  variant) plus ``<name>_scale`` F32 [out], one scale per output channel
  (symmetric absmax / 127, see cmlp.model.quant); every other tensor stays
  F32.  config.json gains ``quantization_config`` = ``{"quant_method":
  "cmlp", "weight_dtype": "int8", "granularity": "per_channel",
  "scale_suffix": "_scale", "weight_layout": "out_in", "modules": [...]}``.

Which tensors are matmul weights: for GPT-2 (HF Conv1D, [in, out]) the four
block matrices and the tied ``wte`` ([V, C], read as Linear by the lm_head);
for the Linear families (llama, qwen2: [out, in]) every 2-D ``*_proj.weight``,
``lm_head.weight`` and ``embed_tokens.weight``.  Weight hashes for manifests
are the SHA-256 of the stored bytes of every tensor a shard loads, scales
included (``cmlp model hashes`` works unchanged on the output).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from cmlp.errors import ModelError
from cmlp.model import safetensors_io
from cmlp.model.gpt2.config import (
    CONFIG_FILE,
    QUANT_KEY,
    QUANT_METHOD,
    SCALE_SUFFIX,
    WEIGHTS_FILE,
)
from cmlp.model.quant import CONV1D, LINEAR, bf16_to_f32, quantize_int8, to_bf16

DTYPES = ("int8", "bf16")
MODEL_TYPES = ("gpt2", "llama", "qwen2")  # the families whose loaders read the output
INDEX_FILE = "model.safetensors.index.json"

_GPT2_MATRIX = re.compile(
    r"^(?:transformer\.)?(?:h\.\d+\.(?:attn\.c_attn|attn\.c_proj|"
    r"mlp\.c_fc|mlp\.c_proj)\.weight|wte\.weight)$"
)
_LINEAR_MATRIX = re.compile(r"(?:_proj\.weight|^lm_head\.weight|embed_tokens\.weight)$")


def matrix_layout(model_type: str, name: str, ndim: int) -> str | None:
    """conv1d / linear for a tensor to quantize, None to keep it as is."""
    if ndim != 2:
        return None
    if model_type == "gpt2":
        if not _GPT2_MATRIX.match(name):
            return None
        return LINEAR if name.endswith("wte.weight") else CONV1D
    return LINEAR if _LINEAR_MATRIX.search(name) else None


def _shards(in_dir: Path) -> list[Path]:
    single = in_dir / WEIGHTS_FILE
    if single.is_file():
        return [single]
    index = in_dir / INDEX_FILE
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    except FileNotFoundError:
        raise ModelError(f"{in_dir}: no {WEIGHTS_FILE} or {INDEX_FILE}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{index}: cannot read the shard index: {exc}") from None
    paths = []
    for name in files:
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise ModelError(f"{index}: invalid shard file name {name!r}")
        paths.append(in_dir / name)
    return paths


def _read_fp32(path: Path, name: str, entry: dict) -> np.ndarray:
    """A floating tensor as fp32 (BF16 read raw and widened exactly)."""
    out = np.empty(entry["shape"], safetensors_io.STORAGE[entry["dtype"]])
    safetensors_io.read_into(path, name, out)
    if entry["dtype"] == "BF16":
        return bf16_to_f32(out).reshape(out.shape)
    return out.astype(np.float32, copy=False)


def quantize_model(in_dir, out_dir, dtype: str = "int8", overwrite: bool = False) -> Path:
    """Write the quantized copy of ``in_dir`` to ``out_dir``; returns out_dir."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise ModelError(f"unknown target dtype {dtype!r}; expected one of {DTYPES}")
    try:
        config = json.loads((in_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{in_dir / CONFIG_FILE}: cannot read config: {exc}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{in_dir / CONFIG_FILE}: config is not a JSON object")
    if QUANT_KEY in config:
        raise ModelError(f"{in_dir}: already quantized ({QUANT_KEY} in config.json)")
    if out_dir.resolve() == in_dir.resolve():
        raise ModelError("--out must differ from --in")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ModelError(f"{out_dir} exists and is not empty (use --force to overwrite)")
    model_type = config.get("model_type", "gpt2")
    if model_type not in MODEL_TYPES:
        raise ModelError(
            f"{in_dir / CONFIG_FILE}: cannot quantize model_type {model_type!r} "
            f"(supported: {', '.join(MODEL_TYPES)})"
        )

    tensors: dict[str, np.ndarray] = {}
    modules: list[str] = []
    for path in _shards(in_dir):
        header, _ = safetensors_io.read_header(path)
        for name, entry in header.items():
            if entry["dtype"] not in ("F32", "F16", "BF16"):
                tensors[name] = _read_raw(path, name, entry)  # masks, ids: kept as is
                continue
            layout = matrix_layout(model_type, name, len(entry["shape"]))
            if dtype == "bf16":
                if entry["dtype"] == "BF16":
                    tensors[name] = safetensors_io.as_bf16(_read_raw(path, name, entry))
                else:
                    tensors[name] = safetensors_io.as_bf16(to_bf16(_read_fp32(path, name, entry)))
                if layout:
                    modules.append(name)
            elif layout:
                w = _read_fp32(path, name, entry)
                # stored [out, in] whatever the source layout (see the module docstring)
                q, scales = quantize_int8(np.ascontiguousarray(w.T) if layout == CONV1D else w, LINEAR)
                tensors[name], tensors[name + SCALE_SUFFIX] = q, scales
                modules.append(name)
            else:
                tensors[name] = _read_fp32(path, name, entry)
    if not modules:
        raise ModelError(f"{in_dir}: no matmul weights found for model_type {model_type!r}")

    out_dir.mkdir(parents=True, exist_ok=True)
    for item in in_dir.iterdir():  # tokenizer, generation config, README ...
        if (
            item.is_file()
            and item.name not in (CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE)
            and not item.name.endswith(".safetensors")
        ):
            shutil.copy2(item, out_dir / item.name)
    if dtype == "bf16":
        config["torch_dtype"] = "bfloat16"
        config["dtype"] = "bfloat16"
    else:
        config[QUANT_KEY] = {
            "quant_method": QUANT_METHOD,
            "weight_dtype": "int8",
            "granularity": "per_channel",
            "scale_suffix": SCALE_SUFFIX,
            "weight_layout": "out_in",
            "modules": modules,
        }
    safetensors_io.write_file(out_dir / WEIGHTS_FILE, tensors, {"format": "pt"})
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _read_raw(path: Path, name: str, entry: dict) -> np.ndarray:
    out = np.empty(entry["shape"], safetensors_io.STORAGE[entry["dtype"]])
    return safetensors_io.read_into(path, name, out)
