# cython: language_level=3
"""C declarations used by cmlp._llama: the worker pool and GEMV/attention
kernels of csrc/gpt2_kernels.c (shared with GPT-2) and csrc/llama_kernels.c."""

from libc.stdint cimport uint32_t


cdef extern from "gpt2_kernels.h" nogil:
    ctypedef void (*gpt2_task_fn)(void* ctx, long chunk, int thread_idx) noexcept nogil
    ctypedef struct gpt2_pool:
        pass
    gpt2_pool* gpt2_pool_create(int n_threads)
    void gpt2_pool_destroy(gpt2_pool* pool)
    void gpt2_pool_run(gpt2_pool* pool, gpt2_task_fn fn, void* ctx, long n_chunks)
    void gpt2_pool_quiesce(gpt2_pool* pool)

    long ids_first_invalid(const uint32_t* ids, long n, uint32_t vocab_size)
    void residual_forward(float* residual, const float* delta, long n)
    void matvec_rows(float* y, const float* x, const float* weight, long r_begin, long r_end,
                     long K)
    void matvec_rows_multi(float* y, long ldy, const float* x, long ldx, int M,
                           const float* weight, long r_begin, long r_end, long K)
    void softmax_causal_forward(float* scores, int T, int S, long ld, int past_len, float scale)
    void attention_decode_forward(float* out, const float* q, const float* k_cache,
                                  const float* v_cache, int S, int D, float scale, float* scratch)

cdef extern from "llama_kernels.h" nogil:
    int LLAMA_F32
    int LLAMA_BF16
    int LLAMA_F16
    void rmsnorm_forward(float* out, const float* inp, const float* weight, long rows, int C,
                         float eps)
    void rope_tables(float* cos_t, float* sin_t, const float* inv_freq, int half, int pos0, int T,
                     float scaling)
    void rope_rotate(float* v, const float* cos_row, const float* sin_row, int half)
    void silu_mul_forward(float* gate, const float* up, long n)
    void widen_to_f32(float* out, const void* src, int dtype, long n)
    void embed_rows(float* out, const uint32_t* ids, long n, const void* table, int dtype, int C)
    void matvec_rows_half(float* y, const float* x, const void* weight, int dtype, long r_begin,
                          long r_end, long K)
