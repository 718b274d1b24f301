/* Reduced-precision weight kernels with runtime CPU dispatch (see wkernels.h).
 *
 * The kernel bodies live in wkernels_impl.h and are compiled here once per
 * instruction set inside `#pragma GCC target` regions, so the build stays
 * portable (no -march=native) and every path exists in every binary: tests
 * force each one that the CPU can run.
 */
#define _GNU_SOURCE
#include "wkernels.h"
#include "vec16.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define WK_X86 1
#include <immintrin.h>
#endif

/* 16-float vectors, vsum: vec16.h */
typedef uint16_t v16u16 __attribute__((vector_size(32)));
typedef int8_t v16i8 __attribute__((vector_size(16)));

/* ---- scalar conversions (tails and the generic fp16 path) ----------------- */

static inline float wk_id_f32(float v) { return v; }
static inline float wk_i8_to_f32(int8_t v) { return (float)v; }

static inline float wk_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* IEEE binary16 -> binary32, exact for every input (subnormals, inf, NaN). */
static inline float wk_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: man * 2^-24 is exact in fp32 */
        float f = (float)man * 5.9604644775390625e-8f;
        memcpy(&bits, &f, sizeof bits);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* ---- the per-ISA instantiations ------------------------------------------- */

#define WK_SFX(name) name##_generic
#include "wkernels_impl.h"
#undef WK_SFX

#ifdef WK_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define WK_SFX(name) name##_avx2
#define WK_HAVE_F16C 1
#include "wkernels_impl.h"
#undef WK_HAVE_F16C
#undef WK_SFX
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#define WK_SFX(name) name##_avx512
#define WK_HAVE_AVX512 1
#include "wkernels_impl.h"
#undef WK_HAVE_AVX512
#undef WK_SFX
#pragma GCC pop_options

/* ---- AVX-512 VNNI: Linear int8 with vpdpwssd -------------------------------
 * Weight-only int8 spends its time widening weights to fp32 (pmovsx + cvt +
 * FMA per 16 weights), not reading them.  Here activations are rounded once
 * per slab to int16 with one scale per input row (sx = max|x| / 32767, a
 * relative error of at most 2^-16 of the row's largest value: far below the
 * int8 weight error), weights are widened to int16 (one vpmovsxbw per 32),
 * and vpdpwssd does 32 exact multiply-adds into int32 lanes.  Blocks of
 * WK_VNNI_BLOCK inputs bound each lane's int32 sum (64 pairs of
 * 127 * 32767 < 2^31 / 3) before it is added into an fp32 accumulator. */
#define WK_VNNI_BLOCK 2048
#define WK_VNNI_MAX_XQ 32768 /* int16 activations on the stack: M * K32 <= this */

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")
static inline __attribute__((always_inline)) void vnni_rows(
    float *y, long ldy, const int16_t *xq, const float *sx, const float *x, long ldx,
    const int MC, const int8_t *w, const float *scales, long K, long K32, long nb, long ne)
{
    for (long n = nb; n < ne; n++) {
        const int8_t *wr = w + n * K;
        __m512 facc[WK_SMALL_M];
        for (int m = 0; m < MC; m++)
            facc[m] = _mm512_setzero_ps();
        for (long kb = 0; kb < K32; kb += WK_VNNI_BLOCK) {
            long ke = kb + WK_VNNI_BLOCK < K32 ? kb + WK_VNNI_BLOCK : K32;
            __m512i acc0[WK_SMALL_M], acc1[WK_SMALL_M];
            for (int m = 0; m < MC; m++)
                acc0[m] = acc1[m] = _mm512_setzero_si512();
            long k = kb;
            for (; k + 64 <= ke; k += 64) {
                __m256i b0, b1;
                memcpy(&b0, wr + k, sizeof b0);
                memcpy(&b1, wr + k + 32, sizeof b1);
                __m512i w0 = _mm512_cvtepi8_epi16(b0), w1 = _mm512_cvtepi8_epi16(b1);
                for (int m = 0; m < MC; m++) {
                    const int16_t *xm = xq + m * K32 + k;
                    acc0[m] = _mm512_dpwssd_epi32(acc0[m], w0, _mm512_loadu_si512(xm));
                    acc1[m] = _mm512_dpwssd_epi32(acc1[m], w1, _mm512_loadu_si512(xm + 32));
                }
            }
            for (; k < ke; k += 32) {
                __m256i b0;
                memcpy(&b0, wr + k, sizeof b0);
                __m512i w0 = _mm512_cvtepi8_epi16(b0);
                for (int m = 0; m < MC; m++)
                    acc0[m] = _mm512_dpwssd_epi32(acc0[m], w0, _mm512_loadu_si512(xq + m * K32 + k));
            }
            for (int m = 0; m < MC; m++)
                facc[m] = _mm512_add_ps(facc[m], _mm512_cvtepi32_ps(_mm512_add_epi32(acc0[m], acc1[m])));
        }
        for (int m = 0; m < MC; m++) {
            float t = _mm512_reduce_add_ps(facc[m]) * sx[m];
            for (long kk = K32; kk < K; kk++)   /* tail: exact fp32 activations */
                t += (float)wr[kk] * x[m * ldx + kk];
            y[m * ldy + n] = t * scales[n];
        }
    }
}

/* xq[m, 0:K32] = round(x[m, 0:K32] / sx[m]) as int16, sx[m] = max|x[m]| / 32767 */
static void quantize_rows_i16(int16_t *xq, float *sx, const float *x, long ldx, int M, long K32)
{
    for (int m = 0; m < M; m++) {
        const float *xm = x + m * ldx;
        __m512 amax = _mm512_setzero_ps();
        __mmask16 nonfinite = 0;
        for (long k = 0; k < K32; k += 16) {
            __m512 a = _mm512_abs_ps(_mm512_loadu_ps(xm + k));
            nonfinite |= _mm512_cmp_ps_mask(a, _mm512_set1_ps(3.4028235e38f), _CMP_NLE_UQ);
            amax = _mm512_max_ps(amax, a);
        }
        float mx = _mm512_reduce_max_ps(amax);
        /* all zeros: scale 1 keeps the conversion defined.  NaN/inf (hostile
         * or overflowed activations): the row's outputs become NaN, as the
         * fp32 paths would give, instead of finite garbage from saturation. */
        sx[m] = mx > 0.0f ? mx / 32767.0f : 1.0f;
        __m512 inv = _mm512_set1_ps(nonfinite ? 0.0f : 1.0f / sx[m]);
        if (nonfinite)
            sx[m] = __builtin_nanf("");
        for (long k = 0; k < K32; k += 32) {
            __m512i a = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xm + k), inv));
            __m512i b = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xm + k + 16), inv));
            /* saturating pack interleaves 128-bit lanes: permute back to k order */
            __m512i packed = _mm512_packs_epi32(a, b);
            packed = _mm512_permutexvar_epi64(_mm512_set_epi64(7, 5, 3, 1, 6, 4, 2, 0), packed);
            _mm512_storeu_si512(xq + m * K32 + k, packed);
        }
    }
}

static void vnni_dispatch(float *y, long ldy, const int16_t *xq, const float *sx, const float *x,
                          long ldx, int M, const wk_weight *w, long K32, long nb, long ne)
{
    long K = w->K;
    const int8_t *wd = w->data;
    switch (M) {
    case 1: vnni_rows(y, ldy, xq, sx, x, ldx, 1, wd, w->scales, K, K32, nb, ne); break;
    case 2: vnni_rows(y, ldy, xq, sx, x, ldx, 2, wd, w->scales, K, K32, nb, ne); break;
    case 3: vnni_rows(y, ldy, xq, sx, x, ldx, 3, wd, w->scales, K, K32, nb, ne); break;
    case 4: vnni_rows(y, ldy, xq, sx, x, ldx, 4, wd, w->scales, K, K32, nb, ne); break;
    case 5: vnni_rows(y, ldy, xq, sx, x, ldx, 5, wd, w->scales, K, K32, nb, ne); break;
    case 6: vnni_rows(y, ldy, xq, sx, x, ldx, 6, wd, w->scales, K, K32, nb, ne); break;
    case 7: vnni_rows(y, ldy, xq, sx, x, ldx, 7, wd, w->scales, K, K32, nb, ne); break;
    default: vnni_rows(y, ldy, xq, sx, x, ldx, 8, wd, w->scales, K, K32, nb, ne); break;
    }
}

static void linear_i8vnni(float *y, long ldy, const float *x, long ldx, int M,
                          const wk_weight *w, long nb, long ne)
{
    long K32 = w->K - w->K % 32;
    long rows = (w->flags & WK_ROW_EXACT) ? WK_SMALL_M : M; /* the same path for any M */
    if (rows * K32 > WK_VNNI_MAX_XQ) { /* activations too long for the stack buffer */
        linear_avx512(y, ldy, x, ldx, M, w, nb, ne);
        return;
    }
    int16_t xq[WK_VNNI_MAX_XQ] __attribute__((aligned(64)));
    float sx[WK_SMALL_M];
    quantize_rows_i16(xq, sx, x, ldx, M, K32);
    vnni_dispatch(y, ldy, xq, sx, x, ldx, M, w, K32, nb, ne);
}

/* Prefill micro-kernel: 16 outputs (one weight row each) in the lanes of one
 * register, MC input rows.  The weights of the 16 rows are packed as
 * pk[k/2][16][2] (int8 pairs), so one vpmovsxbw gives every lane its (k, k+1)
 * pair and each input row needs one broadcast of its own pair: no horizontal
 * sums.  Each lane adds 2 * 127 * 32767 per pair: int32 sums are moved to
 * fp32 every WK_MICRO_BLOCK inputs (128 pairs: < 2^31 / 2). */
#define WK_MICRO_BLOCK 256
#define WK_MICRO_M 12
#define WK_PACK_MAX_K 16384

static inline __attribute__((always_inline)) void vnni_micro(
    float *y, long ldy, const int16_t *xq, long K32, const float *sx, const float *x, long ldx,
    const int MC, const int8_t *pk, const int8_t *wd, long K, long n0, int nn,
    const float *scales)
{
    __m512 facc[WK_MICRO_M];
    for (int m = 0; m < MC; m++)
        facc[m] = _mm512_setzero_ps();
    for (long kb = 0; kb < K32; kb += WK_MICRO_BLOCK) {
        long ke = kb + WK_MICRO_BLOCK < K32 ? kb + WK_MICRO_BLOCK : K32;
        __m512i acc[WK_MICRO_M];
        for (int m = 0; m < MC; m++)
            acc[m] = _mm512_setzero_si512();
        for (long k = kb; k < ke; k += 2) {
            __m256i b;
            memcpy(&b, pk + k * 16, sizeof b);
            __m512i wv = _mm512_cvtepi8_epi16(b);
            for (int m = 0; m < MC; m++) {
                int32_t pair;
                memcpy(&pair, xq + m * K32 + k, sizeof pair);
                acc[m] = _mm512_dpwssd_epi32(acc[m], wv, _mm512_set1_epi32(pair));
            }
        }
        for (int m = 0; m < MC; m++)
            facc[m] = _mm512_add_ps(facc[m], _mm512_cvtepi32_ps(acc[m]));
    }
    __mmask16 mask = (__mmask16)((1u << nn) - 1);
    __m512 sc = _mm512_maskz_loadu_ps(mask, scales + n0);
    for (int m = 0; m < MC; m++) {
        __m512 v = _mm512_mul_ps(facc[m], _mm512_set1_ps(sx[m]));
        if (K32 < K) { /* tail inputs: exact fp32 activations */
            float t[16] = {0};
            for (int j = 0; j < nn; j++)
                for (long k = K32; k < K; k++)
                    t[j] += (float)wd[(n0 + j) * K + k] * x[m * ldx + k];
            v = _mm512_add_ps(v, _mm512_loadu_ps(t));
        }
        _mm512_mask_storeu_ps(y + m * ldy + n0, mask, _mm512_mul_ps(v, sc));
    }
}

/* Prefill: M <= WK_BLOCK_M rows quantized once into scratch; 16 weight rows
 * at a time packed on the stack (in L1) and run against every row group. */
static void linear_i8vnni_block(float *y, long ldy, const float *x, long ldx, int M,
                                const wk_weight *w, long nb, long ne, int16_t *xq)
{
    long K = w->K, K32 = K - K % 32;
    float sx[WK_BLOCK_M];
    quantize_rows_i16(xq, sx, x, ldx, M, K32);
    if (K32 <= WK_PACK_MAX_K) {
        int8_t pk[WK_PACK_MAX_K * 16] __attribute__((aligned(64)));
        const int8_t *wd = w->data;
        for (long n0 = nb; n0 < ne; n0 += 16) {
            int nn = ne - n0 < 16 ? (int)(ne - n0) : 16;
            for (int j = 0; j < 16; j++) {
                if (j < nn) {
                    const int8_t *src = wd + (n0 + j) * K;
                    for (long k = 0; k < K32; k += 2)
                        memcpy(pk + (k * 16 + 2 * j), src + k, 2);
                } else {
                    for (long k = 0; k < K32; k += 2)
                        memset(pk + (k * 16 + 2 * j), 0, 2);
                }
            }
            for (int m0 = 0; m0 < M; m0 += WK_MICRO_M) {
                int mc = M - m0 < WK_MICRO_M ? M - m0 : WK_MICRO_M;
                float *ym = y + m0 * ldy;
                const int16_t *xm = xq + m0 * K32;
                const float *xf = x + m0 * ldx;
                switch (mc) {
#define WK_MICRO_CASE(c) case c: vnni_micro(ym, ldy, xm, K32, sx + m0, xf, ldx, c, pk, wd, K, \
                                            n0, nn, w->scales); break;
                WK_MICRO_CASE(1) WK_MICRO_CASE(2) WK_MICRO_CASE(3) WK_MICRO_CASE(4)
                WK_MICRO_CASE(5) WK_MICRO_CASE(6) WK_MICRO_CASE(7) WK_MICRO_CASE(8)
                WK_MICRO_CASE(9) WK_MICRO_CASE(10) WK_MICRO_CASE(11)
                default: vnni_micro(ym, ldy, xm, K32, sx + m0, xf, ldx, WK_MICRO_M, pk, wd, K,
                                    n0, nn, w->scales); break;
#undef WK_MICRO_CASE
                }
            }
        }
        return;
    }
    for (long n0 = nb; n0 < ne; n0 += 16) {
        long n1 = n0 + 16 < ne ? n0 + 16 : ne;
        for (int m0 = 0; m0 < M; m0 += WK_SMALL_M) {
            int mc = M - m0 < WK_SMALL_M ? M - m0 : WK_SMALL_M;
            vnni_dispatch(y + m0 * ldy, ldy, xq + m0 * K32, sx + m0, x + m0 * ldx, ldx, mc, w,
                          K32, n0, n1);
        }
    }
}

static void linear_avx512vnni(float *y, long ldy, const float *x, long ldx, int M,
                              const wk_weight *w, long nb, long ne)
{
    if (w->dtype == WK_I8)
        linear_i8vnni(y, ldy, x, ldx, M, w, nb, ne);
    else
        linear_avx512(y, ldy, x, ldx, M, w, nb, ne);
}
#pragma GCC pop_options

/* ---- AVX-512 BF16: Linear bf16 with vdpbf16ps ------------------------------
 * Activations are rounded to bf16 (round to nearest even) once per slab into
 * a stack buffer, then each instruction does 32 multiply-adds of bf16 pairs
 * into fp32 accumulators: half the instructions of convert + FMA, which is
 * what matters once several input rows share each weight load.  Used for
 * M >= 2 only: a single row (decode) is memory bound on either path, and
 * the convert + FMA path keeps its activations exact. */
#define WK_DP_MAX_XB 32768 /* bf16 activations on the stack: M * K32 <= this */

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")
static inline __attribute__((always_inline)) void dp_rows(
    float *y, long ldy, const uint16_t *xb, const float *x, long ldx, const int MC,
    const uint16_t *w, long K, long K32, long nb, long ne)
{
    for (long n = nb; n < ne; n++) {
        const uint16_t *wr = w + n * K;
        __m512 acc0[WK_SMALL_M], acc1[WK_SMALL_M];
        for (int m = 0; m < MC; m++)
            acc0[m] = acc1[m] = _mm512_setzero_ps();
        long k = 0;
        for (; k + 64 <= K32; k += 64) {
            __m512i w0 = _mm512_loadu_si512(wr + k), w1 = _mm512_loadu_si512(wr + k + 32);
            for (int m = 0; m < MC; m++) {
                const uint16_t *xm = xb + m * K32 + k;
                acc0[m] = _mm512_dpbf16_ps(acc0[m], (__m512bh)_mm512_loadu_si512(xm),
                                           (__m512bh)w0);
                acc1[m] = _mm512_dpbf16_ps(acc1[m], (__m512bh)_mm512_loadu_si512(xm + 32),
                                           (__m512bh)w1);
            }
        }
        for (; k < K32; k += 32) {
            __m512i w0 = _mm512_loadu_si512(wr + k);
            for (int m = 0; m < MC; m++)
                acc0[m] = _mm512_dpbf16_ps(acc0[m], (__m512bh)_mm512_loadu_si512(xb + m * K32 + k),
                                           (__m512bh)w0);
        }
        for (int m = 0; m < MC; m++) {
            float t = _mm512_reduce_add_ps(_mm512_add_ps(acc0[m], acc1[m]));
            for (long kk = K32; kk < K; kk++)
                t += wk_bf16_to_f32(wr[kk]) * x[m * ldx + kk];
            y[m * ldy + n] = t;
        }
    }
}

static void linear_bf16dp(float *y, long ldy, const float *x, long ldx, int M,
                          const wk_weight *w, long nb, long ne)
{
    long K = w->K, K32 = K - K % 32;
    if ((long)M * K32 > WK_DP_MAX_XB) { /* activations too long for the stack buffer */
        linear_avx512(y, ldy, x, ldx, M, w, nb, ne);
        return;
    }
    uint16_t xb[WK_DP_MAX_XB] __attribute__((aligned(64)));
    for (int m = 0; m < M; m++)
        for (long k = 0; k < K32; k += 32) {
            __m512 lo = _mm512_loadu_ps(x + m * ldx + k), hi = _mm512_loadu_ps(x + m * ldx + k + 16);
            _mm512_storeu_si512(xb + m * K32 + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
    const uint16_t *wd = w->data;
    switch (M) {
    case 1: dp_rows(y, ldy, xb, x, ldx, 1, wd, K, K32, nb, ne); break;
    case 2: dp_rows(y, ldy, xb, x, ldx, 2, wd, K, K32, nb, ne); break;
    case 3: dp_rows(y, ldy, xb, x, ldx, 3, wd, K, K32, nb, ne); break;
    case 4: dp_rows(y, ldy, xb, x, ldx, 4, wd, K, K32, nb, ne); break;
    case 5: dp_rows(y, ldy, xb, x, ldx, 5, wd, K, K32, nb, ne); break;
    case 6: dp_rows(y, ldy, xb, x, ldx, 6, wd, K, K32, nb, ne); break;
    case 7: dp_rows(y, ldy, xb, x, ldx, 7, wd, K, K32, nb, ne); break;
    default: dp_rows(y, ldy, xb, x, ldx, 8, wd, K, K32, nb, ne); break;
    }
}

static void linear_avx512bf16(float *y, long ldy, const float *x, long ldx, int M,
                              const wk_weight *w, long nb, long ne)
{
    /* one input row is memory bound either way: keep its activations exact */
    if (w->dtype == WK_BF16 && M >= 2 && !(w->flags & (WK_FP32_ACT | WK_ROW_EXACT)))
        linear_bf16dp(y, ldy, x, ldx, M, w, nb, ne);
    else
        linear_avx512vnni(y, ldy, x, ldx, M, w, nb, ne);
}
#pragma GCC pop_options
#endif /* WK_X86 */

/* ---- dispatch ----------------------------------------------------------------- */

typedef void (*conv1d_fn)(float *, const float *, long, int, const wk_weight *, long, long);
typedef void (*linear_fn)(float *, long, const float *, long, int, const wk_weight *, long, long);
typedef void (*dequant_fn)(float *, const wk_weight *, int, long, long, long, long);
typedef float (*stream_fn)(const float *, long);

typedef struct {
    const char *name;
    conv1d_fn conv1d;
    linear_fn linear;
    dequant_fn dequant;
    stream_fn stream_sum;
} wk_impl;

static const wk_impl IMPLS[WK_N_ISAS] = {
    {"generic", conv1d_generic, linear_generic, dequant_generic, stream_sum_generic},
#ifdef WK_X86
    {"avx2", conv1d_avx2, linear_avx2, dequant_avx2, stream_sum_avx2},
    {"avx512", conv1d_avx512, linear_avx512, dequant_avx512, stream_sum_avx512},
    {"avx512vnni", conv1d_avx512, linear_avx512vnni, dequant_avx512, stream_sum_avx512},
    {"avx512bf16", conv1d_avx512, linear_avx512bf16, dequant_avx512, stream_sum_avx512},
#endif
};

static atomic_int active_isa = -1;

int wk_isa_detected(void)
{
#ifdef WK_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        if (!__builtin_cpu_supports("avx512vnni"))
            return WK_ISA_AVX512;
        if (__builtin_cpu_supports("avx512bf16"))
            return WK_ISA_AVX512BF16;
        return WK_ISA_AVX512VNNI;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
        && __builtin_cpu_supports("f16c"))
        return WK_ISA_AVX2;
#endif
    return WK_ISA_GENERIC;
}

const char *wk_isa_name(int isa)
{
    static const char *const names[WK_N_ISAS] = {"generic", "avx2", "avx512", "avx512vnni",
                                                         "avx512bf16"};
    return (isa >= 0 && isa < WK_N_ISAS) ? names[isa] : "?";
}

int wk_set_isa(int isa)
{
    if (isa < 0 || isa > wk_isa_detected())
        return -1;
    atomic_store(&active_isa, isa);
    return isa;
}

int wk_isa_active(void)
{
    int isa = atomic_load_explicit(&active_isa, memory_order_relaxed);
    if (isa >= 0)
        return isa;
    /* first use: the best supported path, or a lower one from CMLP_WK_ISA */
    isa = wk_isa_detected();
    const char *env = getenv("CMLP_WK_ISA");
    if (env && *env) {
        for (int i = 0; i < WK_N_ISAS; i++)
            if (strcmp(env, wk_isa_name(i)) == 0 && i <= isa)
                isa = i;
    }
    atomic_store(&active_isa, isa);
    return isa;
}

static const wk_impl *impl(void) { return &IMPLS[wk_isa_active()]; }

size_t wk_dtype_size(int dtype)
{
    switch (dtype) {
    case WK_F32: return 4;
    case WK_BF16: case WK_F16: return 2;
    case WK_I8: return 1;
    default: return 0;
    }
}

int wk_weight_check(const wk_weight *w)
{
    if (!w || wk_dtype_size(w->dtype) == 0)
        return -1;
    if (!w->data || w->N <= 0 || w->K <= 0)
        return -2;
    if ((w->dtype == WK_I8) != (w->scales != NULL))
        return -3;
    if (w->group_size != 0)
        return -4;
    if (w->flags & ~(WK_FP32_ACT | WK_ROW_EXACT))
        return -5;
    return 0;
}

void wk_conv1d_slab(float *y, const float *x, long ldx, int M, const wk_weight *w,
                    long k_begin, long k_end)
{
    impl()->conv1d(y, x, ldx, M, w, k_begin, k_end);
}

void wk_linear_slab(float *y, long ldy, const float *x, long ldx, int M, const wk_weight *w,
                    long n_begin, long n_end)
{
    impl()->linear(y, ldy, x, ldx, M, w, n_begin, n_end);
}

void wk_dequant_tile(float *out, const wk_weight *w, int linear, long r0, long rows, long c0,
                     long cols)
{
    impl()->dequant(out, w, linear, r0, rows, c0, cols);
}

void wk_reduce_partials(float *out, const float *partials, long n_chunks, int M, long N,
                        const float *bias, const float *scales)
{
    for (int m = 0; m < M; m++) {
        float *o = out + (long)m * N;
        memcpy(o, partials + (long)m * N, (size_t)N * sizeof(float));
        for (long c = 1; c < n_chunks; c++) {
            const float *p = partials + (c * M + m) * N;
            for (long n = 0; n < N; n++)
                o[n] += p[n];
        }
        if (scales)
            for (long n = 0; n < N; n++)
                o[n] *= scales[n];
        if (bias)
            for (long n = 0; n < N; n++)
                o[n] += bias[n];
    }
}

float wk_stream_sum(const float *p, long n) { return impl()->stream_sum(p, n); }

int wk_linear_i8_block(float *y, long ldy, const float *x, long ldx, int M, const wk_weight *w,
                       long n_begin, long n_end, void *scratch, size_t scratch_bytes)
{
#ifdef WK_X86
    long K32 = w->K - w->K % 32;
    if (wk_isa_active() < WK_ISA_AVX512VNNI || w->dtype != WK_I8 || M < 1 || M > WK_BLOCK_M
        || (size_t)M * K32 * sizeof(int16_t) > scratch_bytes || K32 == 0)
        return -1;
    linear_i8vnni_block(y, ldy, x, ldx, M, w, n_begin, n_end, scratch);
    return 0;
#else
    (void)y; (void)ldy; (void)x; (void)ldx; (void)M; (void)w; (void)n_begin; (void)n_end;
    (void)scratch; (void)scratch_bytes;
    return -1;
#endif
}
