# cython: language_level=3
"""Llama-family shard forward pass (llama, qwen2) over OpenBLAS and csrc kernels.

Same rules as cmlp._gpt2, whose worker pool and F32 GEMV it reuses: raw
pointers into weight arrays kept alive by a reference, preallocated
activation buffers, a lazily backed KV cache, the whole forward with the
GIL released, no allocation per token.

Every matrix product, the lm_head included, goes through ``_linear``.
Weights keep their stored dtype (F32, BF16 as uint16 bits, F16, or I8 with
per-output-channel F32 scales); activations and accumulation are float32.
F32 weights take this module's GEMV / BLAS tiles; BF16, F16 and I8 take
cmlp._wkernels.linear_forward (runtime ISA dispatch: AVX-512 BF16/VNNI,
AVX-512, AVX2 or generic vectors), the same kernels GPT-2 uses.

Block (HF LlamaDecoderLayer):
    h = x + o(attn(rope(q(n1)), rope(k(n1)), v(n1)))     n1 = rmsnorm(x)
    x' = h + down(silu(gate(n2)) * up(n2))                n2 = rmsnorm(h)
Grouped-query attention: q head j reads KV head j // (H / KVH).
"""

import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint32_t
from libc.string cimport memcpy, memset

from cmlp.errors import InvalidModelInput, ModelError
from cmlp.slot_rows import plan_rows
from cmlp._gpt2 import aligned_empty   # also sets OpenBLAS to one thread (our pool owns threads)

from blas cimport gemm
from llama_kernels cimport *
from llama_types cimport Linear, LayerWeights
from cmlp._wkernels cimport (wk_weight, WK_F32, WK_BF16, WK_F16, WK_I8, WK_FP32_ACT, WK_ROW_EXACT,
                             weight_check,
                             dequant_rows, linear_forward, tile_floats)

cnp.import_array()

cdef extern from "<sys/mman.h>" nogil:
    int madvise(void* addr, size_t length, int advice)
    int MADV_NOHUGEPAGE
    int MADV_DONTNEED

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)
    void free(void* ptr)
    void* calloc(size_t n, size_t size)


cdef enum:
    MAX_THREADS = 64
    GEMV_CHUNK_BYTES = 262144    # weight bytes per GEMV chunk (as cmlp._gpt2)
    GEMM_TILE_ROWS = 512
    GEMM_TILE_COLS = 256
    ROWS_CHUNK_FLOATS = 16384
    MAX_ENGINE_BATCH = 4096
    # A slotted sequence of up to this many new positions is computed row by row exactly
    # as if alone, so it can share a forward with others (cmlp.slot_rows; as cmlp._gpt2)
    SLOT_PREFILL_ROWS = 16

MAX_POOL_THREADS = MAX_THREADS
DTYPE_CODES = {"F32": LLAMA_F32, "BF16": LLAMA_BF16, "F16": LLAMA_F16}


cdef enum:
    LLAMA_I8 = 3                # int8 weights (after LLAMA_F32/BF16/F16): wkernels path only


cdef inline long ceil_div(long a, long b) noexcept nogil:
    return (a + b - 1) // b


cdef inline float* fptr(cnp.ndarray arr):
    return <float*>cnp.PyArray_DATA(arr)


cdef inline long elem_size(int dtype) noexcept nogil:
    return 4 if dtype == LLAMA_F32 else 2


# ---------------------------------------------------------------------------
# Parallel tasks
# ---------------------------------------------------------------------------

cdef struct LinearTask:
    float* out                  # [M, N]
    const float* inp            # [M, K]
    const Linear* w
    long M
    long chunk_rows             # GEMV: weight rows per chunk; GEMM: input rows per tile
    long chunk_cols             # GEMM: weight rows (output columns) per tile
    long col_tiles


cdef void linear_gemv_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """y[m, r] = x[m] . W[r] for one slab of F32 weight rows: each weight row is loaded once
    for all M input rows, and each gets exactly the M == 1 arithmetic (so batched decode
    rows equal solo ones bit for bit)."""
    cdef LinearTask* task = <LinearTask*>ctx
    cdef const Linear* w = task.w
    cdef long r0 = chunk * task.chunk_rows
    cdef long r1 = min(r0 + task.chunk_rows, w.N)
    if task.M == 1:
        matvec_rows(task.out, task.inp, <const float*>w.data, r0, r1, w.K)
        return
    matvec_rows_multi(task.out, w.N, task.inp, w.K, <int>task.M, <const float*>w.data, r0, r1, w.K)


cdef void linear_gemm_tile(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """One [rows x cols] tile of out = inp @ W^T for F32 weights."""
    cdef LinearTask* task = <LinearTask*>ctx
    cdef const Linear* w = task.w
    cdef long m0 = (chunk // task.col_tiles) * task.chunk_rows
    cdef long n0 = (chunk % task.col_tiles) * task.chunk_cols
    cdef long rows = min(task.chunk_rows, task.M - m0)
    cdef long cols = min(task.chunk_cols, w.N - n0)
    cdef const float* wt = <const float*>w.data + n0 * w.K
    gemm(False, True, rows, cols, w.K, 1.0, task.inp + m0 * w.K, w.K, wt, w.K, 0.0,
         task.out + m0 * w.N + n0, w.N)


cdef struct AttentionTask:
    float* out                  # [B*T, H*D]
    float* q                    # [B*T, H*D] (rotated in place)
    float* k                    # [B*T, KVH*D] (rotated in place)
    const float* v              # [B*T, KVH*D]
    float* k_cache              # this layer's K, [batch_capacity or n_slots, KVH, max_pos, D]
    float* v_cache
    const float* rope_cos       # [T, D/2] shared, or [B*T, D/2] one table per row (slots)
    const float* rope_sin
    const int* slots            # [B] cache row of each sequence; NULL: row b is cache row b
    const int* pos              # [B] cached positions of each sequence; NULL: all past_len
    const int* off              # [B] first activation (and rope) row of each sequence (slots)
    const int* lens             # [B] its new positions; NULL: every sequence has T at b * T
    int B
    int T
    int past_len
    int H
    int KVH
    int D
    int max_pos
    float scale
    float* scratch              # [threads, scratch_stride]
    long scratch_stride


cdef void attention_group_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    """One (sequence, KV head): rotate and append its new K/V, then attend for its q heads.

    Sequence b lives in cache row slots[b] with pos[b] cached positions (continuous
    batching), or in row b with past_len positions (one batch moving in lockstep)."""
    cdef AttentionTask* task = <AttentionTask*>ctx
    cdef int b = chunk // task.KVH
    cdef int g = chunk % task.KVH
    cdef int D = task.D
    cdef int half = D // 2
    cdef int group = task.H // task.KVH
    cdef long q_ld = <long>task.H * D
    cdef long kv_ld = <long>task.KVH * D
    cdef int row_slot = b if task.slots == NULL else task.slots[b]
    cdef int past = task.past_len if task.pos == NULL else task.pos[b]
    cdef int T = task.T if task.lens == NULL else task.lens[b]
    cdef long r0 = <long>b * task.T if task.off == NULL else task.off[b]   # first row
    cdef long head_offset = (<long>row_slot * task.KVH + g) * task.max_pos * D
    cdef float* k_head = task.k_cache + head_offset
    cdef float* v_head = task.v_cache + head_offset
    cdef long rope_row = 0 if task.off == NULL else r0    # shared table, or one row each
    cdef const float* cos_b = task.rope_cos + rope_row * half
    cdef const float* sin_b = task.rope_sin + rope_row * half
    cdef float* scratch = task.scratch + thread_idx * task.scratch_stride
    cdef int t, j, h
    cdef float* row
    cdef float* q
    cdef float* out
    for t in range(T):
        row = task.k + (r0 + t) * kv_ld + g * D
        rope_rotate(row, cos_b + <long>t * half, sin_b + <long>t * half, half)
        memcpy(k_head + <long>(past + t) * D, row, D * sizeof(float))
        memcpy(v_head + <long>(past + t) * D, task.v + (r0 + t) * kv_ld + g * D, D * sizeof(float))
    cdef int S = past + T
    for j in range(group):
        h = g * group + j
        q = task.q + r0 * q_ld + <long>h * D
        out = task.out + r0 * q_ld + <long>h * D
        for t in range(T):
            rope_rotate(q + t * q_ld, cos_b + <long>t * half, sin_b + <long>t * half, half)
        if T == 1:
            attention_decode_forward(out, q, k_head, v_head, S, D, task.scale, scratch)
        else:
            gemm(False, True, T, S, D, 1.0, q, q_ld, k_head, D, 0.0, scratch, S)
            softmax_causal_forward(scratch, T, S, S, past, task.scale)
            gemm(False, False, T, D, S, 1.0, scratch, S, v_head, D, 0.0, out, q_ld)


cdef enum RowOp:
    ROW_RMSNORM
    ROW_SILU_MUL
    ROW_RESIDUAL


cdef struct RowsTask:
    RowOp op
    float* out
    const float* inp
    const float* weight
    long rows
    long width
    float eps
    long rows_per_chunk


cdef void rows_chunk(void* ctx, long chunk, int thread_idx) noexcept nogil:
    cdef RowsTask* task = <RowsTask*>ctx
    cdef long r0 = chunk * task.rows_per_chunk
    cdef long n = min(task.rows_per_chunk, task.rows - r0)
    cdef long offset = r0 * task.width
    if task.op == ROW_RMSNORM:
        rmsnorm_forward(task.out + offset, task.inp + offset, task.weight, n, task.width, task.eps)
    elif task.op == ROW_SILU_MUL:
        silu_mul_forward(task.out + offset, task.inp + offset, n * task.width)
    else:
        residual_forward(task.out + offset, task.inp + offset, n * task.width)


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------

cdef class LlamaEngine:
    """Forward pass of decoder layers [layer_start, layer_end) with a GQA KV cache.

    Not thread-safe (the Python wrapper holds a lock).  Outputs are views of
    internal buffers, valid until the next forward or clear_cache.
    """

    cdef readonly int hidden, n_head, n_kv_head, head_dim, intermediate, n_vocab, max_positions
    cdef readonly int n_layers, q_dim, kv_dim
    cdef readonly float eps, rope_attention_scaling
    cdef readonly bint is_first, is_last
    cdef readonly int past_len, cache_batch, threads
    cdef LayerWeights* layers
    cdef Linear embed               # [V, C] (data only; first shard)
    cdef Linear lm_head             # [V, C] (last shard; the embedding when tied)
    cdef const float* final_norm
    cdef const float* inv_freq      # [D/2]
    cdef list _weights
    cdef gpt2_pool* pool

    cdef long rows_capacity, seq_capacity, k_max
    cdef cnp.ndarray _ids, _residual, _norm, _q, _k, _v, _attn, _block_out, _gate, _up
    cdef cnp.ndarray _logits, _scratch, _wtiles, _rope_cos, _rope_sin, _last
    cdef uint32_t* ids
    cdef float* residual
    cdef float* norm
    cdef float* q
    cdef float* k
    cdef float* v
    cdef float* attn
    cdef float* block_out
    cdef float* gate
    cdef float* up
    cdef float* logits
    cdef float* last
    cdef float* scratch
    cdef long scratch_stride
    cdef float* wtiles              # [threads, tile_floats()]: wkernels prefill tiles
    cdef float* rope_cos
    cdef float* rope_sin
    cdef object _view
    cdef int _view_batch, _view_seq

    cdef float* kv
    cdef size_t kv_bytes
    cdef int batch_capacity

    # continuous batching (docs/batching.md): one KV row per sequence, each at its own
    # position, apart from the lockstep cache above
    cdef float* slot_kv             # [n_layers, 2, n_slots, KVH, max_positions, D]
    cdef size_t slot_kv_bytes
    cdef readonly int n_slots
    cdef int* slot_lens             # [n_slots] cached positions
    cdef int* row_slots             # [n_slots] slot of each row of the current forward
    cdef int* row_pos               # [n_slots] its cached positions before the forward
    cdef int* row_off               # [n_slots] its first activation row (row_pos + n_slots)
    cdef int* row_len               # [n_slots] its new positions (row_pos + 2 n_slots)

    def __cinit__(self):
        self.layers = NULL
        self.pool = NULL
        self.kv = NULL
        self.slot_kv = NULL
        self.slot_lens = self.row_slots = self.row_pos = NULL
        self.n_slots = 0

    def __init__(self, *, int hidden, int n_head, int n_kv_head, int head_dim, int intermediate,
                 int n_vocab, int max_positions, float eps, inv_freq,
                 float rope_attention_scaling, bint is_first, bint is_last, list layers,
                 embed=None, lm_head=None, final_norm=None, int threads=1):
        if min(hidden, n_head, n_kv_head, head_dim, intermediate, n_vocab, max_positions) <= 0:
            raise ModelError("model dimensions must be positive")
        if n_head % n_kv_head or head_dim % 2:
            raise ModelError(f"n_head {n_head} must be a multiple of n_kv_head {n_kv_head} "
                             f"and head_dim {head_dim} even")
        self.hidden = hidden
        self.n_head = n_head
        self.n_kv_head = n_kv_head
        self.head_dim = head_dim
        self.q_dim = n_head * head_dim
        self.kv_dim = n_kv_head * head_dim
        self.intermediate = intermediate
        self.n_vocab = n_vocab
        self.max_positions = max_positions
        self.eps = eps
        self.rope_attention_scaling = rope_attention_scaling
        self.is_first = is_first
        self.is_last = is_last
        self.n_layers = len(layers)
        self._weights = []
        self._view = None
        self.k_max = max(hidden, intermediate, self.q_dim)
        self.inv_freq = self._f32(inv_freq, (head_dim // 2,), "rope inv_freq")
        C, inter = hidden, intermediate
        self.layers = <LayerWeights*>calloc(max(self.n_layers, 1), sizeof(LayerWeights))
        if self.layers == NULL:
            raise MemoryError()
        cdef LayerWeights* lw
        for i, t in enumerate(layers):
            lw = &self.layers[i]
            where = f"layer {i}"
            lw.input_norm = self._f32(t.get("input_layernorm"), (C,), f"{where} input_layernorm")
            lw.post_norm = self._f32(t.get("post_attention_layernorm"), (C,),
                                     f"{where} post_attention_layernorm")
            self._linear_weight(&lw.q, t, "q_proj", self.q_dim, C, where)
            self._linear_weight(&lw.k, t, "k_proj", self.kv_dim, C, where)
            self._linear_weight(&lw.v, t, "v_proj", self.kv_dim, C, where)
            self._linear_weight(&lw.o, t, "o_proj", C, self.q_dim, where)
            self._linear_weight(&lw.gate, t, "gate_proj", inter, C, where)
            self._linear_weight(&lw.up, t, "up_proj", inter, C, where)
            self._linear_weight(&lw.down, t, "down_proj", C, inter, where)
        memset(&self.embed, 0, sizeof(Linear))
        memset(&self.lm_head, 0, sizeof(Linear))
        self.final_norm = NULL
        if is_first:
            self._set_linear(&self.embed, embed, n_vocab, C, None, "embed_tokens")
        if is_last:
            self._set_linear(&self.lm_head, lm_head, n_vocab, C, None, "lm_head")
            self.final_norm = self._f32(final_norm, (C,), "norm")
        self.rows_capacity = 0
        self.seq_capacity = 0
        self.batch_capacity = 0
        self.past_len = 0
        self.cache_batch = 0
        self.set_threads(threads)

    def __dealloc__(self):
        if self.pool != NULL:
            gpt2_pool_destroy(self.pool)
        free(self.layers)
        free(self.kv)
        free(self.slot_kv)
        free(self.slot_lens)
        free(self.row_slots)
        free(self.row_pos)

    cdef const float* _f32(self, arr, tuple shape, str name) except NULL:
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 \
                or not arr.flags.c_contiguous or arr.shape != shape:
            got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise ModelError(f"tensor {name}: expected C-contiguous float32 {shape}, got {got}")
        self._weights.append(arr)
        return <const float*>cnp.PyArray_DATA(<cnp.ndarray>arr)

    cdef int _linear_weight(self, Linear* lin, dict t, str name, long N, long K,
                            str where) except -1:
        bias = t.get(name.replace("_proj", "_bias"))
        return self._set_linear(lin, t.get(name), N, K, bias, f"{where} {name}")

    cdef int _set_linear(self, Linear* lin, arr, long N, long K, bias, str name) except -1:
        """Point a Linear at a weight [N, K]: float32, float16, bfloat16 bits as uint16,
        or a QuantizedWeight("i8") (int8 [N, K] + float32 scales [N])."""
        scales = None
        if getattr(arr, "dtype", None) == "i8":          # cmlp.model.quant.QuantizedWeight
            scales = getattr(arr, "scales", None)
            arr = getattr(arr, "data", None)
            if not isinstance(scales, np.ndarray) or scales.dtype != np.float32 \
                    or not scales.flags.c_contiguous or scales.shape != (N,):
                got = (f"{scales.dtype} {scales.shape}" if isinstance(scales, np.ndarray)
                       else type(scales).__name__)
                raise ModelError(f"tensor {name}: int8 weights need C-contiguous float32 "
                                 f"scales [{N}], got {got}")
            if not isinstance(arr, np.ndarray) or arr.dtype != np.int8:
                got = f"{arr.dtype}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise ModelError(f"tensor {name}: int8 weight data must be int8, got {got}")
        if not isinstance(arr, np.ndarray) or not arr.flags.c_contiguous or arr.shape != (N, K) \
                or arr.dtype not in (np.float32, np.float16, np.uint16, np.int8):
            got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise ModelError(f"tensor {name}: expected C-contiguous [{N}, {K}] float32, "
                             f"float16, bfloat16 (uint16) or int8 with scales, got {got}")
        if arr.dtype == np.int8 and scales is None:
            raise ModelError(f"tensor {name}: int8 weights need float32 scales [{N}]")
        lin.dtype = (LLAMA_F32 if arr.dtype == np.float32 else
                     LLAMA_F16 if arr.dtype == np.float16 else
                     LLAMA_I8 if arr.dtype == np.int8 else LLAMA_BF16)
        lin.data = cnp.PyArray_DATA(<cnp.ndarray>arr)
        lin.N = N
        lin.K = K
        lin.bias = NULL
        # the wkernels descriptor (Linear layout [N, K]); unused for F32
        lin.wk.dtype = (WK_F32 if lin.dtype == LLAMA_F32 else WK_F16 if lin.dtype == LLAMA_F16
                        else WK_I8 if lin.dtype == LLAMA_I8 else WK_BF16)
        lin.wk.data = lin.data
        lin.wk.scales = NULL
        lin.wk.group_size = 0
        lin.wk.N = N
        lin.wk.K = K
        # fp32 activations everywhere: bf16 results stay within 1e-4 of fp32 transformers
        # on the widened weights (vdpbf16ps would round activations: ~1e-2 on logits)
        lin.wk.flags = WK_FP32_ACT
        if scales is not None:
            lin.wk.scales = <const float*>cnp.PyArray_DATA(<cnp.ndarray>scales)
            self._weights.append(scales)
        if weight_check(&lin.wk) != 0:
            raise ModelError(f"tensor {name}: rejected by the weight kernels")
        if bias is not None:
            lin.bias = self._f32(bias, (N,), f"{name} bias")
        self._weights.append(arr)
        return 0

    # -- configuration -------------------------------------------------------

    def set_threads(self, int n):
        if not 1 <= n <= MAX_THREADS:
            raise ValueError(f"threads must be in [1, {MAX_THREADS}], got {n}")
        cdef gpt2_pool* pool = gpt2_pool_create(n)
        if pool == NULL:
            raise MemoryError("cannot start the worker pool")
        if self.pool != NULL:
            gpt2_pool_destroy(self.pool)
        self.pool = pool
        self.threads = n
        self._wtiles = aligned_empty((n * tile_floats(),))
        self.wtiles = fptr(self._wtiles)
        self._grow_scratch(max(self.seq_capacity, 1), force=True)

    cdef int _grow_scratch(self, long seq, bint force=False) except -1:
        """Per-thread attention scratch: [T, max_positions] scores."""
        if seq <= self.seq_capacity and not force:
            return 0
        self.seq_capacity = max(seq, self.seq_capacity)
        self.scratch_stride = self.seq_capacity * self.max_positions + 16
        self._scratch = aligned_empty((self.threads, self.scratch_stride))
        self.scratch = fptr(self._scratch)
        self._rope_cos = aligned_empty((self.seq_capacity, self.head_dim // 2))
        self._rope_sin = aligned_empty((self.seq_capacity, self.head_dim // 2))
        self.rope_cos = fptr(self._rope_cos)
        self.rope_sin = fptr(self._rope_sin)
        return 0

    cdef int _ensure_capacity(self, int B, int T, bint lockstep=True) except -1:
        """Activation buffers for B rows of T, and (lockstep) the shared KV cache for B."""
        cdef long rows = <long>B * T
        if rows > self.rows_capacity:
            self._view = None
            self._ids = aligned_empty((rows,), np.uint32)
            self._residual = aligned_empty((rows, self.hidden))
            self._norm = aligned_empty((rows, self.hidden))
            self._q = aligned_empty((rows, self.q_dim))
            self._k = aligned_empty((rows, self.kv_dim))
            self._v = aligned_empty((rows, self.kv_dim))
            self._attn = aligned_empty((rows, self.q_dim))
            self._block_out = aligned_empty((rows, self.hidden))
            self._gate = aligned_empty((rows, self.intermediate))
            self._up = aligned_empty((rows, self.intermediate))
            self.ids = <uint32_t*>cnp.PyArray_DATA(self._ids)
            self.residual = fptr(self._residual)
            self.norm = fptr(self._norm)
            self.q = fptr(self._q)
            self.k = fptr(self._k)
            self.v = fptr(self._v)
            self.attn = fptr(self._attn)
            self.block_out = fptr(self._block_out)
            self.gate = fptr(self._gate)
            self.up = fptr(self._up)
            self.rows_capacity = rows
        if T > self.seq_capacity:
            self._grow_scratch(T)
        if self.is_last and (self._logits is None or self._logits.shape[0] < B):
            self._view = None
            self._logits = aligned_empty((B, self.n_vocab))
            self._last = aligned_empty((B, self.hidden))
            self.logits = fptr(self._logits)
            self.last = fptr(self._last)
        if lockstep and B > self.batch_capacity:
            self._allocate_kv_cache(B)
        return 0

    cdef int _allocate_kv_cache(self, int B) except -1:
        if self.past_len != 0:
            raise RuntimeError("KV cache reallocation with cached positions")
        cdef size_t nbytes = (<size_t>self.n_layers * 2 * B * self.max_positions
                              * self.kv_dim * sizeof(float))
        cdef void* mem = NULL
        free(self.kv)
        self.kv = NULL
        self.batch_capacity = 0
        if posix_memalign(&mem, 4096, max(nbytes, <size_t>64)) != 0:
            raise MemoryError(f"cannot reserve a {nbytes}-byte KV cache")
        madvise(mem, nbytes, MADV_NOHUGEPAGE)   # lazily backed: only written positions
        self.kv = <float*>mem
        self.kv_bytes = nbytes
        self.batch_capacity = B
        return 0

    # -- state -----------------------------------------------------------------

    def clear_cache(self):
        """Forget every cached position (and wipe the cached K/V values)."""
        cdef int layer, kv, b, g
        cdef long head_stride = <long>self.max_positions * self.head_dim
        cdef size_t used = <size_t>self.past_len * self.head_dim * sizeof(float)
        if self.kv != NULL and self.past_len > 0:
            for layer in range(self.n_layers):
                for kv in range(2):
                    for b in range(self.cache_batch):
                        for g in range(self.n_kv_head):
                            memset(self._cache(layer, kv)
                                   + (<long>b * self.n_kv_head + g) * head_stride, 0, used)
        self.past_len = 0
        self.cache_batch = 0

    cdef inline float* _cache(self, int layer, int kv) noexcept nogil:
        return self.kv + ((<long>layer * 2 + kv) * self.batch_capacity
                          * self.max_positions * self.kv_dim)

    @property
    def kv_cache_bytes(self):
        return self.kv_bytes if self.kv != NULL else 0

    # -- slots: continuous batching (docs/batching.md) ----------------------------

    @property
    def slot_bytes(self):
        """Bytes one slot reserves (virtual; only written positions become resident)."""
        return <size_t>self.n_layers * 2 * self.max_positions * self.kv_dim * sizeof(float)

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
        madvise(mem, nbytes, MADV_NOHUGEPAGE)   # lazily backed: only written positions
        self.slot_kv = <float*>mem
        self.slot_kv_bytes = nbytes
        self.slot_lens = <int*>calloc(n, sizeof(int))
        self.row_slots = <int*>calloc(n, sizeof(int))
        self.row_pos = <int*>calloc(3 * n, sizeof(int))    # row_pos, row_off, row_len
        if self.slot_lens == NULL or self.row_slots == NULL or self.row_pos == NULL:
            raise MemoryError()
        self.row_off = self.row_pos + n
        self.row_len = self.row_pos + 2 * n
        self.n_slots = n

    cdef inline float* _slot_cache(self, int layer, int kv) noexcept nogil:
        return self.slot_kv + ((<long>layer * 2 + kv) * self.n_slots
                               * self.max_positions * self.kv_dim)

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
        cdef long head_stride = <long>self.max_positions * self.head_dim
        cdef long per_slot = <long>self.n_kv_head * head_stride
        cdef size_t region = per_slot * sizeof(float)
        cdef size_t used = <size_t>self.slot_lens[slot] * self.head_dim * sizeof(float)
        cdef int layer, kv, g
        cdef float* base
        if self.slot_lens[slot] == 0:
            return
        for layer in range(self.n_layers):
            for kv in range(2):
                base = self._slot_cache(layer, kv) + slot * per_slot
                for g in range(self.n_kv_head):
                    memset(base + g * head_stride, 0, used)
                if (<size_t>base) % 4096 == 0 and region % 4096 == 0:
                    madvise(base, region, MADV_DONTNEED)   # the kernel takes the pages back
        self.slot_lens[slot] = 0

    cdef void _wipe_slots(self) noexcept nogil:
        cdef int s
        for s in range(self.n_slots):
            self._clear_slot(s)

    def forward_slots(self, cnp.ndarray x, slots, lens=None):
        """Rows continuing slots, each sequence at its own position: ids [B, T] (first
        shard) or hidden [B, T, C] float32 / bfloat16 bits (others) for B sequences of T new
        positions, or with ``lens`` ids [1, M] / hidden [1, M, C] holding sequence b's
        lens[b] positions back to back (cmlp.slot_rows).  Returns a view: logits [B, V]
        (each sequence's last position), or hidden [B, T, C] / [1, M, C]."""
        if self.n_slots == 0:
            raise InvalidModelInput("no slots configured")
        cdef int B, b, s, n_new, max_len = 0
        cdef long M = 0, bad
        if self.is_first:
            if x.ndim != 2 or x.dtype.kind not in "ui":
                raise InvalidModelInput("token ids must be an integer array [B, T]")
        elif x.ndim != 3 or x.shape[2] != self.hidden or x.dtype not in (np.float32, np.uint16):
            raise InvalidModelInput(
                f"hidden states must be float32 or bfloat16 [B, T, {self.hidden}]")
        seg = plan_rows((x.shape[0], x.shape[1]), slots, lens, self.n_slots, SLOT_PREFILL_ROWS,
                        self.slot_len, self.max_positions)
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
        self._ensure_capacity(B, 1, False)          # logits: one row per sequence
        self._ensure_capacity(1, <int>M, False)     # activations; rope tables: one row each
        if self.is_first:
            if (x < 0).any() or (x >= self.n_vocab).any():
                raise InvalidModelInput(f"token id out of range for vocab_size {self.n_vocab}")
            np.copyto(self._ids[:M], x.reshape(-1), casting="unsafe")
            bad = ids_first_invalid(self.ids, M, self.n_vocab)
            if bad >= 0:
                raise InvalidModelInput(f"token id {self.ids[bad]} out of range for vocab_size "
                                        f"{self.n_vocab}")
        else:
            if not x.flags.c_contiguous:
                x = np.ascontiguousarray(x)
            widen_to_f32(self.residual, cnp.PyArray_DATA(x),
                         LLAMA_F32 if x.dtype == np.float32 else LLAMA_BF16, M * self.hidden)
        with nogil:
            self._forward(B, <int>M, True, max_len)
            gpt2_pool_quiesce(self.pool)
        for b in range(B):
            self.slot_lens[self.row_slots[b]] += self.row_len[b]
        self._view = None
        if self.is_last:
            return self._logits[:B]
        if lens is None:
            return self._residual[:M].reshape(B, seg[0], self.hidden)
        return self._residual[:M].reshape(1, M, self.hidden)

    @property
    def mix_rows(self):
        """The longest sequence (new positions) that may share a slotted forward."""
        return SLOT_PREFILL_ROWS

    # -- forward -----------------------------------------------------------------

    def forward_ids(self, cnp.ndarray x):
        """Token ids [B, T] -> hidden [B, T, C] or logits [B, V]."""
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
            invalid = (x < 0) | (x >= self.n_vocab)
            if invalid.any():
                bad_b, bad_t = np.argwhere(invalid)[0]
                raise InvalidModelInput(f"token id {x[bad_b, bad_t]} at [{bad_b}, {bad_t}] is out "
                                        f"of range for vocab_size {self.n_vocab}")
            np.copyto(self._ids[:n].reshape(B, T), x, casting="unsafe")
        cdef long bad = ids_first_invalid(self.ids, n, self.n_vocab)
        if bad >= 0:
            raise InvalidModelInput(f"token id {self.ids[bad]} at [{bad // T}, {bad % T}] is out "
                                    f"of range for vocab_size {self.n_vocab}")
        return self._run(B, T)

    def forward_hidden(self, cnp.ndarray x):
        """Hidden [B, T, C] float32, or bfloat16 bits (uint16) -> hidden or logits."""
        if self.is_first:
            raise InvalidModelInput("the first shard takes token ids, not hidden states")
        if x.ndim != 3 or x.shape[2] != self.hidden or x.dtype not in (np.float32, np.uint16):
            raise InvalidModelInput(
                f"hidden states must be float32 or bfloat16 [B, T, {self.hidden}]")
        self._check_positions(x.shape[0], x.shape[1])
        cdef int B = x.shape[0]
        cdef int T = x.shape[1]
        self._ensure_capacity(B, T)
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        widen_to_f32(self.residual, cnp.PyArray_DATA(x),
                     LLAMA_F32 if x.dtype == np.float32 else LLAMA_BF16, <long>B * T * self.hidden)
        return self._run(B, T)

    cdef int _check_positions(self, Py_ssize_t B, Py_ssize_t T) except -1:
        if not (1 <= B <= MAX_ENGINE_BATCH and 1 <= T and self.past_len + T <= self.max_positions):
            raise InvalidModelInput(f"invalid forward of [{B}, {T}] at position {self.past_len}")
        if self.past_len > 0 and B != self.cache_batch:
            raise InvalidModelInput(
                f"batch size {B} differs from the cached batch {self.cache_batch}")
        return 0

    cdef object _run(self, int B, int T):
        with nogil:
            self._forward(B, T, False)
            gpt2_pool_quiesce(self.pool)
        self.past_len += T
        self.cache_batch = B
        return self._output_view(B, T)

    cdef object _output_view(self, int B, int T):
        if (self._view is None or B != self._view_batch
                or (T != self._view_seq and not self.is_last)):
            if self.is_last:
                self._view = self._logits[:B]
            else:
                self._view = self._residual[:B * T].reshape(B, T, self.hidden)
            self._view_batch, self._view_seq = B, T
        return self._view

    cdef void _forward(self, int B, int T, bint slotted, int max_len=0) noexcept nogil:
        """B sequences of T new tokens in lockstep at past_len (the shared cache), or
        slotted: T rows in all, sequence b at rows [row_off[b], + row_len[b]) continuing
        slot row_slots[b] at position row_pos[b] (max_len: the longest)."""
        cdef long M = <long>B * T if not slotted else T
        cdef int C = self.hidden
        cdef int layer, b
        cdef long m, last_row
        cdef LayerWeights* lw
        # decode rows and short prefills: each row exactly as if alone
        cdef bint per_row = slotted and max_len <= SLOT_PREFILL_ROWS
        if self.is_first:
            if self.embed.dtype == LLAMA_I8:
                # ids were range-checked by forward_ids; one dequantised row each
                for m in range(M):
                    dequant_rows(self.residual + m * C, &self.embed.wk, self.ids[m], 1)
            else:
                embed_rows(self.residual, self.ids, M, self.embed.data, self.embed.dtype, C)
        cdef int half = self.head_dim // 2
        if slotted:   # one table per row: rows sit at different positions
            for b in range(B):
                rope_tables(self.rope_cos + <long>self.row_off[b] * half,
                            self.rope_sin + <long>self.row_off[b] * half,
                            self.inv_freq, half, self.row_pos[b], self.row_len[b],
                            self.rope_attention_scaling)
        else:
            rope_tables(self.rope_cos, self.rope_sin, self.inv_freq, half,
                        self.past_len, T, self.rope_attention_scaling)
        for layer in range(self.n_layers):
            lw = &self.layers[layer]
            self._rows(ROW_RMSNORM, self.norm, self.residual, lw.input_norm, M, C)
            self._linear(self.q, self.norm, &lw.q, M, per_row)
            self._linear(self.k, self.norm, &lw.k, M, per_row)
            self._linear(self.v, self.norm, &lw.v, M, per_row)
            self._attention(layer, B, T, slotted)
            self._linear(self.block_out, self.attn, &lw.o, M, per_row)
            self._rows(ROW_RESIDUAL, self.residual, self.block_out, NULL, M, C)
            self._rows(ROW_RMSNORM, self.norm, self.residual, lw.post_norm, M, C)
            self._linear(self.gate, self.norm, &lw.gate, M, per_row)
            self._linear(self.up, self.norm, &lw.up, M, per_row)
            self._rows(ROW_SILU_MUL, self.gate, self.up, NULL, M, self.intermediate)
            self._linear(self.block_out, self.gate, &lw.down, M, per_row)
            self._rows(ROW_RESIDUAL, self.residual, self.block_out, NULL, M, C)
        if self.is_last:
            # final norm and lm_head on the last position of each sequence only
            for b in range(B):
                last_row = (<long>self.row_off[b] + self.row_len[b] - 1 if slotted
                            else <long>b * T + T - 1)
                rmsnorm_forward(self.last + <long>b * C, self.residual + last_row * C,
                                self.final_norm, 1, C, self.eps)
            self._linear(self.logits, self.last, &self.lm_head, B, per_row)

    cdef void _rows(self, RowOp op, float* out, const float* inp, const float* weight,
                    long rows, long width) noexcept nogil:
        cdef RowsTask task
        task.op = op
        task.out = out
        task.inp = inp
        task.weight = weight
        task.rows = rows
        task.width = width
        task.eps = self.eps
        task.rows_per_chunk = max(1, ROWS_CHUNK_FLOATS // width)
        gpt2_pool_run(self.pool, rows_chunk, &task, ceil_div(rows, task.rows_per_chunk))

    cdef void _linear(self, float* out, const float* inp, const Linear* w, long M,
                      bint per_row=False) noexcept nogil:
        """out[M, N] = inp[M, K] @ W[N, K]^T (+ bias): THE matrix product of this engine.

        Every projection and the lm_head come through here.  BF16 / F16 / I8
        weights: cmlp._wkernels.linear_forward (slab GEMV for M <= WK_SMALL_M,
        VNNI int8 blocks or fp32-converted tiles + sgemm above; bias fused).
        F32 weights: streaming GEMV for M == 1 and for per_row (slotted decode rows,
        which must equal their solo runs bit for bit), BLAS tiles otherwise.
        """
        cdef LinearTask task
        cdef long m
        cdef wk_weight exact
        if w.dtype != LLAMA_F32:
            # descriptor checked at load (weight_check), so this cannot fail
            if per_row:
                exact = w.wk
                exact.flags = exact.flags | WK_ROW_EXACT
                linear_forward(<void*>self.pool, out, inp, M, &exact, w.bias, self.wtiles)
            else:
                linear_forward(<void*>self.pool, out, inp, M, &w.wk, w.bias, self.wtiles)
            return
        task.out = out
        task.inp = inp
        task.w = w
        task.M = M
        if M == 1 or per_row:
            task.chunk_rows = max(1, GEMV_CHUNK_BYTES // (w.K * elem_size(w.dtype)))
            gpt2_pool_run(self.pool, linear_gemv_chunk, &task, ceil_div(w.N, task.chunk_rows))
        else:
            task.chunk_rows = GEMM_TILE_ROWS
            task.chunk_cols = GEMM_TILE_COLS
            task.col_tiles = ceil_div(w.N, task.chunk_cols)
            gpt2_pool_run(self.pool, linear_gemm_tile, &task,
                          ceil_div(M, task.chunk_rows) * task.col_tiles)
        if w.bias != NULL:
            for m in range(M):
                residual_forward(out + m * w.N, w.bias, w.N)

    cdef void _attention(self, int layer, int B, int T, bint slotted) noexcept nogil:
        cdef AttentionTask task
        task.out = self.attn
        task.q = self.q
        task.k = self.k
        task.v = self.v
        if slotted:
            task.k_cache = self._slot_cache(layer, 0)
            task.v_cache = self._slot_cache(layer, 1)
            task.slots = self.row_slots
            task.pos = self.row_pos
            task.off = self.row_off
            task.lens = self.row_len
        else:
            task.k_cache = self._cache(layer, 0)
            task.v_cache = self._cache(layer, 1)
            task.slots = NULL
            task.pos = NULL
            task.off = NULL
            task.lens = NULL
        task.rope_cos = self.rope_cos
        task.rope_sin = self.rope_sin
        task.B = B
        task.T = T
        task.past_len = self.past_len
        task.H = self.n_head
        task.KVH = self.n_kv_head
        task.D = self.head_dim
        task.max_pos = self.max_positions
        task.scale = 1.0 / (<float>self.head_dim) ** 0.5
        task.scratch = self.scratch
        task.scratch_stride = self.scratch_stride
        gpt2_pool_run(self.pool, attention_group_chunk, &task, <long>B * self.n_kv_head)
