/* GPT-2 forward-pass kernels and the worker pool that runs them.
 *
 * Layout conventions (all row-major float32):
 *   activations  [rows, C]          rows = B*T, C = n_embd
 *   Conv1D W     [in, out]          as stored by HF; y = x W + b, never transposed
 *   wte          [V, C]             logits = h wte^T (tied lm_head)
 *   KV cache     [B, H, S_max, D]   per block, K and V separately
 *
 * Pointers may be unaligned: every vector load/store goes through memcpy.
 * Hot loops are compiled for AVX-512, AVX2+FMA and baseline x86-64 and the
 * best version is picked at load time (target_clones), so the build stays
 * portable (no -march=native).
 */
#ifndef CMLP_GPT2_KERNELS_H
#define CMLP_GPT2_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- worker pool ------------------------------------------------------ */

/* A task is cut into chunks 0..n_chunks-1; each chunk runs exactly once, on
 * whichever thread claims it (thread 0 is the caller).  thread_idx lets a
 * chunk use per-thread scratch. */
typedef void (*gpt2_task_fn)(void *ctx, long chunk, int thread_idx);
typedef struct gpt2_pool gpt2_pool;

/* n_threads >= 1 (n_threads - 1 workers are started); NULL on failure. */
gpt2_pool *gpt2_pool_create(int n_threads);
void gpt2_pool_destroy(gpt2_pool *pool);
int gpt2_pool_threads(const gpt2_pool *pool);   /* cmlp._wkernels sizes its slabs by it */
void gpt2_pool_quiesce(gpt2_pool *pool);
/* Runs every chunk of fn and returns when all have finished. */
void gpt2_pool_run(gpt2_pool *pool, gpt2_task_fn fn, void *ctx, long n_chunks);
/* How long an idle worker spins before it sleeps on a condition variable. */
#define GPT2_POOL_SPIN_NS 100000L

/* [begin, end) of part `idx` of `parts` of n items; boundaries are multiples
 * of `align` (except the final end), so column slices stay cache-line sized. */
void gpt2_split_range(long n, int parts, int idx, long align, long *begin, long *end);

/* ---- model kernels ---------------------------------------------------- */

/* out[b,t,:] = wte[ids[b,t]] + wpe[past_len + t] */
void embedding_forward(float *out, const uint32_t *ids, const float *wte, const float *wpe,
                       int B, int T, int past_len, int C);

/* Index of the first id >= vocab_size, or -1 when every id is valid. */
long ids_first_invalid(const uint32_t *ids, long n, uint32_t vocab_size);

/* out[r] = (inp[r] - mean) / sqrt(var + eps) * weight + bias, rows r in [0, rows) */
void layernorm_forward(float *out, const float *inp, const float *weight, const float *bias,
                       long rows, int C, float eps);

/* In place tanh-approximation GELU (HF gelu_new). */
void gelu_forward(float *x, long n);

/* residual += delta */
void residual_forward(float *residual, const float *delta, long n);

/* out[r, 0:cols] = bias[0:cols] for r in [0, rows); row stride ld. */
void bias_broadcast(float *out, const float *bias, long rows, long ld, long cols);

/* GEMV in the Conv1D layout over a slab of input rows:
 * y[0:N] = sum_{k in [k_begin, k_end)} x[k] * weight[k, 0:N]
 * The slab is contiguous memory, so each thread streams its own region. */
void matvec_conv1d(float *y, const float *x, const float *weight,
                   long k_begin, long k_end, long N);

/* Y[m, 0:N] = sum_{k in [k_begin, k_end)} X[m, k] * weight[k, 0:N] for the
 * M <= GPT2_SMALL_M rows of X (row stride ldx); Y is [M, N], contiguous. */
#define GPT2_SMALL_M 8
void matmul_conv1d_small(float *y, const float *x, long ldx, int M, const float *weight,
                         long k_begin, long k_end, long N);

/* Continuous batching's matmul for any M rows, columns [n_begin, n_end) of
 * Y = bias + X W, with W [K, N] read in k-chunks of chunk_rows: per element exactly
 * matmul_conv1d_small's sum over each chunk (from 0, k in order), added to bias in chunk
 * order, i.e. the M = 1 path's partials and reduction.  A row's result does not depend
 * on M, and column blocks run in parallel with no partial sums in memory.  Y [M, N]. */
void matmul_conv1d_rows(float *y, const float *x, long ldx, int M, const float *weight,
                        const float *bias, long K, long N, long chunk_rows, long n_begin, long n_end);

/* GEMV against row vectors: y[r] = dot(weight[r, 0:K], x) for r in [r_begin, r_end). */
void matvec_rows(float *y, const float *x, const float *weight, long r_begin, long r_end, long K);
/* matvec_rows for M >= 1 rows (y[m * ldy + r], x[m * ldx + k]): each weight row is read
 * once for all of them, and each row's result is bit-identical to matvec_rows on it alone */
void matvec_rows_multi(float *y, long ldy, const float *x, long ldx, int M, const float *weight,
                       long r_begin, long r_end, long K);

/* Row-wise causal softmax of scaled scores [T, S] (row stride ld): row i sees
 * keys j <= past_len + i; the masked tail is set to 0. */
void softmax_causal_forward(float *scores, int T, int S, long ld, int past_len, float scale);

/* One query against S cached keys of one head (decode):
 * out[0:D] = softmax(q . K[s] * scale) . V; scratch holds S floats. */
void attention_decode_forward(float *out, const float *q, const float *k_cache,
                              const float *v_cache, int S, int D, float scale, float *scratch);

#ifdef __cplusplus
}
#endif

#endif /* CMLP_GPT2_KERNELS_H */
