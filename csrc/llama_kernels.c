/* Llama-family kernels: see llama_kernels.h for layouts. */
#include "llama_kernels.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define LLAMA_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 6
#define LLAMA_HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LLAMA_HOT
#endif

/* independent partial sums: lets the compiler vectorise a float reduction
 * without -ffast-math (the summation order is fixed, so results are reproducible) */
#define LANES 16
/* dot products: 64 lanes = 4 AVX-512 / 8 AVX2 accumulators, enough to hide the FMA latency */
#define DOT_LANES 64

static inline float bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* IEEE half -> float, exact for every input (subnormals, inf, NaN). */
static inline float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0x1Fu) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        /* subnormal: man * 2^-24, exact in float32 */
        float f = (float)man * 5.9604644775390625e-8f;
        memcpy(&bits, &f, sizeof bits);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

LLAMA_HOT
void rmsnorm_forward(float *out, const float *inp, const float *weight, long rows, int C,
                     float eps)
{
    for (long r = 0; r < rows; r++) {
        const float *x = inp + r * C;
        float *y = out + r * C;
        float acc[LANES] = {0};
        int j = 0;
        for (; j + LANES <= C; j += LANES)
            for (int l = 0; l < LANES; l++)
                acc[l] += x[j + l] * x[j + l];
        float ss = 0.0f;
        for (int l = 0; l < LANES; l++)
            ss += acc[l];
        for (; j < C; j++)
            ss += x[j] * x[j];
        float inv = 1.0f / sqrtf(ss / (float)C + eps);
        for (j = 0; j < C; j++)
            y[j] = weight[j] * (x[j] * inv);
    }
}

void rope_tables(float *cos_t, float *sin_t, const float *inv_freq, int half, int pos0, int T,
                 float scaling)
{
    for (int t = 0; t < T; t++) {
        float pos = (float)(pos0 + t);
        for (int i = 0; i < half; i++) {
            float angle = pos * inv_freq[i];
            cos_t[(long)t * half + i] = (float)cos((double)angle) * scaling;
            sin_t[(long)t * half + i] = (float)sin((double)angle) * scaling;
        }
    }
}

void rope_rotate(float *v, const float *cos_row, const float *sin_row, int half)
{
    for (int i = 0; i < half; i++) {
        float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * cos_row[i] - x2 * sin_row[i];
        v[i + half] = x2 * cos_row[i] + x1 * sin_row[i];
    }
}

LLAMA_HOT
void silu_mul_forward(float *gate, const float *up, long n)
{
    for (long i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

LLAMA_HOT
void widen_to_f32(float *out, const void *src, int dtype, long n)
{
    if (dtype == LLAMA_F32) {
        memcpy(out, src, (size_t)n * sizeof(float));
    } else if (dtype == LLAMA_BF16) {
        const uint16_t *h = (const uint16_t *)src;
        for (long i = 0; i < n; i++)
            out[i] = bf16_to_f32(h[i]);
    } else {
        const uint16_t *h = (const uint16_t *)src;
        for (long i = 0; i < n; i++)
            out[i] = f16_to_f32(h[i]);
    }
}

void embed_rows(float *out, const uint32_t *ids, long n, const void *table, int dtype, int C)
{
    size_t elem = dtype == LLAMA_F32 ? 4 : 2;
    for (long i = 0; i < n; i++)
        widen_to_f32(out + i * C, (const char *)table + (size_t)ids[i] * C * elem, dtype, C);
}

LLAMA_HOT
static float dot_bf16(const float *x, const uint16_t *w, long K)
{
    float acc[DOT_LANES] = {0};
    long j = 0;
    for (; j + DOT_LANES <= K; j += DOT_LANES)
        for (int l = 0; l < DOT_LANES; l++)
            acc[l] += x[j + l] * bf16_to_f32(w[j + l]);
    float s = 0.0f;
    for (int l = 0; l < DOT_LANES; l++)
        s += acc[l];
    for (; j < K; j++)
        s += x[j] * bf16_to_f32(w[j]);
    return s;
}

LLAMA_HOT
static float dot_f16(const float *x, const uint16_t *w, long K)
{
    float acc[DOT_LANES] = {0};
    long j = 0;
    for (; j + DOT_LANES <= K; j += DOT_LANES)
        for (int l = 0; l < DOT_LANES; l++)
            acc[l] += x[j + l] * f16_to_f32(w[j + l]);
    float s = 0.0f;
    for (int l = 0; l < DOT_LANES; l++)
        s += acc[l];
    for (; j < K; j++)
        s += x[j] * f16_to_f32(w[j]);
    return s;
}

void matvec_rows_half(float *y, const float *x, const void *weight, int dtype, long r_begin,
                      long r_end, long K)
{
    const uint16_t *w = (const uint16_t *)weight;
    for (long r = r_begin; r < r_end; r++)
        y[r] = dtype == LLAMA_BF16 ? dot_bf16(x, w + r * K, K) : dot_f16(x, w + r * K, K);
}
