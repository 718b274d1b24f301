"""Checked reads from Hugging Face checkpoints: ``model.safetensors`` or shards.

Layouts (as published on the Hub):
    model.safetensors                                  one file
    model.safetensors.index.json + model-0000x-of-0000y.safetensors
                                                       {"weight_map": {tensor: file}}

The safetensors header is parsed here (8-byte little-endian length, JSON
table of ``{dtype, shape, data_offsets}``, then the data) rather than through
the ``safetensors`` package, because numpy has no bfloat16: BF16 tensors are
read as their uint16 bits and stay 2 bytes per element in memory.  Every
header field is checked against the file size before anything is read, and a
tensor's bytes are read with plain ``readinto`` into a 64-byte aligned array
(no memory map: a file truncated under a mapping would SIGBUS).  Errors are
``ModelError`` naming the file and the tensor.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmlp._gpt2 import aligned_empty
from cmlp.errors import ModelError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 << 20  # the Hub's own limit for safetensors headers
MAX_INDEX_BYTES = 64 << 20
READ_CHUNK_BYTES = 32 << 20

# safetensors dtype -> numpy dtype held in memory (BF16 as its uint16 bits)
HALF_AND_FULL: dict[str, np.dtype] = {
    "F32": np.dtype(np.float32),
    "BF16": np.dtype(np.uint16),
    "F16": np.dtype(np.float16),
}
# what Checkpoint.read can hold: HALF_AND_FULL plus int8 (quantized matrices)
READABLE: dict[str, np.dtype] = {**HALF_AND_FULL, "I8": np.dtype(np.int8)}
_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute file offset of the data
    nbytes: int


def parse_header(path: Path) -> dict[str, TensorInfo]:
    """The tensor table of one .safetensors file, every field checked."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            head = f.read(8)
            if len(head) != 8:
                raise ModelError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
                raise ModelError(f"{path}: corrupt safetensors header length {n} (file is {size} bytes)")
            raw = f.read(n)
    except FileNotFoundError:
        raise ModelError(f"{path}: weights file not found") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc}") from None
    try:
        table = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelError(f"{path}: corrupt safetensors header: {exc}") from None
    if not isinstance(table, dict):
        raise ModelError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start, data_size = 8 + n, size - 8 - n
    out: dict[str, TensorInfo] = {}
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name}"
        if not isinstance(entry, dict):
            raise ModelError(f"{where}: corrupt header entry")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _ITEMSIZE:
            raise ModelError(f"{where}: unknown dtype {dtype!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape)
        ):
            raise ModelError(f"{where}: corrupt shape {shape!r}")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise ModelError(
                f"{where}: data_offsets {offsets!r} outside the file's "
                f"{data_size} data bytes (truncated or corrupt)"
            )
        nbytes = math.prod(shape) * _ITEMSIZE[dtype]
        if offsets[1] - offsets[0] != nbytes:
            raise ModelError(
                f"{where}: {offsets[1] - offsets[0]} data bytes for {dtype} {shape} (expected {nbytes})"
            )
        out[name] = TensorInfo(name, path, dtype, tuple(shape), data_start + offsets[0], nbytes)
    return out


class Checkpoint:
    """The tensors of a model directory, single-file or sharded; headers read lazily."""

    def __init__(self, model_dir):
        self.model_dir = Path(model_dir)
        index = self.model_dir / INDEX_FILE
        single = self.model_dir / SINGLE_FILE
        self._headers: dict[str, dict[str, TensorInfo]] = {}
        if index.is_file():
            self.index_path: Path | None = index
            self.weight_map = self._read_index(index)
        elif single.is_file():
            self.index_path = None
            self.weight_map = {name: SINGLE_FILE for name in self._header(SINGLE_FILE)}
        else:
            raise ModelError(f"{self.model_dir}: no {SINGLE_FILE} or {INDEX_FILE}")

    def _read_index(self, index: Path) -> dict[str, str]:
        try:
            if index.stat().st_size > MAX_INDEX_BYTES:
                raise ModelError(f"{index}: index larger than {MAX_INDEX_BYTES} bytes")
            raw = json.loads(index.read_text(encoding="utf-8"))
        except ModelError:
            raise
        except (OSError, ValueError, RecursionError) as exc:
            raise ModelError(f"{index}: corrupt index: {exc}") from None
        wmap = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(wmap, dict) or not wmap:
            raise ModelError(f"{index}: corrupt index: no weight_map object")
        for name, file in wmap.items():
            if (
                not isinstance(file, str)
                or not file.endswith(".safetensors")
                or "/" in file
                or "\\" in file
                or file.startswith(".")
            ):
                raise ModelError(
                    f"{index}: corrupt index: tensor {name} maps to {file!r} "
                    "(expected a .safetensors file name in the model directory)"
                )
        return wmap

    def _header(self, file: str) -> dict[str, TensorInfo]:
        if file not in self._headers:
            path = self.model_dir / file
            if not path.is_file():
                if self.index_path is not None:
                    raise ModelError(f"{self.index_path}: shard {file} is missing ({path})")
                raise ModelError(f"{path}: weights file not found")
            self._headers[file] = parse_header(path)
        return self._headers[file]

    def names(self) -> list[str]:
        return list(self.weight_map)

    def info(self, name: str) -> TensorInfo:
        file = self.weight_map.get(name)
        if file is None:
            where = self.index_path or (self.model_dir / SINGLE_FILE)
            raise ModelError(f"{where}: missing tensor {name}")
        header = self._header(file)
        if name not in header:
            raise ModelError(
                f"{self.model_dir / file}: missing tensor {name} (listed there by {self.index_path})"
            )
        return header[name]

    def check(self, name: str, shape: tuple[int, ...], dtypes=HALF_AND_FULL) -> TensorInfo:
        """Present, of an accepted dtype and of the expected shape (nothing read yet)."""
        info = self.info(name)
        if info.dtype not in dtypes:
            raise ModelError(
                f"{info.path}: tensor {name} has dtype {info.dtype}, expected {' or '.join(dtypes)}"
            )
        if info.shape != tuple(shape):
            raise ModelError(
                f"{info.path}: tensor {name} has shape {list(info.shape)}, "
                f"expected {list(shape)} from config.json"
            )
        return info

    def read(self, info: TensorInfo) -> np.ndarray:
        """The tensor's bytes, in its stored dtype (BF16 as uint16), 64-byte aligned."""
        out = aligned_empty(info.shape, READABLE[info.dtype])
        view = out.reshape(-1).view(np.uint8).data
        try:
            with open(info.path, "rb") as f:
                f.seek(info.offset)
                done = 0
                while done < info.nbytes:
                    n = f.readinto(view[done : min(done + READ_CHUNK_BYTES, info.nbytes)])
                    if not n:
                        raise ModelError(
                            f"{info.path}: tensor {info.name}: file truncated since its header was read"
                        )
                    done += n
        except OSError as exc:
            raise ModelError(f"{info.path}: cannot read tensor {info.name}: {exc}") from None
        return out


def widen(arr: np.ndarray) -> np.ndarray:
    """A stored tensor as float32 (norm weights, biases: small tensors only)."""
    if arr.dtype == np.uint16:  # bfloat16 bits
        return (arr.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return np.ascontiguousarray(arr, dtype=np.float32)


def write_safetensors(path: Path, tensors, metadata: dict | None = None) -> int:
    """Stream tensors into one .safetensors file; returns the data bytes written.

    ``tensors`` is a list of (name, dtype, shape, make) where ``make()`` returns
    the array (BF16 as uint16 bits): each is built only when written, so a
    multi-GB model never sits in memory at once.
    """
    table, offset = {}, 0
    for name, dtype, shape, _ in tensors:
        nbytes = math.prod(shape) * _ITEMSIZE[dtype]
        table[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    table["__metadata__"] = {"format": "pt", **(metadata or {})}  # transformers needs format
    header = json.dumps(table, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # data 8-byte aligned, as the spec advises
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for name, dtype, shape, make in tensors:
            arr = np.ascontiguousarray(make(), dtype=HALF_AND_FULL.get(dtype))
            if arr.shape != tuple(shape):
                raise ValueError(f"tensor {name}: made {arr.shape}, declared {shape}")
            f.write(arr.reshape(-1).view(np.uint8).data)
    return offset


# ---- by-name access for single files (GPT-2's loader, `cmlp model quantize`) ----------------

# safetensors dtype -> numpy storage dtype (BF16 as uint16 bit patterns)
STORAGE: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "BOOL": np.dtype("?"),
}
_NUMPY_TO_ST = {
    np.dtype("<f4"): "F32",
    np.dtype("<f2"): "F16",
    np.dtype("i1"): "I8",
    np.dtype("u1"): "U8",
    np.dtype("<i4"): "I32",
    np.dtype("<i8"): "I64",
    np.dtype("?"): "BOOL",
}


class Bf16(np.ndarray):
    """Marker: a uint16 array to be written as BF16 (see as_bf16)."""


def as_bf16(bits: np.ndarray) -> np.ndarray:
    """Tag uint16 bf16 bit patterns so write_file stores them as BF16."""
    return np.ascontiguousarray(bits, dtype=np.uint16).view(Bf16)


def read_header(path: Path) -> tuple[dict, int]:
    """({name: {"dtype", "shape", "data_offsets"}}, offset of the data block), every entry
    checked by parse_header; only dtypes with a numpy storage type are accepted."""
    infos = parse_header(Path(path))
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    data_start = 8 + n
    header = {}
    for name, info in infos.items():
        if info.dtype not in STORAGE:
            raise ModelError(f"{path}: tensor {name}: dtype {info.dtype} is not supported")
        begin = info.offset - data_start
        header[name] = {
            "dtype": info.dtype,
            "shape": list(info.shape),
            "data_offsets": [begin, begin + info.nbytes],
        }
    return header, data_start


def read_into(path: Path, name: str, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (C-contiguous, the tensor's storage dtype and shape) from the file."""
    path = Path(path)
    info = parse_header(path).get(name)
    if info is None:
        raise ModelError(f"{path}: missing tensor {name}")
    if STORAGE.get(info.dtype) != out.dtype or info.shape != out.shape:
        raise ModelError(
            f"{path}: tensor {name} is {info.dtype} {list(info.shape)}, "
            f"expected {out.dtype} {list(out.shape)}"
        )
    view = out.reshape(-1).view(np.uint8).data
    try:
        with open(path, "rb") as f:
            f.seek(info.offset)
            done = 0
            while done < len(view):
                got = f.readinto(view[done : done + READ_CHUNK_BYTES])
                if not got:
                    raise ModelError(f"{path}: tensor {name} is truncated")
                done += got
    except OSError as exc:
        raise ModelError(f"{path}: cannot read tensor {name}: {exc}") from None
    return out


def write_file(path: Path, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    """Write in-memory tensors (Bf16-tagged arrays as BF16) atomically (tmp + fsync + rename)."""
    path = Path(path)
    specs = []
    for name in sorted(tensors):
        arr = tensors[name]
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        st = "BF16" if isinstance(arr, Bf16) else _NUMPY_TO_ST.get(dtype)
        if st is None:
            raise ModelError(f"tensor {name}: dtype {arr.dtype} cannot be stored")
        plain = np.ascontiguousarray(arr.view(np.ndarray))
        specs.append((name, st, plain.shape, lambda plain=plain: plain))
    tmp = path.with_name(path.name + ".tmp")
    write_safetensors(tmp, specs, {str(k): str(v) for k, v in (metadata or {}).items()})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
