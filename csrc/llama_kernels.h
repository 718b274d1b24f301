/* Llama-family kernels (llama, qwen2): RMSNorm, RoPE, SwiGLU, half-precision weights.
 *
 * Layout conventions (row-major):
 *   activations  [rows, C] float32          rows = B*T
 *   Linear W     [N, K] as stored by HF     y = x W^T (+ b); F32, BF16 or F16 elements
 *   embed        [V, C]                     same dtype set; tied lm_head reads it as Linear
 *   KV cache     [B, KVH, S_max, D] float32 per layer, K and V separately
 *
 * Half-precision weights stay half in memory: rows are widened to float32 on
 * the fly and every sum accumulates in float32.  These are the simple,
 * portable versions (target_clones only); tuned AVX-512-BF16/AVX2 kernels
 * plug in behind the same calls.  The worker pool and the F32 GEMV are
 * gpt2_kernels.c's.
 */
#ifndef CMLP_LLAMA_KERNELS_H
#define CMLP_LLAMA_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types of stored weights (cmlp.model.safetensors_io.DTYPE_CODES). */
#define LLAMA_F32 0
#define LLAMA_BF16 1
#define LLAMA_F16 2

/* out[r] = inp[r] / sqrt(mean(inp[r]^2) + eps) * weight, r in [0, rows) (HF LlamaRMSNorm) */
void rmsnorm_forward(float *out, const float *inp, const float *weight, long rows, int C,
                     float eps);

/* cos/sin tables [T, half] for positions pos0..pos0+T-1:
 * angle = (float)pos * inv_freq[i] (float32, as HF's rotary embedding), times `scaling`. */
void rope_tables(float *cos_t, float *sin_t, const float *inv_freq, int half, int pos0, int T,
                 float scaling);

/* Rotate one head vector v[0:2*half] in place (HF rotate_half pairing: i with i + half). */
void rope_rotate(float *v, const float *cos_row, const float *sin_row, int half);

/* gate[i] = silu(gate[i]) * up[i], i in [0, n) */
void silu_mul_forward(float *gate, const float *up, long n);

/* out[i] = float(src[i]) for i in [0, n); src of dtype LLAMA_*. */
void widen_to_f32(float *out, const void *src, int dtype, long n);

/* out[i, 0:C] = float(table[ids[i], 0:C]) for i in [0, n) (ids checked by the caller) */
void embed_rows(float *out, const uint32_t *ids, long n, const void *table, int dtype, int C);

/* GEMV against half-precision weight rows, float32 accumulation:
 * y[r] = sum_k x[k] * float(weight[r, k]) for r in [r_begin, r_end). */
void matvec_rows_half(float *y, const float *x, const void *weight, int dtype, long r_begin,
                      long r_end, long K);

#ifdef __cplusplus
}
#endif

#endif /* CMLP_LLAMA_KERNELS_H */
