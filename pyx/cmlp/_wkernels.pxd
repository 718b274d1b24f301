# cython: language_level=3
"""C-level interface of cmlp._wkernels: matmuls against bf16 / fp16 / int8 /
fp32 weights, cimported by cmlp._gpt2 and by the llama/qwen2 engines.

The one entry for nn.Linear weights is ``linear_forward``::

    from cmlp._wkernels cimport wk_weight, WK_BF16, linear_forward, tile_floats

    cdef wk_weight w
    w.dtype = WK_BF16          # WK_F32 | WK_BF16 | WK_F16 | WK_I8
    w.data = <const void*>ptr  # [N, K] row-major, elements of w.dtype
    w.scales = NULL            # WK_I8: [N] fp32, W[n, k] ~= q[n, k] * scales[n]
    w.group_size = 0           # per output channel (the only format)
    w.N = out_features
    w.K = in_features
    w.flags = 0                # or WK_FP32_ACT: never round activations (bf16)
    linear_forward(<void*>pool, out, x, M, &w, bias, tiles)

- ``pool`` is a ``gpt2_pool*`` (csrc/gpt2_kernels.h) passed as void*, so this
  .pxd does not clash with the engines' own extern declarations of it.
- ``out`` [M, N] fp32 (row stride N), ``x`` [M, K] fp32 (row stride K),
  ``bias`` [N] or NULL.  Activations are always fp32; accumulation is fp32.
- ``tiles``: scratch of ``pool threads * tile_floats()`` floats, allocated
  once by the caller (used when M > WK_SMALL_M: weight tiles are converted
  to fp32 there and multiplied with OpenBLAS sgemm).  No allocation inside.
- M <= WK_SMALL_M rows (decode, short prompts) stream each weight byte once.
- Call with the GIL released or held; it never touches Python objects.
  Returns 0, or -1 when ``wk_weight_check`` rejects the descriptor.

``conv1d_forward`` is the same for HF Conv1D weights [K, N] (GPT-2); it also
needs ``partials`` of ``conv1d_partial_floats(M, K, N, dtype, threads)`` floats.
"""

cdef extern from "wkernels.h" nogil:
    enum:
        WK_F32
        WK_BF16
        WK_F16
        WK_I8
        WK_SMALL_M
        WK_FP32_ACT
        WK_ROW_EXACT
    ctypedef struct wk_weight:
        int dtype
        const void* data
        const float* scales
        long group_size
        long N
        long K
        int flags
    size_t wk_dtype_size(int dtype)
    int wk_weight_check(const wk_weight* w)
    void wk_dequant_tile(float* out, const wk_weight* w, int linear, long r0, long rows,
                         long c0, long cols)

# C symbols above are linked into cmlp._wkernels only: other modules call the
# cdef functions below (exported through the module's C-API capsule).
cdef int weight_check(const wk_weight* w) noexcept nogil
cdef void dequant_rows(float* out, const wk_weight* w, long r0, long rows) noexcept nogil
cdef long tile_floats() noexcept nogil
cdef long conv1d_partial_floats(long M, long K, long N, int dtype, int threads) noexcept nogil
cdef int linear_forward(void* pool, float* out, const float* x, long M, const wk_weight* w,
                        const float* bias, float* tiles) noexcept nogil
cdef int conv1d_forward(void* pool, float* out, const float* x, long M, const wk_weight* w,
                        const float* bias, float* partials, float* tiles) noexcept nogil
