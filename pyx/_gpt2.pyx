# cython: language_level=3
"""GPT-2 shard forward pass (pipeline.md 5.3) over OpenBLAS and csrc kernels.

``ShardEngine`` holds raw pointers into the weight arrays (kept alive by a
reference), preallocated activation buffers, a lazily touched KV cache and a
worker pool.  ``forward_ids`` / ``forward_hidden`` copy the input into an
internal buffer with memcpy (inputs may be unaligned network views), then run
the whole forward with the GIL released.

Shape, dtype and position checks belong to ``cmlp.model.engine.Gpt2Shard``,
the public wrapper; this module re-checks only what it needs to never read
out of bounds (buffer sizes, token ids).

Matmul dispatch by the number of input rows M = B*T: up to 8 rows (decode,
short prompts, small batches) use the streaming kernels in csrc, which read
each weight once in address order (memory bound); more rows use OpenBLAS
sgemm, cut into tiles that the pool threads claim.

Reduced-precision weights (bf16, fp16, int8 + per-channel scales: see
cmlp.model.quant) are passed as ``quant.QuantizedWeight`` for the four block
matmuls and wte; their matmuls go through cmlp._wkernels (runtime ISA
dispatch) while fp32 weights keep exactly the code paths below, so fp32
results are bit-identical whatever else the model holds.
"""

import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint32_t
from libc.math cimport sqrtf
cimport cython
from libc.string cimport memcpy, memset

from cmlp.errors import InvalidModelInput, ModelError
from cmlp.slot_rows import plan_rows

from blas cimport gemm, openblas_set_num_threads, openblas_get_corename, openblas_get_config
from cmlp._wkernels cimport (wk_weight, WK_F32, WK_BF16, WK_F16, WK_I8, WK_FP32_ACT, WK_ROW_EXACT,
                             weight_check,
                             dequant_rows, conv1d_forward, linear_forward, tile_floats,
                             conv1d_partial_floats)

cnp.import_array()

cdef extern from "gpt2_kernels.h" nogil:
    ctypedef void (*gpt2_task_fn)(void* ctx, long chunk, int thread_idx) noexcept nogil
    ctypedef struct gpt2_pool:
        pass
    gpt2_pool* gpt2_pool_create(int n_threads)
    void gpt2_pool_destroy(gpt2_pool* pool)
    void gpt2_pool_run(gpt2_pool* pool, gpt2_task_fn fn, void* ctx, long n_chunks)
    void gpt2_pool_quiesce(gpt2_pool* pool)

    void embedding_forward(float* out, const uint32_t* ids, const float* wte, const float* wpe,
                           int B, int T, int past_len, int C)
    long ids_first_invalid(const uint32_t* ids, long n, uint32_t vocab_size)
    void layernorm_forward(float* out, const float* inp, const float* weight, const float* bias,
                           long rows, int C, float eps)
    void gelu_forward(float* x, long n)
    void residual_forward(float* residual, const float* delta, long n)
    void bias_broadcast(float* out, const float* bias, long rows, long ld, long cols)
    void matvec_conv1d(float* y, const float* x, const float* weight,
                       long k_begin, long k_end, long N)
    void matvec_rows(float* y, const float* x, const float* weight,
                     long r_begin, long r_end, long K)
    void matvec_rows_multi(float* y, long ldy, const float* x, long ldx, int M,
                           const float* weight, long r_begin, long r_end, long K)
    int GPT2_SMALL_M
    void matmul_conv1d_small(float* y, const float* x, long ldx, int M, const float* weight,
                             long k_begin, long k_end, long N)
    void matmul_conv1d_rows(float* y, const float* x, long ldx, int M, const float* weight,
                            const float* bias, long K, long N, long chunk_rows, long n_begin,
                            long n_end)
    void softmax_causal_forward(float* scores, int T, int S, long ld, int past_len, float scale)
    void attention_decode_forward(float* out, const float* q, const float* k_cache,
                                  const float* v_cache, int S, int D, float scale, float* scratch)

cdef extern from "<sys/mman.h>" nogil:
    int madvise(void* addr, size_t length, int advice)
    int MADV_NOHUGEPAGE
    int MADV_DONTNEED

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)
    void free(void* ptr)
    void* calloc(size_t n, size_t size)


# Our pool owns all parallelism; OpenBLAS runs one tile per call inside it.
# (Process-wide: any other user of this libopenblas also becomes serial.)
openblas_set_num_threads(1)

cdef enum:
    MAX_THREADS = 64
    # Work per chunk: large enough to amortise a claim (~100 ns) and keep each
    # thread streaming, small enough that a late thread cannot unbalance a step.
    GEMV_CHUNK_BYTES = 262144
    # small-M chunks are larger: their [M, N] partial sums must be reduced
    SMALL_M_CHUNK_BYTES = 1048576
    GEMM_TILE_ROWS = 512
    GEMM_TILE_COLS = 384     # divides 768, 2304 and 3072: even tiles on GPT-2 small
    ROWS_CHUNK_FLOATS = 16384
    # A slotted sequence of up to this many new positions is computed row by row exactly
    # as if alone (fp32: the row-batched kernel, which also beats OpenBLAS's packed GEMM
    # at such small M: GPT-2 small, 2 threads, 16 tokens 29-38 ms against 46-57 ms), so
    # it can share a forward with others (cmlp.slot_rows); longer prefills run alone.
    SLOT_PREFILL_ROWS = 16
    # Output columns per task of the 3+ row matmul: four 48-column strips (N = 768 gives
    # 4 tasks, 3072 gives 16)
    SLOT_COLS_PER_TASK = 192
    MAX_ENGINE_BATCH = 4096  # hard bound that keeps index arithmetic in range

MAX_POOL_THREADS = MAX_THREADS


def blas_info():
    """OpenBLAS core and build configuration strings (for benchmark reports)."""
    return (openblas_get_corename().decode(), openblas_get_config().decode())


def aligned_empty(shape, dtype=np.float32, int align=64):
    """np.empty whose data pointer is a multiple of ``align`` bytes (weights
    and buffers: full-width vector loads never straddle a cache line)."""
    dtype = np.dtype(dtype)
    cdef Py_ssize_t nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    raw = np.empty(nbytes + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


cdef struct BlockWeights:
    const float* ln_1_weight
    const float* ln_1_bias
    const float* c_attn_weight      # [C, 3C]
    const float* c_attn_bias
    const float* attn_proj_weight   # [C, C]
    const float* attn_proj_bias
    const float* ln_2_weight
    const float* ln_2_bias
    const float* c_fc_weight        # [C, 4C]
    const float* c_fc_bias
    const float* mlp_proj_weight    # [4C, C]
    const float* mlp_proj_bias
    # the same four matrices as stored; dtype WK_F32 means "use the pointers above"
    wk_weight c_attn_w
    wk_weight attn_proj_w
    wk_weight c_fc_w
    wk_weight mlp_proj_w


# ---------------------------------------------------------------------------
# Parallel tasks: each is a context struct plus a chunk function for the pool
# ---------------------------------------------------------------------------

cdef struct MatmulTask:
    float* out                  # [M, N]
    const float* inp            # [M, K]
    const float* weight         # [K, N] (Conv1D layout) or [N, K] when trans_weight
    const float* bias           # [N] or NULL
    long M
    long K
    long N
    bint trans_weight
    long chunk_rows             # GEMV: weight rows per chunk; GEMM: output rows per tile
    long chunk_cols             # GEMM: output columns per tile
    long col_tiles
    float* partials             # GEMV: one partial sum per chunk, [n_chunks, M, N]


cdef inline long gemv_chunk_rows(long M, long N) noexcept nogil:
    """Weight rows per GEMV chunk (M = number of input rows, 1..GPT2_SMALL_M)."""
    cdef long chunk_bytes = GEMV_CHUNK_BYTES if M == 1 else SMALL_M_CHUNK_BYTES
    return max(1, chunk_bytes // (N * <long>sizeof(float)))


cdef void matvec_conv1d_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """Partial y of one slab of weight rows, into the chunk's own buffer.

    Per-chunk (not per-thread) partials, summed in chunk order afterwards:
    the result does not depend on which thread ran which chunk."""
    cdef MatmulTask* task = <MatmulTask*>ctx
    cdef float* y = task.partials + chunk * task.N
    cdef long k_begin = chunk * task.chunk_rows
    cdef long k_end = min(k_begin + task.chunk_rows, task.K)
    matvec_conv1d(y, task.inp, task.weight, k_begin, k_end, task.N)


cdef void matmul_conv1d_small_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """matvec_conv1d_chunk for 2..GPT2_SMALL_M input rows: [M, N] partials."""
    cdef MatmulTask* task = <MatmulTask*>ctx
    cdef float* y = task.partials + chunk * task.M * task.N
    cdef long k_begin = chunk * task.chunk_rows
    cdef long k_end = min(k_begin + task.chunk_rows, task.K)
    matmul_conv1d_small(y, task.inp, task.K, task.M, task.weight, k_begin, k_end, task.N)


cdef void matvec_rows_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """Dot products of x with one slab of weight rows (tied lm_head)."""
    cdef MatmulTask* task = <MatmulTask*>ctx
    cdef long r_begin = chunk * task.chunk_rows
    cdef long r_end = min(r_begin + task.chunk_rows, task.N)
    matvec_rows(task.out, task.inp, task.weight, r_begin, r_end, task.K)


cdef void gemm_tile(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """One [rows x cols] tile of out = inp @ W (+ bias)."""
    cdef MatmulTask* task = <MatmulTask*>ctx
    cdef long m0 = (chunk // task.col_tiles) * task.chunk_rows
    cdef long n0 = (chunk % task.col_tiles) * task.chunk_cols
    cdef long rows = min(task.chunk_rows, task.M - m0)
    cdef long cols = min(task.chunk_cols, task.N - n0)
    cdef float* out = task.out + m0 * task.N + n0
    cdef float beta = 0.0
    if task.bias != NULL:
        bias_broadcast(out, task.bias + n0, rows, task.N, cols)
        beta = 1.0
    if task.trans_weight:
        gemm(False, True, rows, cols, task.K, 1.0, task.inp + m0 * task.K, task.K,
             task.weight + n0 * task.K, task.K, beta, out, task.N)
    else:
        gemm(False, False, rows, cols, task.K, 1.0, task.inp + m0 * task.K, task.K,
             task.weight + n0, task.N, beta, out, task.N)


cdef struct AttentionTask:
    float* out                  # [B*T, C], heads side by side
    const float* qkv            # [B*T, 3C]: q | k | v
    float* k_cache              # this block's K, [batch_capacity, H, n_positions, D]
    float* v_cache
    int B
    int T
    int past_len
    int C
    int H
    int D
    int n_positions
    float scale
    float* scratch              # [threads, scratch_stride]
    long scratch_stride


cdef void attention_head_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """Append one (sequence, head)'s new K/V to the cache, then attend."""
    cdef AttentionTask* task = <AttentionTask*>ctx
    cdef int b = chunk // task.H
    cdef int h = chunk % task.H
    cdef int D = task.D
    cdef long qkv_ld = 3 * task.C
    cdef long head_offset = (<long>b * task.H + h) * task.n_positions * D
    cdef float* k_head = task.k_cache + head_offset
    cdef float* v_head = task.v_cache + head_offset
    cdef const float* q = task.qkv + <long>b * task.T * qkv_ld + h * D
    cdef float* out = task.out + <long>b * task.T * task.C + h * D
    cdef float* scratch = task.scratch + thread_idx * task.scratch_stride
    cdef int t
    cdef const float* row
    # the cache is appended in place: positions past_len .. past_len+T-1
    for t in range(task.T):
        row = q + t * qkv_ld
        memcpy(k_head + <long>(task.past_len + t) * D, row + task.C, D * sizeof(float))
        memcpy(v_head + <long>(task.past_len + t) * D, row + 2 * task.C, D * sizeof(float))
    cdef int S = task.past_len + task.T
    if task.T == 1:
        attention_decode_forward(out, q, k_head, v_head, S, D, task.scale, scratch)
        return
    # prefill: scores = q K^T, causal softmax, out = scores V
    gemm(False, True, task.T, S, D, 1.0, q, qkv_ld, k_head, D, 0.0, scratch, S)
    softmax_causal_forward(scratch, task.T, S, S, task.past_len, task.scale)
    gemm(False, False, task.T, D, S, 1.0, scratch, S, v_head, D, 0.0, out, task.C)


cdef enum RowOp:
    ROW_LAYERNORM
    ROW_GELU
    ROW_RESIDUAL


cdef struct ReduceTask:
    float* out                  # [M, N]
    const float* partials       # [n_chunks, M, N]
    const float* bias           # [N]
    long n_chunks
    long M
    long N
    long cols                   # columns per task chunk


cdef void reduce_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """out[:, cols] = bias + partials[0] + partials[1] + ... in chunk order (so each
    element gets the same chain of adds however the columns are split)."""
    cdef ReduceTask* task = <ReduceTask*>ctx
    cdef long n0 = chunk * task.cols
    cdef long n = min(task.cols, task.N - n0)
    cdef long m, c
    cdef float* row
    for m in range(task.M):
        row = task.out + m * task.N + n0
        memcpy(row, task.bias + n0, n * sizeof(float))
        for c in range(task.n_chunks):
            residual_forward(row, task.partials + (c * task.M + m) * task.N + n0, n)


cdef struct RowsTask:
    RowOp op
    float* out
    const float* inp
    const float* weight
    const float* bias
    long rows
    long width
    float eps
    long rows_per_chunk


cdef void rows_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    cdef RowsTask* task = <RowsTask*>ctx
    cdef long r0 = chunk * task.rows_per_chunk
    cdef long n = min(task.rows_per_chunk, task.rows - r0)
    cdef long offset = r0 * task.width
    if task.op == ROW_LAYERNORM:
        layernorm_forward(task.out + offset, task.inp + offset, task.weight, task.bias,
                          n, task.width, task.eps)
    elif task.op == ROW_GELU:
        gelu_forward(task.out + offset, n * task.width)
    else:
        residual_forward(task.out + offset, task.inp + offset, n * task.width)


cdef inline long ceil_div(long a, long b) noexcept nogil:
    return (a + b - 1) // b


cdef inline float* fptr(cnp.ndarray arr):
    return <float*>cnp.PyArray_DATA(arr)


_DTYPE_NAMES = {WK_F32: "f32", WK_BF16: "bf16", WK_F16: "f16", WK_I8: "i8"}


cdef str blocks_dtype(BlockWeights* blocks, int n):
    """The block matrices' common dtype name, or "mixed"."""
    names = {_DTYPE_NAMES[blocks[i].c_attn_w.dtype] for i in range(n)} | \
        {_DTYPE_NAMES[blocks[i].attn_proj_w.dtype] for i in range(n)} | \
        {_DTYPE_NAMES[blocks[i].c_fc_w.dtype] for i in range(n)} | \
        {_DTYPE_NAMES[blocks[i].mlp_proj_w.dtype] for i in range(n)}
    if not names:
        return "f32"
    return names.pop() if len(names) == 1 else "mixed"


# ---------------------------------------------------------------------------
# Slot (batched decode) tasks: results per row independent of the batch
# ---------------------------------------------------------------------------

cdef void matmul_rows_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """1-2 rows: one slab of weight rows streamed in address order into the chunk's own
    partial sums (reduced in chunk order by reduce_chunk)."""
    cdef MatmulTask* task = <MatmulTask*>ctx
    cdef float* y = task.partials + chunk * task.M * task.N
    cdef long k_begin = chunk * task.chunk_rows
    cdef long k_end = min(k_begin + task.chunk_rows, task.K)
    matmul_conv1d_small(y, task.inp, task.K, <int>task.M, task.weight, k_begin, k_end, task.N)


cdef void matmul_cols_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """3+ rows: one block of output columns over the whole k range, in 8-row register
    tiles, with the same per-element arithmetic as matmul_rows_chunk + reduce_chunk (so a
    row's result is the same whatever M is; checked bit for bit in
    tests/model/test_batching_engine.py)."""
    cdef MatmulTask* task = <MatmulTask*>ctx
    cdef long n0 = chunk * task.chunk_cols
    cdef long n1 = min(n0 + task.chunk_cols, task.N)
    matmul_conv1d_rows(task.out, task.inp, task.K, <int>task.M, task.weight, task.bias, task.K, task.N,
                       task.chunk_rows, n0, n1)


cdef void lm_rows_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """Tied lm_head for M rows on one slab of vocabulary rows (read once, M dots each)."""
    cdef MatmulTask* task = <MatmulTask*>ctx
    cdef long r_begin = chunk * task.chunk_rows
    cdef long r_end = min(r_begin + task.chunk_rows, task.N)
    matvec_rows_multi(task.out, task.N, task.inp, task.K, <int>task.M, task.weight, r_begin, r_end,
                      task.K)


cdef struct SlotAttentionTask:
    float* out                  # [B*T, C]
    const float* qkv            # [B*T, 3C]
    float* k_cache              # this block's K: [n_slots, H, n_positions, D]
    float* v_cache
    const int* slots            # [B] slot of each sequence
    const int* pos              # [B] its first new position
    const int* off              # [B] its first activation row
    const int* lens             # [B] its new positions (activation rows)
    int C
    int H
    int D
    int n_positions
    float scale
    float* scratch
    long scratch_stride


cdef void slot_attention_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """attention_head_chunk on (sequence b, head h) with b's own slot, position and rows
    (the same computation whatever else shares the forward)."""
    cdef SlotAttentionTask* task = <SlotAttentionTask*>ctx
    cdef int b = chunk // task.H
    cdef int h = chunk % task.H
    cdef int D = task.D
    cdef int T = task.lens[b]
    cdef int past = task.pos[b]
    cdef long qkv_ld = 3 * task.C
    cdef long head_offset = (<long>task.slots[b] * task.H + h) * task.n_positions * D
    cdef float* k_head = task.k_cache + head_offset
    cdef float* v_head = task.v_cache + head_offset
    cdef const float* q = task.qkv + <long>task.off[b] * qkv_ld + h * D
    cdef float* out = task.out + <long>task.off[b] * task.C + h * D
    cdef float* scratch = task.scratch + thread_idx * task.scratch_stride
    cdef int t
    cdef const float* row
    for t in range(T):
        row = q + t * qkv_ld
        memcpy(k_head + <long>(past + t) * D, row + task.C, D * sizeof(float))
        memcpy(v_head + <long>(past + t) * D, row + 2 * task.C, D * sizeof(float))
    cdef int S = past + T
    if T == 1:
        attention_decode_forward(out, q, k_head, v_head, S, D, task.scale, scratch)
        return
    gemm(False, True, T, S, D, 1.0, q, qkv_ld, k_head, D, 0.0, scratch, S)
    softmax_causal_forward(scratch, T, S, S, past, task.scale)
    gemm(False, False, T, D, S, 1.0, scratch, S, v_head, D, 0.0, out, task.C)


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------

@cython.no_gc_clear    # __dealloc__ wipes the activation arrays: keep them alive until then
cdef class ShardEngine:
    """Forward pass of GPT-2 blocks [layer_start, layer_end) with a KV cache.

    Not thread-safe: one forward at a time (Gpt2Shard holds a lock).  Output
    arrays are views of internal buffers, valid until the next forward() or
    clear_cache().
    """

    cdef readonly int n_embd, n_head, head_dim, n_vocab, n_positions, n_blocks
    cdef readonly float eps
    cdef readonly bint is_first, is_last
    cdef readonly int past_len, cache_batch, threads
    cdef BlockWeights* blocks
    cdef const float* wte
    cdef const float* wpe
    cdef const float* ln_f_weight
    cdef const float* ln_f_bias
    cdef wk_weight wte_w            # wte as stored (WK_F32: use the wte pointer)
    cdef readonly str weight_dtype  # "f32", "bf16", "f16" or "i8" (the block matrices)
    cdef cnp.ndarray _wtiles        # per-thread fp32 weight panels for reduced-precision GEMM
    cdef float* wtiles
    cdef list _weights          # keeps every weight array alive
    cdef gpt2_pool* pool

    # activation buffers, sized for rows_capacity = B*T rows
    cdef long rows_capacity, seq_capacity
    cdef cnp.ndarray _ids, _residual, _ln_out, _qkv, _attn_out, _block_out, _fc
    cdef cnp.ndarray _logits, _partials, _scratch
    cdef uint32_t* ids
    cdef float* residual
    cdef float* ln_out
    cdef float* qkv
    cdef float* attn_out
    cdef float* block_out
    cdef float* fc
    cdef float* logits
    cdef float* partials
    cdef float* scratch
    cdef long scratch_stride
    cdef object _view               # output view of the last (B, T)
    cdef int _view_batch, _view_seq

    # KV cache: [n_blocks, 2, batch_capacity, H, n_positions, D], malloc'd so
    # that pages are only backed once a position is written
    cdef float* kv
    cdef size_t kv_bytes
    cdef int batch_capacity

    # slot cache (continuous batching, docs/batching.md): one independent sequence
    # per slot, [n_blocks, 2, n_slots, H, n_positions, D], lazily backed like kv
    cdef float* slot_kv
    cdef size_t slot_kv_bytes
    cdef readonly int n_slots
    cdef int* slot_lens             # [n_slots] cached positions per slot
    cdef int* row_slots             # [n_slots] the slot of each row of a slot forward
    cdef int* row_pos               # [n_slots] that row's first position
    cdef int* row_off               # [n_slots] its first activation row (row_pos + n_slots)
    cdef int* row_len               # [n_slots] its new positions (row_pos + 2 n_slots)
    cdef cnp.ndarray _slot_partials
    cdef float* slot_partials

    def __cinit__(self):
        self.blocks = NULL
        self.pool = NULL
        self.kv = NULL
        self.slot_kv = NULL
        self.slot_lens = NULL
        self.row_slots = NULL
        self.row_pos = NULL
        self.n_slots = 0

    def __init__(self, *, int n_embd, int n_head, int n_vocab, int n_positions, float eps,
                 bint is_first, bint is_last, list blocks, wte=None, wpe=None,
                 ln_f_weight=None, ln_f_bias=None, int threads=1):
        if n_embd <= 0 or n_head <= 0 or n_embd % n_head:
            raise ModelError(f"n_embd {n_embd} must be a positive multiple of n_head {n_head}")
        self.n_embd = n_embd
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.n_vocab = n_vocab
        self.n_positions = n_positions
        self.eps = eps
        self.is_first = is_first
        self.is_last = is_last
        self.n_blocks = len(blocks)
        self._weights = []
        self._view = None
        C = n_embd
        self.blocks = <BlockWeights*>calloc(max(self.n_blocks, 1), sizeof(BlockWeights))
        if self.blocks == NULL:
            raise MemoryError()
        cdef BlockWeights* blk
        for i, tensors in enumerate(blocks):
            blk = &self.blocks[i]
            blk.ln_1_weight = self._block_tensor(tensors, i, "ln_1.weight", (C,))
            blk.ln_1_bias = self._block_tensor(tensors, i, "ln_1.bias", (C,))
            blk.c_attn_weight = self._matrix(tensors.get("attn.c_attn.weight"), (C, 3 * C),
                                             f"block {i} attn.c_attn.weight", &blk.c_attn_w, False)
            blk.c_attn_bias = self._block_tensor(tensors, i, "attn.c_attn.bias", (3 * C,))
            blk.attn_proj_weight = self._matrix(tensors.get("attn.c_proj.weight"), (C, C),
                                                f"block {i} attn.c_proj.weight", &blk.attn_proj_w,
                                                False)
            blk.attn_proj_bias = self._block_tensor(tensors, i, "attn.c_proj.bias", (C,))
            blk.ln_2_weight = self._block_tensor(tensors, i, "ln_2.weight", (C,))
            blk.ln_2_bias = self._block_tensor(tensors, i, "ln_2.bias", (C,))
            blk.c_fc_weight = self._matrix(tensors.get("mlp.c_fc.weight"), (C, 4 * C),
                                           f"block {i} mlp.c_fc.weight", &blk.c_fc_w, False)
            blk.c_fc_bias = self._block_tensor(tensors, i, "mlp.c_fc.bias", (4 * C,))
            blk.mlp_proj_weight = self._matrix(tensors.get("mlp.c_proj.weight"), (4 * C, C),
                                               f"block {i} mlp.c_proj.weight", &blk.mlp_proj_w,
                                               False)
            blk.mlp_proj_bias = self._block_tensor(tensors, i, "mlp.c_proj.bias", (C,))
        self.wte = self.wpe = self.ln_f_weight = self.ln_f_bias = NULL
        self.wte_w.dtype = WK_F32
        if is_first or is_last:
            self.wte = self._matrix(wte, (n_vocab, C), "wte.weight", &self.wte_w, True)
        if is_first:
            self.wpe = self._tensor(wpe, (n_positions, C), "wpe.weight")
        if is_last:
            self.ln_f_weight = self._tensor(ln_f_weight, (C,), "ln_f.weight")
            self.ln_f_bias = self._tensor(ln_f_bias, (C,), "ln_f.bias")
        # GEMV partials: the largest n_chunks * M * N over the block matmuls
        partial_floats = max(ceil_div(K, gemv_chunk_rows(M, N)) * M * N
                             for K, N in ((C, 3 * C), (C, C), (C, 4 * C), (4 * C, C))
                             for M in (1, GPT2_SMALL_M))
        self.weight_dtype = blocks_dtype(self.blocks, self.n_blocks)
        self._partials = aligned_empty((partial_floats,))
        self.partials = fptr(self._partials)
        self.rows_capacity = 0
        self.seq_capacity = 0
        self.batch_capacity = 0
        self.past_len = 0
        self.cache_batch = 0
        self.set_threads(threads)

    def __dealloc__(self):
        if self.pool != NULL:
            gpt2_pool_destroy(self.pool)
        free(self.blocks)
        self._wipe_kv()           # cached K/V are derived from a user's prompt: never
        free(self.kv)             # hand them back to the allocator readable
        self.kv = NULL
        if self.slot_kv != NULL and self.slot_lens != NULL:
            self._wipe_slots()    # the same for every sequence slot
        free(self.slot_kv)
        self.slot_kv = NULL
        free(self.slot_lens)
        free(self.row_slots)
        free(self.row_pos)
        self._wipe_activations()

    cdef const float* _block_tensor(self, dict tensors, int layer, str name,
                                    tuple shape) except NULL:
        return self._tensor(tensors.get(name), shape, f"block {layer} {name}")

    cdef const float* _tensor(self, arr, tuple shape, str name) except NULL:
        """Pointer to a weight array, after checking it matches what the kernels read."""
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 \
                or not arr.flags.c_contiguous or arr.shape != shape:
            got = (f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray)
                   else type(arr).__name__)
            raise ModelError(f"tensor {name}: expected C-contiguous float32 {shape}, got {got}")
        self._weights.append(arr)
        return <const float*>cnp.PyArray_DATA(<cnp.ndarray>arr)

    cdef const float* _matrix(self, arr, tuple shape, str name, wk_weight* desc,
                              bint linear) except? NULL:
        """A matmul weight: fp32 ndarray (returns its pointer, desc dtype WK_F32)
        or a QuantizedWeight (fills desc, returns NULL).  ``shape`` is the
        fp32 shape: [K, N] Conv1D, [N, K] Linear (wte); int8 is stored [N, K]
        for both (so it can take the VNNI Linear kernel)."""
        desc.dtype = WK_F32
        desc.data = NULL
        desc.scales = NULL
        desc.group_size = 0
        desc.flags = 0
        desc.N = shape[0] if linear else shape[1]
        desc.K = shape[1] if linear else shape[0]
        if isinstance(arr, np.ndarray) or arr is None:
            return self._tensor(arr, shape, name)
        code = {"bf16": WK_BF16, "f16": WK_F16, "i8": WK_I8}.get(getattr(arr, "dtype", None))
        data = getattr(arr, "data", None)
        if code == WK_I8:
            shape = (desc.N, desc.K)    # int8 is always stored [N, K] (cmlp.model.quantize)
        if code is None or not isinstance(data, np.ndarray) or not data.flags.c_contiguous \
                or data.shape != shape or data.dtype != (np.int8 if code == WK_I8 else np.uint16):
            raise ModelError(f"tensor {name}: expected float32 or a QuantizedWeight "
                             f"(bf16/f16 uint16, i8 int8) of shape {shape}, got {arr!r}")
        desc.dtype = code
        desc.data = cnp.PyArray_DATA(<cnp.ndarray>data)
        self._weights.append(data)
        if code == WK_I8:
            scales = getattr(arr, "scales", None)
            if not isinstance(scales, np.ndarray) or scales.dtype != np.float32 \
                    or not scales.flags.c_contiguous or scales.shape != (desc.N,):
                raise ModelError(f"tensor {name}: int8 weights need float32 scales [{desc.N}]")
            desc.scales = <const float*>cnp.PyArray_DATA(<cnp.ndarray>scales)
            self._weights.append(scales)
        if weight_check(desc) != 0:
            raise ModelError(f"tensor {name}: rejected by the weight kernels")
        return NULL

    # -- configuration -------------------------------------------------------

    def set_threads(self, int n):
        """Use n threads (the caller plus n-1 pool workers) for every step."""
        if not 1 <= n <= MAX_THREADS:
            raise ValueError(f"threads must be in [1, {MAX_THREADS}], got {n}")
        cdef gpt2_pool* pool = gpt2_pool_create(n)
        if pool == NULL:
            raise MemoryError("cannot start the worker pool")
        if self.pool != NULL:
            gpt2_pool_destroy(self.pool)
        self.pool = pool
        self.threads = n
        self._grow_scratch(max(self.seq_capacity, 1), force=True)
        self._wtiles = aligned_empty((n * tile_floats(),))
        self.wtiles = fptr(self._wtiles)
        # the reduced-precision path sizes its decode chunks per dtype and thread count
        C = self.n_embd
        cdef long need = max(conv1d_partial_floats(M, K, N, dt, n)
                             for K, N in ((C, 3 * C), (C, C), (C, 4 * C), (4 * C, C))
                             for M in range(1, GPT2_SMALL_M + 1) for dt in (WK_BF16, WK_F16, WK_I8))
        if need > self._partials.shape[0]:
            self._partials = aligned_empty((need,))
            self.partials = fptr(self._partials)

    cdef int _grow_scratch(self, long seq, bint force=False) except -1:
        """Per-thread attention scratch: [T, n_positions] scores."""
        if seq <= self.seq_capacity and not force:
            return 0
        self.seq_capacity = max(seq, self.seq_capacity)
        self.scratch_stride = self.seq_capacity * self.n_positions + 16
        self._scratch = aligned_empty((self.threads, self.scratch_stride))
        self.scratch = fptr(self._scratch)
        return 0

    cdef int _ensure_capacity(self, int B, int T) except -1:
        """Grow the activation buffers for B*T rows (never shrinks)."""
        cdef long rows = <long>B * T
        C = self.n_embd
        if rows > self.rows_capacity:
            self._wipe_activations()      # the old buffers are about to be dropped
            self._view = None
            self._ids = aligned_empty((rows,), np.uint32)
            self._residual = aligned_empty((rows, C))
            self._ln_out = aligned_empty((rows, C))
            self._qkv = aligned_empty((rows, 3 * C))
            self._attn_out = aligned_empty((rows, C))
            self._block_out = aligned_empty((rows, C))
            self._fc = aligned_empty((rows, 4 * C))
            self.ids = <uint32_t*>cnp.PyArray_DATA(self._ids)
            self.residual = fptr(self._residual)
            self.ln_out = fptr(self._ln_out)
            self.qkv = fptr(self._qkv)
            self.attn_out = fptr(self._attn_out)
            self.block_out = fptr(self._block_out)
            self.fc = fptr(self._fc)
            self.rows_capacity = rows
        if T > self.seq_capacity:
            self._grow_scratch(T)
        if self.is_last and (self._logits is None or self._logits.shape[0] < B):
            self._view = None
            self._logits = aligned_empty((B, self.n_vocab))
            self.logits = fptr(self._logits)
        if B > self.batch_capacity:
            self._allocate_kv_cache(B)
        return 0

    cdef int _allocate_kv_cache(self, int B) except -1:
        if self.past_len != 0:
            raise RuntimeError("KV cache reallocation with cached positions")
        cdef size_t nbytes = (<size_t>self.n_blocks * 2 * B * self.n_positions
                              * self.n_embd * sizeof(float))
        cdef void* mem = NULL
        self._wipe_kv()
        free(self.kv)
        self.kv = NULL
        self.batch_capacity = 0
        if posix_memalign(&mem, 4096, max(nbytes, <size_t>64)) != 0:
            raise MemoryError(f"cannot reserve a {nbytes}-byte KV cache")
        # lazily backed: only written positions become resident, so keep the
        # kernel from backing it with 2 MiB pages
        madvise(mem, nbytes, MADV_NOHUGEPAGE)
        self.kv = <float*>mem
        self.kv_bytes = nbytes
        self.batch_capacity = B
        return 0

    # -- state -----------------------------------------------------------------

    def clear_cache(self):
        """Forget every cached position (and wipe the cached K/V values)."""
        self._wipe_kv()
        self.past_len = 0
        self.cache_batch = 0

    cdef void _wipe_activations(self) noexcept nogil:
        """Zero the activation buffers (ids, hidden states, Q/K/V, MLP) before they go."""
        cdef size_t rows = <size_t>self.rows_capacity
        cdef size_t C = <size_t>self.n_embd
        if rows == 0:
            return
        memset(self.ids, 0, rows * sizeof(uint32_t))
        memset(self.residual, 0, rows * C * sizeof(float))
        memset(self.ln_out, 0, rows * C * sizeof(float))
        memset(self.qkv, 0, rows * 3 * C * sizeof(float))
        memset(self.attn_out, 0, rows * C * sizeof(float))
        memset(self.block_out, 0, rows * C * sizeof(float))
        memset(self.fc, 0, rows * 4 * C * sizeof(float))

    cdef void _wipe_kv(self) noexcept nogil:
        """Zero every position written since the last wipe (only those pages are backed).

        Positions [0, past_len) of each cached sequence: the cache is appended in
        place, so nothing beyond past_len was ever written.
        """
        cdef int layer, kv, b, h
        cdef long head_stride = <long>self.n_positions * self.head_dim
        cdef float* head
        if self.kv == NULL or self.past_len <= 0:
            return
        for layer in range(self.n_blocks):
            for kv in range(2):
                for b in range(self.cache_batch):
                    for h in range(self.n_head):
                        head = self._cache(layer, kv) + (<long>b * self.n_head + h) * head_stride
                        memset(head, 0, <size_t>self.past_len * self.head_dim * sizeof(float))

    cdef inline float* _cache(self, int block, int kv) noexcept nogil:
        return self.kv + (<long>block * 2 + kv) * self.batch_capacity * self.n_positions * self.n_embd

    @property
    def kv_cache_bytes(self):
        """Bytes reserved (not necessarily resident) for the KV cache."""
        return self.kv_bytes if self.kv != NULL else 0

    # -- forward -----------------------------------------------------------------

    def forward_ids(self, cnp.ndarray x):
        """Token ids [B, T] (any integer dtype) -> hidden [B, T, C] or logits [B, V]."""
        if not self.is_first:
            raise InvalidModelInput("this shard takes hidden states, not token ids")
        if x.ndim != 2 or x.dtype.kind not in "ui":
            raise InvalidModelInput("token ids must be an integer array [B, T]")
        self._check_positions(x.shape[0], x.shape[1])
        cdef int B = x.shape[0]
        cdef int T = x.shape[1]
        cdef long n = <long>B * T
        self._ensure_capacity(B, T)
        if x.dtype == np.uint32 and x.flags.c_contiguous:
            memcpy(self.ids, cnp.PyArray_DATA(x), n * sizeof(uint32_t))
        else:
            # other dtypes, byte orders or strides: values are checked before
            # they are narrowed to uint32 (numpy reads unaligned data safely)
            invalid = (x < 0) | (x >= self.n_vocab)
            if invalid.any():
                bad_b, bad_t = np.argwhere(invalid)[0]
                raise InvalidModelInput(
                    f"token id {x[bad_b, bad_t]} at [{bad_b}, {bad_t}] is out of range "
                    f"for vocab_size {self.n_vocab}")
            np.copyto(self._ids[:n].reshape(B, T), x, casting="unsafe")
        cdef long bad = ids_first_invalid(self.ids, n, self.n_vocab)
        if bad >= 0:
            raise InvalidModelInput(
                f"token id {self.ids[bad]} at [{bad // T}, {bad % T}] is out of range "
                f"for vocab_size {self.n_vocab}")
        return self._run(B, T)

    def forward_hidden(self, cnp.ndarray x):
        """Hidden states [B, T, C] float32 -> hidden [B, T, C] or logits [B, V]."""
        if self.is_first:
            raise InvalidModelInput("the first shard takes token ids, not hidden states")
        if x.ndim != 3 or x.shape[2] != self.n_embd or x.dtype.kind != "f" or x.dtype.itemsize != 4:
            raise InvalidModelInput(f"hidden states must be float32 [B, T, {self.n_embd}]")
        self._check_positions(x.shape[0], x.shape[1])
        cdef int B = x.shape[0]
        cdef int T = x.shape[1]
        self._ensure_capacity(B, T)
        if x.dtype == np.float32 and x.flags.c_contiguous:
            memcpy(self.residual, cnp.PyArray_DATA(x), <size_t>B * T * self.n_embd * sizeof(float))
        else:
            np.copyto(self._residual[:B * T].reshape(B, T, self.n_embd), x, casting="same_kind")
        return self._run(B, T)

    cdef int _check_positions(self, Py_ssize_t B, Py_ssize_t T) except -1:
        # the public wrapper raises the typed errors first; these guard memory
        if not (1 <= B <= MAX_ENGINE_BATCH and 1 <= T and self.past_len + T <= self.n_positions):
            raise InvalidModelInput(f"invalid forward of [{B}, {T}] at position {self.past_len}")
        if self.past_len > 0 and B != self.cache_batch:
            raise InvalidModelInput(f"batch size {B} differs from the cached batch {self.cache_batch}")
        return 0

    cdef object _run(self, int B, int T):
        with nogil:
            self._forward(B, T)
            gpt2_pool_quiesce(self.pool)    # free the cores for the next stage now
        self.past_len += T
        self.cache_batch = B
        return self._output_view(B, T)

    cdef object _output_view(self, int B, int T):
        # the view of the last shape is reused: no allocation per decode token
        if self._view is None or B != self._view_batch or (T != self._view_seq and not self.is_last):
            if self.is_last:
                self._view = self._logits[:B]
            else:
                self._view = self._residual[:B * T].reshape(B, T, self.n_embd)
            self._view_batch, self._view_seq = B, T
        return self._view

    cdef void _forward(self, int B, int T) noexcept nogil:
        cdef long M = <long>B * T
        cdef int C = self.n_embd
        cdef int layer, b
        cdef BlockWeights* blk
        if self.is_first:
            if self.wte_w.dtype == WK_F32:
                embedding_forward(self.residual, self.ids, self.wte, self.wpe, B, T, self.past_len, C)
            else:
                self._embedding_quantized(B, T, NULL)
        for layer in range(self.n_blocks):
            blk = &self.blocks[layer]
            # attention: residual += c_proj(attention(ln_1(residual)))
            self._rows(ROW_LAYERNORM, self.ln_out, self.residual, blk.ln_1_weight, blk.ln_1_bias, M, C)
            self._matmul(self.qkv, self.ln_out, blk.c_attn_weight, blk.c_attn_bias, M, C, 3 * C,
                         &blk.c_attn_w)
            self._attention(layer, B, T)
            self._matmul(self.block_out, self.attn_out, blk.attn_proj_weight, blk.attn_proj_bias, M, C, C,
                         &blk.attn_proj_w)
            self._rows(ROW_RESIDUAL, self.residual, self.block_out, NULL, NULL, M, C)
            # MLP: residual += c_proj(gelu(c_fc(ln_2(residual))))
            self._rows(ROW_LAYERNORM, self.ln_out, self.residual, blk.ln_2_weight, blk.ln_2_bias, M, C)
            self._matmul(self.fc, self.ln_out, blk.c_fc_weight, blk.c_fc_bias, M, C, 4 * C,
                         &blk.c_fc_w)
            self._rows(ROW_GELU, self.fc, NULL, NULL, NULL, M, 4 * C)
            self._matmul(self.block_out, self.fc, blk.mlp_proj_weight, blk.mlp_proj_bias, M, 4 * C, C,
                         &blk.mlp_proj_w)
            self._rows(ROW_RESIDUAL, self.residual, self.block_out, NULL, NULL, M, C)
        if self.is_last:
            # ln_f, then the tied lm_head, on the last position of each sequence only
            for b in range(B):
                layernorm_forward(self.ln_out + <long>b * C, self.residual + (<long>b * T + T - 1) * C,
                                  self.ln_f_weight, self.ln_f_bias, 1, C, self.eps)
            self._lm_head(B)

    cdef void _embedding_quantized(self, int B, int T, const int* pos) noexcept nogil:
        """embedding_forward for a reduced-precision wte: row ids[b,t] converted
        to fp32, then wpe[p + t] added (the same single fp32 add); p is past_len, or
        pos[b] for slotted rows."""
        cdef int C = self.n_embd
        cdef long i
        cdef int p
        cdef float* row
        for i in range(<long>B * T):
            row = self.residual + i * C
            p = self.past_len if pos == NULL else pos[i // T]
            dequant_rows(row, &self.wte_w, self.ids[i], 1)
            residual_forward(row, self.wpe + <long>(p + i % T) * C, C)

    cdef void _rows(self, RowOp op, float* out, const float* inp, const float* weight,
                    const float* bias, long rows, long width) noexcept nogil:
        cdef RowsTask task
        task.op = op
        task.out = out
        task.inp = inp
        task.weight = weight
        task.bias = bias
        task.rows = rows
        task.width = width
        task.eps = self.eps
        task.rows_per_chunk = max(1, ROWS_CHUNK_FLOATS // width)
        gpt2_pool_run(self.pool, rows_chunk, &task, ceil_div(rows, task.rows_per_chunk))

    cdef void _matmul(self, float* out, const float* inp, const float* weight, const float* bias,
                      long M, long K, long N, const wk_weight* wq=NULL) noexcept nogil:
        """out[M, N] = inp[M, K] @ weight[K, N] + bias (Conv1D layout).

        wq: the same matrix as stored; anything but fp32 goes to cmlp._wkernels."""
        cdef MatmulTask task
        cdef long n_chunks
        if wq != NULL and wq.dtype == WK_I8:      # stored [N, K]
            linear_forward(self.pool, out, inp, M, wq, bias, self.wtiles)
            return
        if wq != NULL and wq.dtype != WK_F32:
            conv1d_forward(self.pool, out, inp, M, wq, bias, self.partials, self.wtiles)
            return
        task.out = out
        task.inp = inp
        task.weight = weight
        task.bias = bias
        task.M = M
        task.K = K
        task.N = N
        task.trans_weight = False
        if M <= GPT2_SMALL_M:
            # GEMV (or a few rows): each chunk sums one slab of weight rows,
            # then the chunks' partials are added in chunk order
            task.partials = self.partials
            task.chunk_rows = gemv_chunk_rows(M, N)
            n_chunks = ceil_div(K, task.chunk_rows)
            gpt2_pool_run(self.pool, matvec_conv1d_chunk if M == 1 else matmul_conv1d_small_chunk,
                          &task, n_chunks)
            self._reduce(out, self.partials, bias, n_chunks, M, N)
            return
        self._gemm_tiles(&task)

    cdef void _gemm_tiles(self, MatmulTask* task) noexcept nogil:
        task.chunk_rows = GEMM_TILE_ROWS
        task.chunk_cols = GEMM_TILE_COLS
        task.col_tiles = ceil_div(task.N, task.chunk_cols)
        gpt2_pool_run(self.pool, gemm_tile, task, ceil_div(task.M, task.chunk_rows) * task.col_tiles)

    cdef void _lm_head(self, int B) noexcept nogil:
        """logits[B, V] = ln_out[B, C] @ wte^T (tied, no bias)."""
        cdef MatmulTask task
        if self.wte_w.dtype != WK_F32:
            linear_forward(self.pool, self.logits, self.ln_out, B, &self.wte_w, NULL, self.wtiles)
            return
        task.out = self.logits
        task.inp = self.ln_out
        task.weight = self.wte
        task.bias = NULL
        task.M = B
        task.K = self.n_embd
        task.N = self.n_vocab
        task.trans_weight = True
        if B == 1:
            task.chunk_rows = gemv_chunk_rows(1, task.K)
            gpt2_pool_run(self.pool, matvec_rows_chunk, &task, ceil_div(task.N, task.chunk_rows))
            return
        self._gemm_tiles(&task)

    cdef void _attention(self, int block, int B, int T) noexcept nogil:
        cdef AttentionTask task
        task.out = self.attn_out
        task.qkv = self.qkv
        task.k_cache = self._cache(block, 0)
        task.v_cache = self._cache(block, 1)
        task.B = B
        task.T = T
        task.past_len = self.past_len
        task.C = self.n_embd
        task.H = self.n_head
        task.D = self.head_dim
        task.n_positions = self.n_positions
        task.scale = 1.0 / sqrtf(<float>self.head_dim)
        task.scratch = self.scratch
        task.scratch_stride = self.scratch_stride
        gpt2_pool_run(self.pool, attention_head_chunk, &task, <long>B * self.n_head)

    # -- slots: continuous batching (docs/batching.md) ----------------------------

    @property
    def slot_bytes(self):
        """Bytes one slot reserves (virtual; only written positions become resident)."""
        return <size_t>self.n_blocks * 2 * self.n_positions * self.n_embd * sizeof(float)

    def configure_slots(self, int n):
        """Reserve n independent sequence slots (all empty); forgets the previous ones."""
        if not 1 <= n <= MAX_ENGINE_BATCH:
            raise ValueError(f"slot count must be in [1, {MAX_ENGINE_BATCH}], got {n}")
        cdef size_t nbytes = <size_t>n * self.slot_bytes
        cdef void* mem = NULL
        self._wipe_slots()
        free(self.slot_kv)
        free(self.slot_lens)
        free(self.row_slots)
        free(self.row_pos)
        self.slot_kv = NULL
        self.slot_lens = self.row_slots = self.row_pos = NULL
        self.n_slots = 0
        if posix_memalign(&mem, 4096, max(nbytes, <size_t>64)) != 0:
            raise MemoryError(f"cannot reserve a {nbytes}-byte slot KV cache")
        madvise(mem, nbytes, MADV_NOHUGEPAGE)
        self.slot_kv = <float*>mem
        self.slot_kv_bytes = nbytes
        self.slot_lens = <int*>calloc(n, sizeof(int))
        self.row_slots = <int*>calloc(n, sizeof(int))
        self.row_pos = <int*>calloc(3 * n, sizeof(int))    # row_pos, row_off, row_len
        if self.slot_lens == NULL or self.row_slots == NULL or self.row_pos == NULL:
            raise MemoryError()
        self.row_off = self.row_pos + n
        self.row_len = self.row_pos + 2 * n
        C = self.n_embd
        # partials of the 1-2 row matmuls: n_chunks * 2 rows * N, chunking by N only
        partial_floats = max(ceil_div(K, gemv_chunk_rows(1, N)) * 2 * N
                             for K, N in ((C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)))
        self._slot_partials = aligned_empty((partial_floats,))
        self.slot_partials = fptr(self._slot_partials)
        self.n_slots = n

    cdef inline float* _slot_cache(self, int block, int kv) noexcept nogil:
        return self.slot_kv + (<long>block * 2 + kv) * self.n_slots * self.n_positions * self.n_embd

    @property
    def mix_rows(self):
        """The longest sequence (new positions) that may share a slotted forward."""
        return SLOT_PREFILL_ROWS

    def slot_len(self, int slot):
        if not 0 <= slot < self.n_slots:
            raise InvalidModelInput(f"slot {slot} out of range [0, {self.n_slots})")
        return self.slot_lens[slot]

    def clear_slot(self, int slot):
        """Empty one slot: its cached K/V are zeroed and its pages given back."""
        if not 0 <= slot < self.n_slots:
            raise InvalidModelInput(f"slot {slot} out of range [0, {self.n_slots})")
        self._clear_slot(slot)

    cdef void _clear_slot(self, int slot) noexcept nogil:
        cdef long per_slot = <long>self.n_head * self.n_positions * self.head_dim
        cdef size_t region = per_slot * sizeof(float)
        cdef long head_stride = <long>self.n_positions * self.head_dim
        cdef int layer, kv, h
        cdef float* base
        if self.slot_lens[slot] == 0:
            return
        for layer in range(self.n_blocks):
            for kv in range(2):
                base = self._slot_cache(layer, kv) + slot * per_slot
                for h in range(self.n_head):
                    memset(base + h * head_stride, 0,
                           <size_t>self.slot_lens[slot] * self.head_dim * sizeof(float))
                # page aligned (always for GPT-2 shapes): the kernel takes the pages back
                if (<size_t>base) % 4096 == 0 and region % 4096 == 0:
                    madvise(base, region, MADV_DONTNEED)
        self.slot_lens[slot] = 0

    cdef void _wipe_slots(self) noexcept nogil:
        cdef int s
        for s in range(self.n_slots):
            self._clear_slot(s)

    def forward_slots(self, cnp.ndarray x, slots, lens=None):
        """Rows continuing slots, each sequence at its own position: ids [B, T] (first
        shard) or hidden [B, T, C] (others) for B sequences of T new positions, or with
        ``lens`` ids [1, M] / hidden [1, M, C] holding sequence b's lens[b] positions back
        to back (cmlp.slot_rows).  Returns a view: logits [B, V] (each sequence's last
        position), or hidden [B, T, C] / [1, M, C]."""
        if self.n_slots == 0:
            raise InvalidModelInput("no slots configured")
        cdef int B, b, s, n_new, max_len = 0
        cdef long M = 0
        if self.is_first:
            if x.ndim != 2 or x.dtype.kind not in "ui":
                raise InvalidModelInput("token ids must be an integer array [B, T]")
        elif x.ndim != 3 or x.shape[2] != self.n_embd or x.dtype != np.float32:
            raise InvalidModelInput(f"hidden states must be float32 [B, T, {self.n_embd}]")
        seg = plan_rows((x.shape[0], x.shape[1]), slots, lens, self.n_slots, SLOT_PREFILL_ROWS,
                        self.slot_len, self.n_positions)
        B = len(seg)
        for b in range(B):
            s = slots[b]
            n_new = seg[b]
            self.row_slots[b] = s
            self.row_pos[b] = self.slot_lens[s]
            self.row_off[b] = <int>M
            self.row_len[b] = n_new
            M += n_new
            max_len = max(max_len, n_new)
        self._ensure_rows(B, 1)         # logits: one row per sequence
        self._ensure_rows(1, <int>M)    # activations: M rows; attention scratch: M >= any T
        if self.is_first:
            if (x < 0).any() or (x >= self.n_vocab).any():
                raise InvalidModelInput(f"token id out of range for vocab_size {self.n_vocab}")
            np.copyto(self._ids[:M], x.reshape(-1), casting="unsafe")
        else:
            np.copyto(self._residual[:M], x.reshape(M, self.n_embd), casting="no")
        with nogil:
            self._forward_slots(B, M, max_len)
            gpt2_pool_quiesce(self.pool)
        for b in range(B):
            self.slot_lens[self.row_slots[b]] += self.row_len[b]
        self._view = None
        if self.is_last:
            return self._logits[:B]
        if lens is None:
            return self._residual[:M].reshape(B, seg[0], self.n_embd)
        return self._residual[:M].reshape(1, M, self.n_embd)

    cdef int _ensure_rows(self, int B, int T) except -1:
        """Activation buffers for B rows of T (the legacy KV cache is not touched)."""
        cdef int saved = self.batch_capacity
        self.batch_capacity = max(saved, B)   # keep _ensure_capacity off the legacy cache
        try:
            self._ensure_capacity(B, T)
        finally:
            self.batch_capacity = saved
        return 0

    cdef void _forward_slots(self, int B, long M, int max_len) noexcept nogil:
        """B sequences, sequence b at activation rows [row_off[b], + row_len[b])."""
        cdef int C = self.n_embd
        cdef int layer, b
        cdef bint exact = max_len <= SLOT_PREFILL_ROWS     # every row computed as if alone
        cdef BlockWeights* blk
        if self.is_first:
            for b in range(B):
                if self.wte_w.dtype == WK_F32:
                    embedding_forward(self.residual + <long>self.row_off[b] * C, self.ids + self.row_off[b],
                                      self.wte, self.wpe, 1, self.row_len[b], self.row_pos[b], C)
                else:
                    self._embedding_quantized_rows(self.row_off[b], self.row_len[b], self.row_pos[b])
        for layer in range(self.n_blocks):
            blk = &self.blocks[layer]
            self._rows(ROW_LAYERNORM, self.ln_out, self.residual, blk.ln_1_weight, blk.ln_1_bias, M, C)
            self._slot_matmul(self.qkv, self.ln_out, blk.c_attn_weight, blk.c_attn_bias, M, C, 3 * C, exact,
                              &blk.c_attn_w)
            self._slot_attention(layer, B)
            self._slot_matmul(self.block_out, self.attn_out, blk.attn_proj_weight, blk.attn_proj_bias,
                              M, C, C, exact, &blk.attn_proj_w)
            self._rows(ROW_RESIDUAL, self.residual, self.block_out, NULL, NULL, M, C)
            self._rows(ROW_LAYERNORM, self.ln_out, self.residual, blk.ln_2_weight, blk.ln_2_bias, M, C)
            self._slot_matmul(self.fc, self.ln_out, blk.c_fc_weight, blk.c_fc_bias, M, C, 4 * C, exact,
                              &blk.c_fc_w)
            self._rows(ROW_GELU, self.fc, NULL, NULL, NULL, M, 4 * C)
            self._slot_matmul(self.block_out, self.fc, blk.mlp_proj_weight, blk.mlp_proj_bias, M, 4 * C, C,
                              exact, &blk.mlp_proj_w)
            self._rows(ROW_RESIDUAL, self.residual, self.block_out, NULL, NULL, M, C)
        if self.is_last:
            for b in range(B):
                layernorm_forward(self.ln_out + <long>b * C,
                                  self.residual + (<long>self.row_off[b] + self.row_len[b] - 1) * C,
                                  self.ln_f_weight, self.ln_f_bias, 1, C, self.eps)
            self._slot_lm_head(B)

    cdef void _embedding_quantized_rows(self, int off, int n, int pos) noexcept nogil:
        """_embedding_quantized for one slotted sequence: rows [off, off + n) at pos."""
        cdef int C = self.n_embd
        cdef int t
        cdef float* row
        for t in range(n):
            row = self.residual + <long>(off + t) * C
            dequant_rows(row, &self.wte_w, self.ids[off + t], 1)
            residual_forward(row, self.wpe + <long>(pos + t) * C, C)

    cdef void _slot_matmul(self, float* out, const float* inp, const float* weight,
                           const float* bias, long M, long K, long N, bint exact,
                           const wk_weight* wq) noexcept nogil:
        """``exact`` (decode rows and prefills of up to SLOT_PREFILL_ROWS positions): each
        row computed as if alone, by the row-batched kernel (fp32) or cmlp._wkernels with
        WK_ROW_EXACT (which reads the weights once for all rows); a longer prefill (alone in
        its forward): the usual dispatch."""
        cdef MatmulTask task
        cdef long n_chunks
        cdef wk_weight exact_w
        if not exact:
            self._matmul(out, inp, weight, bias, M, K, N, wq)
            return
        if wq.dtype != WK_F32:
            # a row's result must not depend on how many rows share the step
            # (wkernels.h: WK_ROW_EXACT; vdpbf16ps would round activations for M >= 2)
            exact_w = wq[0]
            exact_w.flags = exact_w.flags | WK_FP32_ACT | WK_ROW_EXACT
            self._matmul(out, inp, weight, bias, M, K, N, &exact_w)
            return
        task.out = out
        task.inp = inp
        task.weight = weight
        task.bias = bias
        task.M = M
        task.K = K
        task.N = N
        task.trans_weight = False
        task.chunk_rows = gemv_chunk_rows(1, N)     # the k-chunks of the M == 1 path
        if M <= 2:      # the slabs stream in address order; [M, N] partials fit L1
            task.partials = self.slot_partials
            n_chunks = ceil_div(K, task.chunk_rows)
            gpt2_pool_run(self.pool, matmul_rows_chunk, &task, n_chunks)
            self._reduce(out, self.slot_partials, bias, n_chunks, M, N)
            return
        task.chunk_cols = max(<long>SLOT_COLS_PER_TASK, ceil_div(ceil_div(N, self.threads), 48) * 48)
        gpt2_pool_run(self.pool, matmul_cols_chunk, &task, ceil_div(N, task.chunk_cols))

    cdef void _reduce(self, float* out, const float* partials, const float* bias, long n_chunks,
                      long M, long N) noexcept nogil:
        """The chunks' partial sums into out, split by columns over the pool (the partials
        of M rows are megabytes: one thread adding them cost a quarter of a batched step)."""
        cdef ReduceTask task
        task.out = out
        task.partials = partials
        task.bias = bias
        task.n_chunks = n_chunks
        task.M = M
        task.N = N
        task.cols = max(<long>64, ceil_div(ceil_div(N, self.threads), 16) * 16)
        gpt2_pool_run(self.pool, reduce_chunk, &task, ceil_div(N, task.cols))

    cdef void _slot_lm_head(self, int B) noexcept nogil:
        cdef MatmulTask task
        cdef wk_weight exact
        if self.wte_w.dtype != WK_F32:
            exact = self.wte_w      # row-exact for any B (see _slot_matmul)
            exact.flags = exact.flags | WK_FP32_ACT | WK_ROW_EXACT
            linear_forward(self.pool, self.logits, self.ln_out, B, &exact, NULL, self.wtiles)
            return
        task.out = self.logits
        task.inp = self.ln_out
        task.weight = self.wte
        task.bias = NULL
        task.M = B
        task.K = self.n_embd
        task.N = self.n_vocab
        task.trans_weight = True
        task.chunk_rows = gemv_chunk_rows(1, task.K)
        gpt2_pool_run(self.pool, lm_rows_chunk, &task, ceil_div(task.N, task.chunk_rows))

    cdef void _slot_attention(self, int block, int B) noexcept nogil:
        cdef SlotAttentionTask task
        task.out = self.attn_out
        task.qkv = self.qkv
        task.k_cache = self._slot_cache(block, 0)
        task.v_cache = self._slot_cache(block, 1)
        task.slots = self.row_slots
        task.pos = self.row_pos
        task.off = self.row_off
        task.lens = self.row_len
        task.C = self.n_embd
        task.H = self.n_head
        task.D = self.head_dim
        task.n_positions = self.n_positions
        task.scale = 1.0 / sqrtf(<float>self.head_dim)
        task.scratch = self.scratch
        task.scratch_stride = self.scratch_stride
        gpt2_pool_run(self.pool, slot_attention_chunk, &task, <long>B * self.n_head)
