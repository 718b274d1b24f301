"""Weight conversions for the reduced-precision kernels (csrc/wkernels.h).

Stored forms, as the kernels and safetensors files hold them:

- bf16: uint16 bit patterns (numpy has no bfloat16), fp32 rounded to nearest
  even; NaN stays NaN.
- f16:  uint16 bit patterns of IEEE binary16 (numpy float16).
- int8: symmetric, per output channel: ``q = round(W / s)`` clipped to
  [-127, 127], ``s = max|W| / 127`` over the channel's inputs (s = 1 for an
  all-zero channel).  Conv1D [K, N] channels are columns, Linear [N, K]
  channels are rows; either way scales are [N] float32.

Per channel rather than group-wise: see csrc/wkernels.h (bytes read per
token vs accuracy); the measured cost is in tests/test_quant_quality.py.
"""

from __future__ import annotations

import numpy as np

CONV1D = "conv1d"
LINEAR = "linear"
INT8_MAX = 127


def to_bf16(w: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bit patterns (uint16), round to nearest even."""
    bits = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(w)
    if nan.any():
        out[nan] = ((bits[nan] >> 16) | np.uint32(0x40)).astype(np.uint16)  # quiet NaN
    return out


def bf16_to_f32(h: np.ndarray) -> np.ndarray:
    return (np.asarray(h, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def to_f16(w: np.ndarray) -> np.ndarray:
    return np.asarray(w, dtype=np.float32).astype(np.float16).view(np.uint16)


def quantize_int8(w: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """fp32 weights -> (int8 q of the same shape, float32 scales [N])."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2 or layout not in (CONV1D, LINEAR):
        raise ValueError(f"need a 2-D weight and layout conv1d|linear, got {w.shape} {layout}")
    axis = 0 if layout == CONV1D else 1  # reduce over the input features
    absmax = np.max(np.abs(w), axis=axis)
    scales = np.where(absmax > 0, absmax / INT8_MAX, 1.0).astype(np.float32)
    shaped = scales[None, :] if layout == CONV1D else scales[:, None]
    q = np.clip(np.rint(w / shaped), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scales


def dequantize_int8(q: np.ndarray, scales: np.ndarray, layout: str) -> np.ndarray:
    shaped = scales[None, :] if layout == CONV1D else scales[:, None]
    return q.astype(np.float32) * shaped


class QuantizedWeight:
    """A matmul weight held in its stored form, as ShardEngine takes it.

    ``data``: uint16 (bf16/f16 bit patterns) or int8, the stored shape
    ([K, N] Conv1D, [N, K] Linear); ``scales``: float32 [N] for int8.
    """

    __slots__ = ("data", "dtype", "scales")

    def __init__(self, data: np.ndarray, dtype: str, scales: np.ndarray | None = None):
        self.data = data
        self.dtype = dtype
        self.scales = scales

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (self.scales.nbytes if self.scales is not None else 0)

    def __repr__(self) -> str:
        return f"QuantizedWeight({self.dtype}, {self.data.dtype} {self.data.shape})"
