/* Reduced-precision weight kernels: GEMV / small-M GEMM slabs and tile
 * dequantisation for weights stored as fp32, bf16, fp16 or int8 (weight
 * only), always with fp32 activations and fp32 accumulation.
 *
 * Two weight layouts, both row-major:
 *   Conv1D  W [K, N]   y = x W      (HF GPT-2 Conv1D, stored [in, out])
 *   Linear  W [N, K]   y = x W^T    (HF nn.Linear, llama/qwen2, tied lm_head)
 *
 * int8 scales are per output channel (symmetric absmax / 127):
 *   Conv1D  scales [N]: W[k, n] ~= q[k, n] * scales[n]
 *   Linear  scales [N]: W[n, k] ~= q[n, k] * scales[n]
 * Per channel rather than group-wise: decode is memory bound, and per-channel
 * scales cost N floats per matrix (0.1% of the int8 bytes for K = 768) where
 * 128-wide groups cost 3%; GPT-2/llama rows have no outliers bad enough to
 * need groups at int8 (measured: tests/test_quant_model.py quality bounds).
 * group_size must be 0 (reserved for a group-wise format).
 *
 * Runtime dispatch: the slab kernels are compiled three times (generic
 * vectors for baseline x86-64, AVX2+FMA+F16C, AVX-512F/BW/VL), plus
 *   avx512vnni: Linear int8 with vpdpwssd (activations rounded to int16 with
 *               one scale per row: relative error <= 2^-16 of the row max);
 *   avx512bf16: that, and Linear bf16 with vdpbf16ps for 2..8 input rows
 *               (activations rounded to bf16; one row keeps fp32 ones).
 * Every other kernel keeps fp32 activations.  The best variant the CPU
 * supports is chosen on first use; CMLP_WK_ISA=generic|avx2|avx512|
 * avx512vnni|avx512bf16 or wk_set_isa() force a lower one (tests cover
 * every path this CPU can run).
 *
 * Pointers may be unaligned: all vector loads go through memcpy.
 */
#ifndef CMLP_WKERNELS_H
#define CMLP_WKERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* weight dtypes (values are part of the Cython API) */
enum { WK_F32 = 0, WK_BF16 = 1, WK_F16 = 2, WK_I8 = 3, WK_N_DTYPES = 4 };

/* instruction-set paths, lowest first */
enum { WK_ISA_GENERIC = 0, WK_ISA_AVX2 = 1, WK_ISA_AVX512 = 2, WK_ISA_AVX512VNNI = 3,
       WK_ISA_AVX512BF16 = 4, WK_N_ISAS = 5 };

/* most input rows the slab kernels take at once (decode rows, short prompts) */
#define WK_SMALL_M 8

typedef struct wk_weight {
    int dtype;            /* WK_F32 .. WK_I8 */
    const void *data;     /* [K, N] (Conv1D) or [N, K] (Linear), elements of dtype */
    const float *scales;  /* WK_I8: [N] per output channel; otherwise NULL */
    long group_size;      /* 0: per channel (the only format implemented) */
    long N;               /* output features */
    long K;               /* input features */
    int flags;            /* WK_FP32_ACT | WK_ROW_EXACT, or 0 */
} wk_weight;

/* flags: keep fp32 activations on every path (no bf16 rounding for vdpbf16ps),
 * for callers whose results must match an fp32 reference on the widened
 * weights to ~1e-5 relative (llama/qwen2 bf16: tests/test_model_llama_parity.py) */
#define WK_FP32_ACT 1
/* ... and make every row's result independent of how many rows share the call
 * (continuous batching: a decode row must equal its solo run bit for bit):
 * one row takes the multi-row kernel's arithmetic, the slab chunking is the
 * one-row chunking, rows go in groups of WK_SMALL_M and never to the tiles.
 * Set together with WK_FP32_ACT. */
#define WK_ROW_EXACT 2

size_t wk_dtype_size(int dtype);
/* 0 when w is usable by the kernels below, else a negative code */
int wk_weight_check(const wk_weight *w);

int wk_isa_detected(void);                /* best path this CPU supports */
int wk_isa_active(void);                  /* the path the kernels use now */
int wk_set_isa(int isa);                  /* force isa <= detected; returns active or -1 */
const char *wk_isa_name(int isa);

/* Conv1D slab: y[m, 0:N] = sum_{k in [k_begin, k_end)} x[m*ldx + k] * q(W[k, 0:N])
 * for m < M <= WK_SMALL_M.  y is [M, N] contiguous and overwritten.  For
 * int8, q() is the raw integer: scales are applied by wk_reduce_partials. */
void wk_conv1d_slab(float *y, const float *x, long ldx, int M, const wk_weight *w,
                    long k_begin, long k_end);

/* Linear slab: y[m*ldy + n] = scale[n] * sum_k x[m*ldx + k] * W[n, k] for
 * n in [n_begin, n_end), m < M <= WK_SMALL_M (scale 1 unless int8). */
void wk_linear_slab(float *y, long ldy, const float *x, long ldx, int M, const wk_weight *w,
                    long n_begin, long n_end);

/* out[m, n] = bias[n] + scale[n] * sum_{c < n_chunks} partials[c, m, n], in
 * chunk order (deterministic); bias and scales may be NULL. */
void wk_reduce_partials(float *out, const float *partials, long n_chunks, int M, long N,
                        const float *bias, const float *scales);

/* fp32 copy (scales applied) of the stored block rows [r0, r0+rows) x
 * columns [c0, c0+cols) into out [rows, cols]: Conv1D (linear = 0) rows are
 * k, Linear (linear = 1) rows are n.  Used by the tiled prefill path and by
 * embedding lookups (one row of a Linear-layout [V, C] table). */
void wk_dequant_tile(float *out, const wk_weight *w, int linear, long r0, long rows, long c0,
                     long cols);

/* Linear int8 for a block of M <= WK_BLOCK_M rows (prefill) on the VNNI
 * paths: y[m*ldy + n] for n in [n_begin, n_end), activations rounded to int16
 * per row into scratch (M * (K - K % 32) int16).  Returns -1 (nothing done)
 * when the active path has no VNNI or the arguments do not fit: the caller
 * then takes the fp32 tile path. */
#define WK_BLOCK_M 64
int wk_linear_i8_block(float *y, long ldy, const float *x, long ldx, int M, const wk_weight *w,
                       long n_begin, long n_end, void *scratch, size_t scratch_bytes);

/* sum of p[0:n]: a plain streaming read, the bandwidth ceiling for bench/ */
float wk_stream_sum(const float *p, long n);

#ifdef __cplusplus
}
#endif

#endif /* CMLP_WKERNELS_H */
