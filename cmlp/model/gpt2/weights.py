"""Load the tensors of one shard from ``model.safetensors`` (pipeline.md 5.2).

Only the shard's tensors are read: blocks ``h.{layer_start..layer_end-1}``,
plus ``wte``/``wpe`` on the first shard and ``ln_f`` + ``wte`` (tied lm_head)
on the last; ``wte`` is held once when a shard is both.  HF's
``h.{i}.attn.bias`` causal-mask buffers are never read.

Every tensor is checked (present, F32, shape implied by config.json) before
any data is read, then copied into a 64-byte aligned array.  The copy is done
in slices of at most READ_CHUNK_BYTES, each through its own ``safe_open``: a
safetensors handle keeps its memory map (and every page read through it)
resident until it closes, so this bounds the transient extra RSS of a load to
one slice instead of the whole shard.  Weights are held as private copies,
never as a live mapping: a file truncated under a mapping would SIGBUS.

Weight hashes: SHA-256 of each tensor's raw bytes (little-endian, exactly
as stored in the file), listed as (name without prefix, hex) sorted by name.

Reduced precision (docs/quantization.md): the matmul weights (MATRICES) may
be stored F32, BF16 or F16, and the other tensors then in that dtype or F32
(HF bf16 checkpoints store everything BF16); they are held as stored and the
small ones are widened to fp32 for the engine (``engine_tensor``).  An int8
checkpoint (config ``quantization_config``) stores each matrix as I8 plus
``<name>_scale`` F32 [N], one scale per output channel, everything else F32;
int8 matrices are stored [N, K] (nn.Linear orientation, Conv1D ones transposed).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmlp import progress
from cmlp._gpt2 import aligned_empty  # the engine's allocation policy (64-byte aligned)
from cmlp.errors import ModelError
from cmlp.model import safetensors_io
from cmlp.model.gpt2.config import SCALE_SUFFIX, WEIGHTS_FILE, Gpt2Config
from cmlp.model.quant import CONV1D, LINEAR, QuantizedWeight, bf16_to_f32

PREFIX = "transformer."
READ_CHUNK_BYTES = 32 << 20

BLOCK_TENSORS = (
    "ln_1.weight",
    "ln_1.bias",
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
)

# matmul weights that may be held in reduced precision, with their layout
MATRICES = {
    "attn.c_attn.weight": CONV1D,
    "attn.c_proj.weight": CONV1D,
    "mlp.c_fc.weight": CONV1D,
    "mlp.c_proj.weight": CONV1D,
}
WTE = "wte.weight"  # [V, C]: Linear layout for the tied lm_head
FLOAT_DTYPES = ("F32", "BF16", "F16")


def matrix_layout(name: str) -> str | None:
    """Layout of a reduced-precision matrix (name without prefix), else None."""
    if name == WTE:
        return LINEAR
    block_name = _LAYER_RE.sub("", name)
    return MATRICES.get(block_name) if block_name != name else None


_LAYER_RE = re.compile(r"^(?:transformer\.)?h\.(\d+)\.")


def block_tensor_shapes(config: Gpt2Config) -> dict[str, tuple[int, ...]]:
    """Shapes of one block's tensors as stored (Conv1D weights are [in, out])."""
    C = config.n_embd
    return {
        "ln_1.weight": (C,),
        "ln_1.bias": (C,),
        "attn.c_attn.weight": (C, 3 * C),
        "attn.c_attn.bias": (3 * C,),
        "attn.c_proj.weight": (C, C),
        "attn.c_proj.bias": (C,),
        "ln_2.weight": (C,),
        "ln_2.bias": (C,),
        "mlp.c_fc.weight": (C, config.n_inner),
        "mlp.c_fc.bias": (config.n_inner,),
        "mlp.c_proj.weight": (config.n_inner, C),
        "mlp.c_proj.bias": (C,),
    }


def check_layer_range(config: Gpt2Config, layer_start: int, layer_end: int) -> None:
    for value in (layer_start, layer_end):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelError(f"layer range bounds must be integers, got {value!r}")
    if not 0 <= layer_start < layer_end <= config.n_layer:
        raise ModelError(
            f"invalid layer range [{layer_start}, {layer_end}): "
            f"need 0 <= start < end <= n_layer ({config.n_layer})"
        )


def shard_tensor_shapes(config: Gpt2Config, layer_start: int, layer_end: int) -> dict[str, tuple[int, ...]]:
    """Name (without prefix) -> shape of every tensor a shard holds."""
    check_layer_range(config, layer_start, layer_end)
    shapes: dict[str, tuple[int, ...]] = {}
    is_first, is_last = layer_start == 0, layer_end == config.n_layer
    if is_first or is_last:
        shapes["wte.weight"] = (config.vocab_size, config.n_embd)
    if is_first:
        shapes["wpe.weight"] = (config.n_positions, config.n_embd)
    block = block_tensor_shapes(config)
    for i in range(layer_start, layer_end):
        for name in BLOCK_TENSORS:
            shapes[f"h.{i}.{name}"] = block[name]
    if is_last:
        shapes["ln_f.weight"] = (config.n_embd,)
        shapes["ln_f.bias"] = (config.n_embd,)
    return shapes


def detect_prefix(names) -> str:
    """pipeline.md 5.2: the first name that tells wins; default ``transformer.``."""
    for name in names:
        if name.startswith(PREFIX):
            return PREFIX
        if name.startswith("h.") or name in ("wte.weight", "wpe.weight"):
            return ""
    return PREFIX


@dataclass
class ShardWeights:
    """The tensors of one shard, keyed by name without prefix."""

    path: Path
    prefix: str
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    _widened: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def block(self, layer: int) -> dict:
        return {name: self.engine_tensor(f"h.{layer}.{name}") for name in BLOCK_TENSORS}

    def engine_tensor(self, name: str):
        """What ShardEngine takes: fp32 arrays, matrices as QuantizedWeight
        when stored in reduced precision, small tensors widened to fp32."""
        arr = self.tensors.get(name)
        if arr is None or arr.dtype == np.float32:
            return arr
        if matrix_layout(name) is not None:
            if arr.dtype == np.int8:
                return QuantizedWeight(arr, "i8", self.tensors[name + SCALE_SUFFIX])
            if arr.dtype == np.float16:
                return QuantizedWeight(arr.view(np.uint16), "f16")
            return QuantizedWeight(arr, "bf16")
        if name not in self._widened:
            wide = aligned_empty(arr.shape)
            wide[...] = bf16_to_f32(arr) if arr.dtype == np.uint16 else arr
            self._widened[name] = wide
        return self._widened[name]

    def hashes(self) -> list[tuple[str, str]]:
        """(name, sha256 hex) of every tensor, sorted by name."""
        return [(name, hashlib.sha256(self.tensors[name].data).hexdigest()) for name in sorted(self.tensors)]


def _safe_open(path: Path):
    from safetensors import safe_open

    return safe_open(str(path), framework="numpy")


def load_shard_weights(model_dir, config: Gpt2Config, layer_start: int, layer_end: int) -> ShardWeights:
    """Check then read the shard's tensors; ModelError names file and tensor."""
    path = Path(model_dir) / WEIGHTS_FILE
    wanted = shard_tensor_shapes(config, layer_start, layer_end)
    if config.int8:  # matrices stored [out, in], plus [out] scales
        for name in list(wanted):
            if matrix_layout(name) is not None:
                if matrix_layout(name) == CONV1D:
                    wanted[name] = wanted[name][::-1]
                wanted[name + SCALE_SUFFIX] = (wanted[name][0],)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    try:
        with _safe_open(path) as f:
            names = list(f.keys())
            prefix = detect_prefix(names)
            _check_layer_count(path, names, config)
            float_dtype = _float_dtype(f, prefix, names, wanted, config)
            for name, shape in wanted.items():
                if prefix + name not in names:
                    raise ModelError(f"{path}: missing tensor {prefix + name}")
                info = f.get_slice(prefix + name)
                expected = _expected_dtypes(name, float_dtype, config)
                if info.get_dtype() not in expected:
                    raise ModelError(
                        f"{path}: tensor {prefix + name} has dtype "
                        f"{info.get_dtype()}, expected {' or '.join(expected)}"
                    )
                if tuple(info.get_shape()) != shape:
                    raise ModelError(
                        f"{path}: tensor {prefix + name} has shape "
                        f"{list(info.get_shape())}, expected {list(shape)} "
                        f"from {config_summary(config)}"
                    )
    except ModelError:
        raise
    except Exception as exc:  # SafetensorError, OSError: a corrupt or truncated file
        raise ModelError(f"{path}: cannot read safetensors file: {exc}") from None

    weights = ShardWeights(path=path, prefix=prefix)
    stored = safetensors_io.read_header(path)[0]
    total = sum(
        stored[prefix + name]["data_offsets"][1] - stored[prefix + name]["data_offsets"][0] for name in wanted
    )  # bytes as stored (bf16/int8 are smaller)
    with progress.bar(f"loading layers [{layer_start}, {layer_end})", total):
        for name, shape in wanted.items():
            weights.tensors[name] = _read_tensor(path, prefix + name, shape)
    return weights


def _float_dtype(f, prefix: str, names, wanted, config: Gpt2Config) -> str:
    """The checkpoint's matrix dtype: I8 for int8 configs, else that of the
    first matrix of the shard (F32, BF16 or F16)."""
    if config.int8:
        return "I8"
    for name in wanted:
        if matrix_layout(name) is not None and prefix + name in names:
            dtype = f.get_slice(prefix + name).get_dtype()
            return dtype if dtype in FLOAT_DTYPES else "F32"
    return "F32"


def _expected_dtypes(name: str, float_dtype: str, config: Gpt2Config) -> tuple[str, ...]:
    if name.endswith(SCALE_SUFFIX) and config.int8:
        return ("F32",)
    if matrix_layout(name) is not None:
        return (float_dtype,)
    if float_dtype in ("BF16", "F16"):
        return (float_dtype, "F32")
    return ("F32",)


def config_summary(config: Gpt2Config) -> str:
    return (
        f"config (vocab_size {config.vocab_size}, n_positions {config.n_positions}, "
        f"n_embd {config.n_embd}, n_layer {config.n_layer})"
    )


def _check_layer_count(path: Path, names, config: Gpt2Config) -> None:
    """A file with more blocks than config.n_layer means the config is wrong."""
    layers = {int(m.group(1)) for m in map(_LAYER_RE.match, names) if m}
    extra = sorted(i for i in layers if i >= config.n_layer)
    if extra:
        raise ModelError(f"{path}: holds block h.{extra[0]} but config n_layer is {config.n_layer}")


def _read_tensor(path: Path, full_name: str, shape: tuple[int, ...]) -> np.ndarray:
    # stored dtype, already checked against the expected ones by load_shard_weights
    dtype = safetensors_io.read_header(path)[0][full_name]["dtype"]
    out = aligned_empty(shape, safetensors_io.STORAGE[dtype])
    if dtype == "BF16":  # numpy has no bfloat16: read the bit patterns directly
        safetensors_io.read_into(path, full_name, out)
        progress.advance(out.nbytes)
        return out
    row_bytes = out[0].nbytes if out.ndim > 1 else out.itemsize
    rows_per_read = max(1, READ_CHUNK_BYTES // row_bytes)
    try:
        for start in range(0, shape[0], rows_per_read):
            stop = min(start + rows_per_read, shape[0])
            with _safe_open(path) as f:  # reopened per slice: see module docstring
                out[start:stop] = f.get_slice(full_name)[start:stop]
            progress.advance(out[start:stop].nbytes)
    except Exception as exc:  # the file changed or broke since it was checked
        raise ModelError(f"{path}: cannot read tensor {full_name}: {exc}") from None
    return out
