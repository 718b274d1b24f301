# cython: language_level=3
"""Matmuls against reduced-precision weights, driven by the worker pool.

The C kernels (csrc/wkernels.c) compute slabs; this module cuts a matmul
into chunks for ``gpt2_pool_run`` (csrc/gpt2_kernels.c) and reduces them:

- M <= WK_SMALL_M input rows (decode): chunks are slabs of weight rows read
  once in address order.  Conv1D [K, N] chunks each own a [M, N] partial sum,
  added in chunk order afterwards (the result does not depend on which
  thread ran which chunk); Linear [N, K] chunks own disjoint outputs.
- More rows (prefill): [TILE_M x TILE_N] output tiles; each converts its
  weight panel to fp32 TILE_K rows at a time into per-thread scratch and
  multiplies with OpenBLAS sgemm (the conversion is amortised over TILE_M
  rows, so prefill runs at fp32 GEMM speed whatever the stored dtype).

The cdef API is documented in pyx/cmlp/_wkernels.pxd; the def functions
below are for tests, the bench and the quantizer.
"""

import numpy as np
cimport numpy as cnp

from blas cimport gemm, openblas_set_num_threads

cnp.import_array()

cdef extern from "gpt2_kernels.h" nogil:
    ctypedef void (*gpt2_task_fn)(void* ctx, long chunk, int thread_idx) noexcept nogil
    ctypedef struct gpt2_pool:
        pass
    gpt2_pool* gpt2_pool_create(int n_threads)
    void gpt2_pool_destroy(gpt2_pool* pool)
    int gpt2_pool_threads(const gpt2_pool* pool)
    void gpt2_pool_run(gpt2_pool* pool, gpt2_task_fn fn, void* ctx, long n_chunks)

cdef extern from "wkernels.h" nogil:
    int WK_ISA_GENERIC
    int WK_ISA_AVX512VNNI
    int WK_N_ISAS
    int wk_isa_detected()
    int wk_isa_active()
    int wk_set_isa(int isa)
    const char* wk_isa_name(int isa)
    void wk_conv1d_slab(float* y, const float* x, long ldx, int M, const wk_weight* w,
                        long k_begin, long k_end)
    void wk_linear_slab(float* y, long ldy, const float* x, long ldx, int M,
                        const wk_weight* w, long n_begin, long n_end)
    float wk_stream_sum(const float* p, long n)
    int WK_BLOCK_M
    int wk_linear_i8_block(float* y, long ldy, const float* x, long ldx, int M, const wk_weight* w,
                           long n_begin, long n_end, void* scratch, size_t scratch_bytes)
    void wk_reduce_partials(float* out, const float* partials, long n_chunks, int M, long N,
                            const float* bias, const float* scales)

openblas_set_num_threads(1)   # our pool owns all parallelism (see _gpt2.pyx)

cdef enum:
    # bytes of weights per decode chunk (as _gpt2.pyx: amortise a claim,
    # keep each thread streaming, let a late thread not unbalance a step)
    GEMV_CHUNK_BYTES = 262144
    SMALL_M_CHUNK_BYTES = 1048576
    TILE_M = 512
    TILE_N = 384
    TILE_K = 256
    I8_BLOCK_N = 256            # int8 VNNI prefill: weight rows per chunk

DTYPES = {"f32": WK_F32, "bf16": WK_BF16, "f16": WK_F16, "i8": WK_I8}
STORAGE = {WK_F32: np.float32, WK_BF16: np.uint16, WK_F16: np.uint16, WK_I8: np.int8}
SMALL_M = WK_SMALL_M


cdef inline long ceil_div(long a, long b) noexcept nogil:
    return (a + b - 1) // b


cdef int weight_check(const wk_weight* w) noexcept nogil:
    """0 when the kernels accept the descriptor (wk_weight_check)."""
    return wk_weight_check(w)


cdef void dequant_rows(float* out, const wk_weight* w, long r0, long rows) noexcept nogil:
    """out[rows, K] = fp32 rows [r0, r0+rows) of a Linear [N, K] weight."""
    wk_dequant_tile(out, w, 1, r0, rows, 0, w.K)


cdef long tile_floats() noexcept nogil:
    return <long>TILE_K * TILE_N


cdef inline long slab_rows(long M, long n_rows, long width, int dtype,
                           int threads) noexcept nogil:
    """Weight rows (of `width` elements, n_rows in all) per decode chunk.

    About GEMV_CHUNK_BYTES per chunk, with the chunk count rounded up to a
    multiple of the thread count: int8 rows are 4x narrower than fp32 ones,
    and 3 chunks on 2 threads would leave one idle a third of the time."""
    cdef long chunk_bytes = GEMV_CHUNK_BYTES if M == 1 else SMALL_M_CHUNK_BYTES
    cdef long total = n_rows * width * <long>wk_dtype_size(dtype)
    cdef long n_chunks = ceil_div(total, chunk_bytes)
    if threads > 1:
        n_chunks = ceil_div(n_chunks, threads) * threads
    return max(1, ceil_div(n_rows, n_chunks))


cdef long conv1d_partial_floats(long M, long K, long N, int dtype, int threads) noexcept nogil:
    """Partials conv1d_forward needs for M rows, with or without WK_ROW_EXACT."""
    if M > WK_SMALL_M:
        return 0
    return max(ceil_div(K, slab_rows(M, K, N, dtype, threads)),
               ceil_div(K, slab_rows(1, K, N, dtype, threads))) * M * N


cdef struct WTask:
    float* out                  # [M, N]
    const float* x              # [M, K]
    const wk_weight* w
    const float* bias
    long M
    int linear
    long chunk_rows             # slabs: weight rows per chunk
    long col_tiles              # tiles: tiles per row of tiles
    float* partials             # Conv1D slabs: [n_chunks, M, N]
    float* tiles                # tiles: [threads, TILE_K * TILE_N]


cdef void conv1d_slab_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    cdef WTask* t = <WTask*>ctx
    cdef long k_begin = chunk * t.chunk_rows
    cdef long k_end = min(k_begin + t.chunk_rows, t.w.K)
    wk_conv1d_slab(t.partials + chunk * t.M * t.w.N, t.x, t.w.K, <int>t.M, t.w, k_begin, k_end)


cdef void linear_slab_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    cdef WTask* t = <WTask*>ctx
    cdef long n_begin = chunk * t.chunk_rows
    cdef long n_end = min(n_begin + t.chunk_rows, t.w.N)
    cdef long m, n
    wk_linear_slab(t.out, t.w.N, t.x, t.w.K, <int>t.M, t.w, n_begin, n_end)
    if t.bias != NULL:
        for m in range(t.M):
            for n in range(n_begin, n_end):
                t.out[m * t.w.N + n] += t.bias[n]


cdef void linear_exact_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """linear_slab_chunk for any M with WK_ROW_EXACT: the slab is read from memory once
    and applied to every group of at most WK_SMALL_M rows from cache (each row's result
    is the one it gets alone: same slab bounds, same per-row arithmetic)."""
    cdef WTask* t = <WTask*>ctx
    cdef long n_begin = chunk * t.chunk_rows
    cdef long n_end = min(n_begin + t.chunk_rows, t.w.N)
    cdef long m0 = 0, m, n, rows
    while m0 < t.M:
        rows = min(<long>WK_SMALL_M, t.M - m0)
        wk_linear_slab(t.out + m0 * t.w.N, t.w.N, t.x + m0 * t.w.K, t.w.K, <int>rows, t.w, n_begin, n_end)
        m0 += rows
    if t.bias != NULL:
        for m in range(t.M):
            for n in range(n_begin, n_end):
                t.out[m * t.w.N + n] += t.bias[n]


cdef void tile_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """out[m0:m0+rows, n0:n0+cols] = x @ W (+ bias) through fp32 weight panels."""
    cdef WTask* t = <WTask*>ctx
    cdef long N = t.w.N, K = t.w.K
    cdef long m0 = (chunk // t.col_tiles) * TILE_M
    cdef long n0 = (chunk % t.col_tiles) * TILE_N
    cdef long rows = min(<long>TILE_M, t.M - m0)
    cdef long cols = min(<long>TILE_N, N - n0)
    cdef float* out = t.out + m0 * N + n0
    cdef float* panel = t.tiles + thread_idx * tile_floats()
    cdef long k0, kc, r, c
    cdef float beta = 0.0
    if t.bias != NULL:
        for r in range(rows):
            for c in range(cols):
                out[r * N + c] = t.bias[n0 + c]
        beta = 1.0
    k0 = 0
    while k0 < K:
        kc = min(<long>TILE_K, K - k0)
        if t.linear:
            wk_dequant_tile(panel, t.w, 1, n0, cols, k0, kc)     # [cols, kc]
            gemm(False, True, rows, cols, kc, 1.0, t.x + m0 * K + k0, K, panel, kc,
                 beta, out, N)
        else:
            wk_dequant_tile(panel, t.w, 0, k0, kc, n0, cols)     # [kc, cols]
            gemm(False, False, rows, cols, kc, 1.0, t.x + m0 * K + k0, K, panel, cols,
                 beta, out, N)
        beta = 1.0
        k0 += kc


cdef void i8_block_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """Rows [m0, m0+64) x weight rows [n0, n0+I8_BLOCK_N) on the VNNI path;
    the fp32 panel path for this tile if the kernel declines."""
    cdef WTask* t = <WTask*>ctx
    cdef long N = t.w.N, K = t.w.K
    cdef long m0 = (chunk // t.col_tiles) * WK_BLOCK_M
    cdef long n0 = (chunk % t.col_tiles) * I8_BLOCK_N
    cdef long rows = min(<long>WK_BLOCK_M, t.M - m0)
    cdef long n1 = min(n0 + I8_BLOCK_N, N)
    cdef long m, n
    wk_linear_i8_block(t.out + m0 * N, N, t.x + m0 * K, K, <int>rows, t.w, n0, n1,
                       t.tiles + thread_idx * tile_floats(), tile_floats() * sizeof(float))
    if t.bias != NULL:
        for m in range(m0, m0 + rows):
            for n in range(n0, n1):
                t.out[m * N + n] += t.bias[n]


cdef bint i8_block_fits(const wk_weight* w) noexcept nogil:
    """The VNNI prefill path runs (active ISA has VNNI, scratch holds the rows)."""
    cdef long K32 = w.K - w.K % 32
    return (w.dtype == WK_I8 and K32 > 0 and wk_isa_active() >= WK_ISA_AVX512VNNI
            and <long>WK_BLOCK_M * K32 * 2 <= tile_floats() * <long>sizeof(float))


cdef void run_tiles(gpt2_pool* pool, WTask* t) noexcept nogil:
    t.col_tiles = ceil_div(t.w.N, TILE_N)
    gpt2_pool_run(pool, tile_chunk, t, ceil_div(t.M, TILE_M) * t.col_tiles)


cdef int linear_forward(void* pool, float* out, const float* x, long M, const wk_weight* w,
                        const float* bias, float* tiles) noexcept nogil:
    if wk_weight_check(w) != 0 or M <= 0:
        return -1
    cdef WTask t
    t.out = out
    t.x = x
    t.w = w
    t.bias = bias
    t.M = M
    t.linear = 1
    t.partials = NULL
    t.tiles = tiles
    if w.flags & WK_ROW_EXACT:      # batched decode rows: see wkernels.h
        t.chunk_rows = slab_rows(1, w.N, w.K, w.dtype, gpt2_pool_threads(<gpt2_pool*>pool))
        gpt2_pool_run(<gpt2_pool*>pool, linear_exact_chunk, &t, ceil_div(w.N, t.chunk_rows))
        return 0
    if M > WK_SMALL_M and i8_block_fits(w):
        t.col_tiles = ceil_div(w.N, I8_BLOCK_N)
        gpt2_pool_run(<gpt2_pool*>pool, i8_block_chunk, &t, ceil_div(M, WK_BLOCK_M) * t.col_tiles)
        return 0
    if M > WK_SMALL_M:
        run_tiles(<gpt2_pool*>pool, &t)
        return 0
    t.chunk_rows = slab_rows(M, w.N, w.K, w.dtype, gpt2_pool_threads(<gpt2_pool*>pool))
    gpt2_pool_run(<gpt2_pool*>pool, linear_slab_chunk, &t, ceil_div(w.N, t.chunk_rows))
    return 0


cdef int conv1d_forward(void* pool, float* out, const float* x, long M, const wk_weight* w,
                        const float* bias, float* partials, float* tiles) noexcept nogil:
    if wk_weight_check(w) != 0 or M <= 0:
        return -1
    cdef WTask t
    cdef long m0, n_chunks
    t.out = out
    t.x = x
    t.w = w
    t.bias = bias
    t.M = M
    t.linear = 0
    t.partials = partials
    t.tiles = tiles
    if w.flags & WK_ROW_EXACT:      # batched decode rows: see wkernels.h
        t.chunk_rows = slab_rows(1, w.K, w.N, w.dtype, gpt2_pool_threads(<gpt2_pool*>pool))
        n_chunks = ceil_div(w.K, t.chunk_rows)
        m0 = 0
        while m0 < M:
            t.x = x + m0 * w.K
            t.M = min(<long>WK_SMALL_M, M - m0)
            gpt2_pool_run(<gpt2_pool*>pool, conv1d_slab_chunk, &t, n_chunks)
            wk_reduce_partials(out + m0 * w.N, partials, n_chunks, <int>t.M, w.N, bias,
                               w.scales if w.dtype == WK_I8 else NULL)
            m0 += WK_SMALL_M
        return 0
    if M > WK_SMALL_M:
        run_tiles(<gpt2_pool*>pool, &t)
        return 0
    t.chunk_rows = slab_rows(M, w.K, w.N, w.dtype, gpt2_pool_threads(<gpt2_pool*>pool))
    n_chunks = ceil_div(w.K, t.chunk_rows)
    gpt2_pool_run(<gpt2_pool*>pool, conv1d_slab_chunk, &t, n_chunks)
    wk_reduce_partials(out, partials, n_chunks, <int>M, w.N, bias,
                       w.scales if w.dtype == WK_I8 else NULL)
    return 0


# ---------------------------------------------------------------------------
# Python-level helpers (tests, bench, quantizer)
# ---------------------------------------------------------------------------

def isa_names():
    """Names of the dispatch paths, lowest first."""
    return [wk_isa_name(i).decode() for i in range(WK_N_ISAS)]


def isa_detected():
    """The best path this CPU supports."""
    return wk_isa_name(wk_isa_detected()).decode()


def isa_active():
    """The path the kernels use now (CMLP_WK_ISA may lower it)."""
    return wk_isa_name(wk_isa_active()).decode()


def set_isa(str name):
    """Force a path no better than isa_detected(); returns the active name."""
    names = isa_names()
    if name not in names:
        raise ValueError(f"unknown ISA {name!r}; expected one of {names}")
    if wk_set_isa(names.index(name)) < 0:
        raise ValueError(f"ISA {name} is not supported by this CPU (best: {isa_detected()})")
    return isa_active()


def matmul(cnp.ndarray x, cnp.ndarray w, *, str layout, str dtype, scales=None, bias=None,
           int threads=1, bint row_exact=False):
    """out [M, N] = x [M, K] @ W, W stored as ``dtype`` in ``layout``.

    layout "conv1d": w [K, N]; "linear": w [N, K].  dtype "f32" (float32),
    "bf16"/"f16" (uint16 bit patterns) or "i8" (int8, with scales [N]).
    ``row_exact``: the batched decode rows' mode (WK_FP32_ACT | WK_ROW_EXACT), where
    each row's result does not depend on M (at most WK_SMALL_M rows).
    A fresh pool per call: for tests and the bench, not the serving path.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown weight dtype {dtype!r}")
    if layout not in ("conv1d", "linear"):
        raise ValueError(f"unknown layout {layout!r}")
    cdef int code = DTYPES[dtype]
    if w.ndim != 2 or w.dtype != STORAGE[code] or not w.flags.c_contiguous:
        raise ValueError(f"weights must be C-contiguous 2-D {np.dtype(STORAGE[code])}")
    if x.ndim != 2 or x.dtype != np.float32 or not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous float32 [M, K]")
    cdef long N = w.shape[1] if layout == "conv1d" else w.shape[0]
    cdef long K = w.shape[0] if layout == "conv1d" else w.shape[1]
    cdef long M = x.shape[0]
    if x.shape[1] != K or M < 1:
        raise ValueError(f"x shape {(<object>x).shape} does not match K = {K}")
    if row_exact and M > WK_SMALL_M:
        raise ValueError(f"row_exact takes at most {WK_SMALL_M} rows, got {M}")
    cdef cnp.ndarray sc = None, bs = None
    if code == WK_I8:
        sc = np.ascontiguousarray(scales, dtype=np.float32)
        if (<object>sc).shape != (N,):
            raise ValueError(f"int8 weights need scales [{N}]")
    if bias is not None:
        bs = np.ascontiguousarray(bias, dtype=np.float32)
        if (<object>bs).shape != (N,):
            raise ValueError(f"bias must be [{N}]")
    cdef wk_weight desc
    desc.dtype = code
    desc.data = cnp.PyArray_DATA(w)
    desc.scales = <const float*>cnp.PyArray_DATA(sc) if sc is not None else NULL
    desc.group_size = 0
    desc.flags = (WK_FP32_ACT | WK_ROW_EXACT) if row_exact else 0
    desc.N = N
    desc.K = K
    cdef cnp.ndarray out = np.empty((M, N), np.float32)
    cdef cnp.ndarray partials = np.empty(max(1, conv1d_partial_floats(M, K, N, code, threads)),
                                         np.float32)
    cdef cnp.ndarray tiles = np.empty(threads * tile_floats(), np.float32)
    cdef gpt2_pool* pool = gpt2_pool_create(threads)
    if pool == NULL:
        raise MemoryError("cannot start the worker pool")
    cdef const float* bias_ptr = <const float*>cnp.PyArray_DATA(bs) if bs is not None else NULL
    cdef int rc
    cdef bint linear = layout == "linear"
    try:
        with nogil:
            if linear:
                rc = linear_forward(pool, <float*>cnp.PyArray_DATA(out),
                                    <const float*>cnp.PyArray_DATA(x), M, &desc, bias_ptr,
                                    <float*>cnp.PyArray_DATA(tiles))
            else:
                rc = conv1d_forward(pool, <float*>cnp.PyArray_DATA(out),
                                    <const float*>cnp.PyArray_DATA(x), M, &desc, bias_ptr,
                                    <float*>cnp.PyArray_DATA(partials),
                                    <float*>cnp.PyArray_DATA(tiles))
    finally:
        gpt2_pool_destroy(pool)
    if rc != 0:
        raise ValueError("weight descriptor rejected by wk_weight_check")
    return out


def dequantize(cnp.ndarray w, *, str layout, str dtype, scales=None):
    """fp32 copy of stored weights through the kernels' own tile conversion."""
    cdef int code = DTYPES[dtype]
    if w.ndim != 2 or w.dtype != STORAGE[code] or not w.flags.c_contiguous:
        raise ValueError(f"weights must be C-contiguous 2-D {np.dtype(STORAGE[code])}")
    cdef cnp.ndarray sc = None
    cdef wk_weight desc
    cdef bint linear = layout == "linear"
    desc.dtype = code
    desc.data = cnp.PyArray_DATA(w)
    desc.N = w.shape[0] if linear else w.shape[1]
    desc.K = w.shape[1] if linear else w.shape[0]
    desc.group_size = 0
    desc.flags = 0
    desc.scales = NULL
    if code == WK_I8:
        sc = np.ascontiguousarray(scales, dtype=np.float32)
        if (<object>sc).shape != (desc.N,):
            raise ValueError(f"int8 weights need scales [{desc.N}]")
        desc.scales = <const float*>cnp.PyArray_DATA(sc)
    cdef cnp.ndarray out = np.empty((w.shape[0], w.shape[1]), np.float32)
    wk_dequant_tile(<float*>cnp.PyArray_DATA(out), &desc, linear, 0, w.shape[0], 0, w.shape[1])
    return out


cdef struct StreamTask:
    const float* data
    long chunk_floats
    long n
    float* sums                 # [n_chunks]


cdef void stream_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    cdef StreamTask* t = <StreamTask*>ctx
    cdef long begin = chunk * t.chunk_floats
    t.sums[chunk] = wk_stream_sum(t.data + begin, min(t.chunk_floats, t.n - begin))


def stream_read_seconds(cnp.ndarray buf, int threads, int repeats=5):
    """Seconds (one per repeat) to read all of ``buf`` (float32, C-contiguous)
    once with the pool: the plain streaming-read ceiling for bench/.  Chunks
    as the GEMV ones (256 KiB), so the access pattern matches the kernels."""
    import time
    if buf.dtype != np.float32 or not buf.flags.c_contiguous:
        raise ValueError("buf must be C-contiguous float32")
    cdef StreamTask t
    t.data = <const float*>cnp.PyArray_DATA(buf)
    t.n = buf.size
    t.chunk_floats = GEMV_CHUNK_BYTES // 4
    cdef long n_chunks = ceil_div(t.n, t.chunk_floats)
    cdef cnp.ndarray sums = np.zeros(n_chunks, np.float32)
    t.sums = <float*>cnp.PyArray_DATA(sums)
    cdef gpt2_pool* pool = gpt2_pool_create(threads)
    if pool == NULL:
        raise MemoryError("cannot start the worker pool")
    times = []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            with nogil:
                gpt2_pool_run(pool, stream_chunk, &t, n_chunks)
            times.append(time.perf_counter() - start)
    finally:
        gpt2_pool_destroy(pool)
    return times
