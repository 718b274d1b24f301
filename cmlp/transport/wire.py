"""Wire-level names: message types, flags, tensor dtypes, and the Tensor value.

The byte-level codec itself is Cython (``cmlp._frame``); this module gives
its numbers Python names and maps tensor dtypes to numpy.
"""

from __future__ import annotations

import enum
from typing import Dict, Sequence

import numpy as np

from cmlp import _frame
from cmlp.errors import ShapeOverflow, UnknownDType

# Defined once, in pyx/wire.pxd (compiled into cmlp._frame); named here for Python.
_WIRE = _frame.WIRE
HEADER_SIZE: int = _WIRE["HEADER_SIZE"]  # 13
MAGIC: int = _WIRE["MAGIC"]  # 0xCF4D
PROTOCOL_VERSION: int = _WIRE["PROTOCOL_VERSION"]  # 4
MAX_PAYLOAD_SIZE: int = _WIRE["MAX_PAYLOAD_SIZE"]  # 32 MiB
TAG_SIZE: int = _WIRE["TAG_SIZE"]  # 16
HANDSHAKE_MAX_BUFFERED: int = _WIRE["HANDSHAKE_MAX_BUFFERED"]  # 66 573
MAX_DOCUMENT_SIZE: int = _WIRE["MAX_DOCUMENT_SIZE"]  # attestation document in a hello


class MsgType(enum.IntEnum):
    HELLO = _WIRE["MSG_HELLO"]  # 0x01
    DATA = _WIRE["MSG_DATA"]  # 0x02
    ERROR = _WIRE["MSG_ERROR"]  # 0x03
    HEARTBEAT = _WIRE["MSG_HEARTBEAT"]  # 0x04
    SHUTDOWN = _WIRE["MSG_SHUTDOWN"]  # 0x05
    TENSOR = _WIRE["MSG_TENSOR"]  # 0x06

    @property
    def type_name(self) -> str:
        return self.name.capitalize()


class Flag(enum.IntFlag):
    NONE = 0x00
    ENCRYPTED = _WIRE["FLAG_ENCRYPTED"]  # 0x01
    TENSOR_PAYLOAD = _WIRE["FLAG_TENSOR_PAYLOAD"]  # 0x02
    BATCH = 0x04
    COMPRESSED = 0x08


def type_name(code: int) -> str:
    try:
        return MsgType(code).type_name
    except ValueError:
        return f"type 0x{code:02x}"


class DType(enum.IntEnum):
    """Tensor element types (transport.md section 2.2). Elements are little-endian."""

    F32 = 0
    F64 = 1
    F16 = 2
    BF16 = 3
    I32 = 4
    I64 = 5
    U8 = 6
    U32 = 7

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype of the raw elements (BF16 is carried as its uint16 bits)."""
        return _NUMPY[self]

    @classmethod
    def from_code(cls, code: int) -> "DType":
        try:
            return cls(code)
        except ValueError:
            raise UnknownDType(code) from None

    @classmethod
    def from_numpy(cls, dtype) -> "DType":
        dt = np.dtype(dtype)
        key = (dt.kind, dt.itemsize)
        if key not in _FROM_NUMPY:
            raise ValueError(f"numpy dtype {dt} has no wire dtype")
        return _FROM_NUMPY[key]


_NUMPY: Dict[DType, np.dtype] = {
    DType.F32: np.dtype("<f4"),
    DType.F64: np.dtype("<f8"),
    DType.F16: np.dtype("<f2"),
    DType.BF16: np.dtype("<u2"),
    DType.I32: np.dtype("<i4"),
    DType.I64: np.dtype("<i8"),
    DType.U8: np.dtype("u1"),
    DType.U32: np.dtype("<u4"),
}
_ITEMSIZE = {d: dt.itemsize for d, dt in _NUMPY.items()}
_DTYPE_BY_CODE = tuple(DType)
_NUMPY_BY_CODE = tuple(_NUMPY[d] for d in _DTYPE_BY_CODE)
_decode_tensor_header = _frame.decode_tensor_header
_frombuffer = np.frombuffer
_new_object = object.__new__
_FROM_NUMPY = {
    ("f", 4): DType.F32,
    ("f", 8): DType.F64,
    ("f", 2): DType.F16,
    ("i", 4): DType.I32,
    ("i", 8): DType.I64,
    ("u", 1): DType.U8,
    ("u", 4): DType.U32,
}


class Tensor:
    """A named n-dimensional array as carried by a Tensor frame.

    ``data`` is a numpy array of ``dtype.numpy`` with ``shape``.  A received
    tensor is a zero-copy view of the channel's receive buffer; it stays valid
    for as long as you hold it (the channel never reuses memory that a live
    view points at).
    """

    __slots__ = ("name", "dtype", "shape", "data")

    def __init__(self, name: str, dtype: DType, shape: Sequence[int], data: np.ndarray):
        self.name = name
        self.dtype = DType(dtype)
        self.shape = tuple(int(d) for d in shape)
        self.data = data

    @classmethod
    def from_array(cls, name: str, array, dtype: DType | None = None) -> "Tensor":
        arr = np.asarray(array)
        if dtype is None:
            dtype = DType.from_numpy(arr.dtype)
        dtype = DType(dtype)
        want = dtype.numpy
        if arr.dtype != want:
            if dtype is DType.BF16 and arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
                arr = arr.astype(want, copy=False)
            else:
                arr = arr.astype(want)
        return cls(name, dtype, arr.shape, np.ascontiguousarray(arr))

    @classmethod
    def from_payload(cls, payload) -> "Tensor":
        """Decode a tensor payload (section 2.5 checks) as a zero-copy view."""
        name, code, shape, offset, length = _decode_tensor_header(payload)
        np_dtype = _NUMPY_BY_CODE[code]
        data = _frombuffer(payload, np_dtype, length // np_dtype.itemsize, offset)
        if len(shape) != 1:
            try:
                data = data.reshape(shape)
            except ValueError:
                # a zero dimension makes the wire size 0 while the other dimensions can
                # still multiply past what numpy can index: unrepresentable, reject
                raise ShapeOverflow(f"tensor shape {shape} cannot be represented") from None
        t = _new_object(cls)  # per-frame path: skip __init__'s checks
        t.name = name
        t.dtype = _DTYPE_BY_CODE[code]
        t.shape = shape
        t.data = data
        return t

    def encode(self) -> bytes:
        """The plaintext tensor payload (sub-header, padding, data)."""
        return _frame.encode_tensor(self.name, int(self.dtype), self.shape, np.ascontiguousarray(self.data))

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def wipe_metadata(self) -> None:
        """Forget name and shape (pipeline.md 2.13: best-effort zeroization)."""
        self.name = ""
        self.shape = ()

    def __repr__(self) -> str:
        return f"Tensor(name={self.name!r}, dtype={self.dtype.name}, shape={self.shape})"
