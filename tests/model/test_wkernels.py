"""Reduced-precision weight kernels (csrc/wkernels.c) against numpy references.

Every dispatch path this CPU can run is forced in turn (generic, avx2,
avx512, avx512bf16), for every stored dtype, both layouts, decode-sized and
prefill-sized M, odd shapes (tails of every vector loop) and 1-2 threads.
The reference is float64 numpy on the exactly dequantized weights; the
bound scales with sum_k |x_k w_k| (fp32 accumulation error).
"""

import numpy as np
import pytest

from cmlp import _wkernels as wk
from cmlp.model import quant

ISAS = wk.isa_names()[: wk.isa_names().index(wk.isa_detected()) + 1]
SHAPES = [  # (M, K, N)
    (1, 1, 1),
    (1, 17, 33),
    (1, 768, 300),
    (2, 63, 15),
    (3, 100, 65),
    (8, 130, 47),
    (9, 40, 31),
    (37, 300, 400),
    (1, 1000, 2),
    (70, 96, 300),
    (130, 64, 17),
]
# the fast tier: every ISA, dtype and layout on a decode row with vector-loop tails, a small
# prefill on 2 threads and a large one; the full shape x thread grid is slow
FAST_SHAPES = {(1, 17, 33, 1), (9, 40, 31, 2), (37, 300, 400, 2)}


@pytest.fixture(params=ISAS)
def isa(request):
    before = wk.isa_active()
    assert wk.set_isa(request.param) == request.param
    yield request.param
    wk.set_isa(before)


def stored(w, dtype, layout):
    """(stored array, scales or None, exact fp32 dequantization)."""
    if dtype == "f32":
        return w, None, w
    if dtype == "bf16":
        h = quant.to_bf16(w)
        return h, None, quant.bf16_to_f32(h)
    if dtype == "f16":
        h = quant.to_f16(w)
        return h, None, h.view(np.float16).astype(np.float32)
    q, s = quant.quantize_int8(w, layout)
    return q, s, quant.dequantize_int8(q, s, layout)


def tolerance(x, w_ref, layout, dp_bf16):
    """Bound on |out - ref|: fp32 rounding of sum_k |x w|, or bf16 activations."""
    mag = np.abs(x.astype(np.float64)) @ np.abs(
        w_ref.astype(np.float64) if layout == "conv1d" else w_ref.astype(np.float64).T
    )
    rel = 2.0**-8 if dp_bf16 else 4e-6 * max(1.0, np.log2(x.shape[1]))
    return rel * mag + 1e-6


def vnni_slack(isa, dtype, layout, x, w_ref):
    """Extra bound where vpdpwssd runs (int8 Linear on VNNI): activations rounded to int16,
    step max|x_m| / 32767 per row; 0 elsewhere."""
    if isa in ("avx512vnni", "avx512bf16") and dtype == "i8" and layout == "linear":
        step = np.abs(x).max(axis=1, keepdims=True) / 32767
        return 0.5 * step * (np.abs(w_ref).sum(axis=1)[None, :])
    return 0.0


@pytest.mark.fast_cases(lambda M, K, N, threads, **_: (M, K, N, threads) in FAST_SHAPES)
@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16", "i8"])
@pytest.mark.parametrize("layout", ["conv1d", "linear"])
@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_matches_numpy(isa, dtype, layout, M, K, N, threads):
    rng = np.random.default_rng(M * 1000003 + K * 1009 + N)
    w = rng.standard_normal((K, N) if layout == "conv1d" else (N, K)).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    data, scales, ref_w = stored(w, dtype, layout)
    out = wk.matmul(x, data, layout=layout, dtype=dtype, scales=scales, bias=bias, threads=threads)
    w64 = ref_w.astype(np.float64)
    ref = x.astype(np.float64) @ (w64 if layout == "conv1d" else w64.T) + bias
    # vdpbf16ps (bf16 activations) runs for Linear bf16 with 2 <= M <= 8
    dp = isa == "avx512bf16" and dtype == "bf16" and layout == "linear" and 2 <= M <= wk.SMALL_M
    tol = tolerance(x, ref_w, layout, dp) + vnni_slack(isa, dtype, layout, x, ref_w)
    err = np.abs(out - ref)
    assert np.all(err <= tol), f"max err {err.max()} (bound {tol.ravel()[err.argmax()]})"


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16", "i8"])
@pytest.mark.parametrize("layout", ["conv1d", "linear"])
def test_row_exact_rows_do_not_depend_on_the_batch(isa, dtype, layout):
    """Batched decode rows (``row_exact``: WK_FP32_ACT | WK_ROW_EXACT): each row of an
    M-row call, M = 1..8, has the bits of the same row computed alone, on every dispatch
    path (on AVX-512 the dot products of 4-8 rows are reduced together, of 1-3 one by one;
    K = 580 leaves a scalar tail), and stays within the fp32 bound of the reference."""
    rng = np.random.default_rng(580)
    K, N = 580, 70
    w = rng.standard_normal((K, N) if layout == "conv1d" else (N, K)).astype(np.float32)
    x = rng.standard_normal((wk.SMALL_M, K)).astype(np.float32)
    data, scales, ref_w = stored(w, dtype, layout)

    def run(rows):
        return wk.matmul(
            np.ascontiguousarray(rows),
            data,
            layout=layout,
            dtype=dtype,
            scales=scales,
            threads=2,
            row_exact=True,
        )

    solo = np.concatenate([run(x[m : m + 1]) for m in range(wk.SMALL_M)])
    for M in range(2, wk.SMALL_M + 1):
        assert np.array_equal(run(x[:M]), solo[:M]), f"{M} rows differ from their solo runs"
    w64 = ref_w.astype(np.float64)
    ref = x.astype(np.float64) @ (w64 if layout == "conv1d" else w64.T)
    tol = tolerance(x, ref_w, layout, False) + vnni_slack(isa, dtype, layout, x, ref_w)
    assert np.all(np.abs(solo - ref) <= tol)


def test_row_exact_takes_at_most_small_m_rows():
    w = np.ones((4, 16), np.float32)
    with pytest.raises(ValueError, match="at most"):
        wk.matmul(np.ones((wk.SMALL_M + 1, 16), np.float32), w, layout="linear", dtype="f32", row_exact=True)


def test_vnni_int16_activations_saturate_and_zero_rows():
    """Rows of zeros, one huge value, and mixed magnitudes on the int8 path."""
    rng = np.random.default_rng(9)
    w = rng.standard_normal((70, 96)).astype(np.float32)
    q, s = quant.quantize_int8(w, "linear")
    x = rng.standard_normal((4, 96)).astype(np.float32)
    x[0] = 0.0
    x[1, 5] = 3e4
    x[2] *= 1e-30
    ref = x.astype(np.float64) @ quant.dequantize_int8(q, s, "linear").T.astype(np.float64)
    for isa in ISAS:
        before = wk.isa_active()
        wk.set_isa(isa)
        try:
            out = wk.matmul(x, q, layout="linear", dtype="i8", scales=s)
        finally:
            wk.set_isa(before)
        step = np.abs(x).max(axis=1, keepdims=True) / 32767
        bound = (
            0.5 * step * np.abs(quant.dequantize_int8(q, s, "linear")).sum(axis=1)[None]
            + 1e-5 * np.abs(x) @ np.abs(w.T)
            + 1e-30
        )
        assert np.all(np.abs(out - ref) <= bound), isa
        assert np.all(out[0] == 0.0)


@pytest.mark.parametrize("dtype", ["bf16", "f16", "i8"])
@pytest.mark.parametrize("layout", ["conv1d", "linear"])
def test_dequantize_is_exact(isa, dtype, layout):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((37, 45)).astype(np.float32)
    data, scales, ref_w = stored(w, dtype, layout)
    out = wk.dequantize(data, layout=layout, dtype=dtype, scales=scales)
    np.testing.assert_array_equal(out, ref_w)


def test_f16_special_values(isa):
    """Subnormals, zeros, infinities and NaN convert exactly on every path."""
    specials = np.array(
        [
            0.0,
            -0.0,
            6e-8,
            -6e-8,
            3e-5,
            65504.0,
            -65504.0,
            np.inf,
            -np.inf,
            1.0,
            -2.5,
            1e-4,
            0.333,
            np.nan,
            5.96e-8,
            6.1e-5,
            7.0,
        ],
        np.float16,
    )
    h = np.ascontiguousarray(np.tile(specials, (3, 2)).view(np.uint16))  # [3, 34]
    out = wk.dequantize(h, layout="linear", dtype="f16")
    np.testing.assert_array_equal(out, h.view(np.float16).astype(np.float32))


def test_bf16_rounding_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    w = np.concatenate(
        [
            rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10000),
            np.array([0.0, -0.0, np.inf, -np.inf, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.4e38, 1e-40], np.float32),
        ]
    ).astype(np.float32)
    ref = torch.from_numpy(w).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(quant.to_bf16(w), ref)


def test_int8_quantization_round_trip():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 48)).astype(np.float32)
    w[:, 3] = 0.0  # an all-zero channel keeps scale 1 and decodes to zeros
    for layout in ("conv1d", "linear"):
        q, s = quant.quantize_int8(w, layout)
        assert q.dtype == np.int8 and s.shape == (48 if layout == "conv1d" else 64,)
        back = quant.dequantize_int8(q, s, layout)
        per_channel = s[None, :] if layout == "conv1d" else s[:, None]
        assert np.all(np.abs(back - w) <= 0.5 * per_channel + 1e-7)
        assert np.abs(q).max() == 127


def test_forced_isa_is_reported_and_bounded():
    names = wk.isa_names()
    before = wk.isa_active()
    try:
        assert wk.set_isa("generic") == "generic"
        assert wk.isa_active() == "generic"
        best = names.index(wk.isa_detected())
        for name in names[best + 1 :]:
            with pytest.raises(ValueError):
                wk.set_isa(name)
        with pytest.raises(ValueError):
            wk.set_isa("sse9")
    finally:
        wk.set_isa(before)


def test_bad_arguments_are_rejected():
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError):
        wk.matmul(x, np.zeros((4, 3), np.int8), layout="conv1d", dtype="i8")  # no scales
    with pytest.raises(ValueError):
        wk.matmul(x, np.zeros((5, 3), np.float32), layout="conv1d", dtype="f32")  # K mismatch
    with pytest.raises(ValueError):
        wk.matmul(x, np.zeros((4, 3), np.float32), layout="conv1d", dtype="bf16")  # storage
    with pytest.raises(ValueError):
        wk.matmul(x, np.zeros((3, 4), np.uint16), layout="rows", dtype="bf16")


@pytest.mark.parametrize("M", [1, 3, 20])
def test_nonfinite_activations_propagate(isa, M):
    """NaN / inf inputs give NaN (or inf) outputs on every path, never finite garbage."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((40, 64)).astype(np.float32)
    x = rng.standard_normal((M, 64)).astype(np.float32)
    x[0, 7] = np.nan
    if M > 1:
        x[1, 3] = np.inf
    for dtype in ("f32", "bf16", "f16", "i8"):
        data, scales, _ = stored(w, dtype, "linear")
        out = wk.matmul(x, data, layout="linear", dtype=dtype, scales=scales)
        assert np.all(~np.isfinite(out[: min(M, 2)])), (isa, dtype)
        assert np.all(np.isfinite(out[2:])), (isa, dtype)
