"""Raw safetensors access for dtypes numpy lacks (BF16), and a writer.

The ``safetensors`` library's numpy framework cannot hold bfloat16, so BF16
tensors are read here as their uint16 bit patterns, straight from the file
(no mapping: see cmlp.model.weights on RSS), and files with BF16 tensors are
written here too.  The format (https://huggingface.co/docs/safetensors):
u64 little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the data block; offsets are relative to the data block.

Every header field is checked before use: the file is not trusted to match
what it claims (lengths, offsets inside the file, byte counts = shape x size).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from cmlp.errors import ModelError

MAX_HEADER_BYTES = 100 << 20    # the library's own limit
READ_CHUNK_BYTES = 32 << 20

# safetensors dtype -> numpy storage dtype (BF16 as uint16 bit patterns)
STORAGE = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
           "I8": np.dtype("i1"), "U8": np.dtype("u1"), "I32": np.dtype("<i4"),
           "I64": np.dtype("<i8"), "BOOL": np.dtype("?")}
NUMPY_TO_ST = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("i1"): "I8",
               np.dtype("u1"): "U8", np.dtype("<i4"): "I32", np.dtype("<i8"): "I64",
               np.dtype("?"): "BOOL"}


class Bf16(np.ndarray):
    """Marker: a uint16 array to be written as BF16 (see as_bf16)."""


def as_bf16(bits: np.ndarray) -> np.ndarray:
    """Tag uint16 bf16 bit patterns so write_file stores them as BF16."""
    return np.ascontiguousarray(bits, dtype=np.uint16).view(Bf16)


def read_header(path: Path) -> tuple[dict, int]:
    """(tensor entries without __metadata__, offset of the data block)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ModelError(f"{path}: truncated safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise ModelError(f"{path}: safetensors header length {n} is invalid")
            header = json.loads(f.read(n))
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelError(f"{path}: cannot read safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data_start = 8 + n
    for name, entry in header.items():
        _check_entry(path, name, entry, size - data_start)
    return header, data_start


def _check_entry(path: Path, name: str, entry, data_bytes: int) -> None:
    ok = (isinstance(entry, dict) and entry.get("dtype") in STORAGE
          and isinstance(entry.get("shape"), list)
          and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                  for d in entry["shape"])
          and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
          and all(isinstance(o, int) and not isinstance(o, bool) for o in entry["data_offsets"]))
    if not ok:
        raise ModelError(f"{path}: malformed safetensors entry for tensor {name}")
    begin, end = entry["data_offsets"]
    count = int(np.prod(entry["shape"], dtype=np.int64)) if entry["shape"] else 1
    if not 0 <= begin <= end <= data_bytes or end - begin != count * STORAGE[entry["dtype"]].itemsize:
        raise ModelError(f"{path}: tensor {name} data offsets [{begin}, {end}) do not match "
                         f"its {entry['dtype']} shape {entry['shape']} or the file size")


def read_into(path: Path, name: str, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (C-contiguous, the tensor's storage dtype and shape) from the file."""
    header, data_start = read_header(path)
    entry = header.get(name)
    if entry is None:
        raise ModelError(f"{path}: missing tensor {name}")
    if STORAGE[entry["dtype"]] != out.dtype or tuple(entry["shape"]) != out.shape:
        raise ModelError(f"{path}: tensor {name} is {entry['dtype']} {entry['shape']}, "
                         f"expected {out.dtype} {list(out.shape)}")
    view = memoryview(out.reshape(-1).view(np.uint8))
    begin = data_start + entry["data_offsets"][0]
    try:
        with open(path, "rb") as f:
            f.seek(begin)
            done = 0
            while done < len(view):
                got = f.readinto(view[done:done + READ_CHUNK_BYTES])
                if not got:
                    raise ModelError(f"{path}: tensor {name} is truncated")
                done += got
    except OSError as exc:
        raise ModelError(f"{path}: cannot read tensor {name}: {exc}") from None
    return out


def write_file(path: Path, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    """Write tensors (Bf16-tagged arrays as BF16) atomically (tmp + rename)."""
    path = Path(path)
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        arr = tensors[name]
        st = "BF16" if isinstance(arr, Bf16) else NUMPY_TO_ST.get(arr.dtype.newbyteorder("<")
                                                                  if arr.dtype.byteorder == ">"
                                                                  else arr.dtype)
        if st is None:
            raise ModelError(f"tensor {name}: dtype {arr.dtype} cannot be stored")
        arr = np.ascontiguousarray(arr)
        header[name] = {"dtype": st, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)          # data block 8-byte aligned, as the library writes
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for arr in arrays:
            f.write(memoryview(arr.reshape(-1).view(np.uint8)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
