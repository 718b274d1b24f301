/* Kernel bodies of wkernels.c, compiled once per instruction set.
 *
 * wkernels.c includes this file several times, each time inside a
 * `#pragma GCC target(...)` region and with WK_SFX(name) defined to give the
 * functions a per-ISA suffix; WK_HAVE_F16C / WK_HAVE_AVX512 pick the fp16
 * loader.  Everything here is static: the per-ISA tables in wkernels.c are
 * the only way in.  Shapes are documented in wkernels.h.
 */

/* ---- loaders: 16 stored elements -> 16 fp32 ------------------------------- */

static inline __attribute__((always_inline)) v16f WK_SFX(ld_f32)(const float *p)
{
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* GCC scalarises __builtin_convertvector for narrow integer sources, so the
 * x86 paths widen with explicit vpmovzx/vpmovsx intrinsics. */
static inline __attribute__((always_inline)) v16f WK_SFX(ld_bf16)(const uint16_t *p)
{
#if defined(WK_HAVE_AVX512)
    __m256i h;
    memcpy(&h, p, sizeof h);
    return (v16f)_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16); /* bf16 = top half of fp32 */
#elif defined(WK_HAVE_F16C)
    __m128i lo, hi;
    memcpy(&lo, p, sizeof lo);
    memcpy(&hi, p + 8, sizeof hi);
    __m256i a = _mm256_slli_epi32(_mm256_cvtepu16_epi32(lo), 16);
    __m256i b = _mm256_slli_epi32(_mm256_cvtepu16_epi32(hi), 16);
    v16f v;
    memcpy(&v, &a, sizeof a);
    memcpy((char *)&v + sizeof a, &b, sizeof b);
    return v;
#else
    v16u16 h;
    memcpy(&h, p, sizeof h);
    return (v16f)(__builtin_convertvector(h, v16i) << 16);
#endif
}

static inline __attribute__((always_inline)) v16f WK_SFX(ld_f16)(const uint16_t *p)
{
#if defined(WK_HAVE_AVX512)
    __m256i h;
    memcpy(&h, p, sizeof h);
    return (v16f)_mm512_cvtph_ps(h);
#elif defined(WK_HAVE_F16C)
    __m128i lo, hi;
    memcpy(&lo, p, sizeof lo);
    memcpy(&hi, p + 8, sizeof hi);
    __m256 a = _mm256_cvtph_ps(lo), b = _mm256_cvtph_ps(hi);
    v16f v;
    memcpy(&v, &a, sizeof a);
    memcpy((char *)&v + sizeof a, &b, sizeof b);
    return v;
#else
    float f[VLEN];
    for (int i = 0; i < VLEN; i++)
        f[i] = wk_f16_to_f32(p[i]);
    v16f v;
    memcpy(&v, f, sizeof v);
    return v;
#endif
}

static inline __attribute__((always_inline)) v16f WK_SFX(ld_i8)(const int8_t *p)
{
#if defined(WK_HAVE_AVX512)
    __m128i b;
    memcpy(&b, p, sizeof b);
    return (v16f)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
#elif defined(WK_HAVE_F16C)
    __m128i b;
    memcpy(&b, p, sizeof b);
    __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
    __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
    v16f v;
    memcpy(&v, &lo, sizeof lo);
    memcpy((char *)&v + sizeof lo, &hi, sizeof hi);
    return v;
#else
    v16i8 b;
    memcpy(&b, p, sizeof b);
    return __builtin_convertvector(__builtin_convertvector(b, v16i), v16f);
#endif
}

/* ---- Conv1D slab: W [K, N], rows k in [kb, ke) ------------------------------
 * Weights are read strictly in address order, four rows per step so each
 * partial sum in y (L1) is loaded and stored once per four weight vectors;
 * each weight vector is converted once and used for all M input rows. */
#define WK_DEFINE_CONV1D(DT, T, LOAD, SCALAR)                                               \
static void WK_SFX(conv1d_##DT)(float *y, const float *x, long ldx, int M, const T *w,   \
                                 long N, long kb, long ke)                                  \
{                                                                                           \
    long vec_end = N - N % VLEN;                                                            \
    memset(y, 0, (size_t)M * N * sizeof(float));                                            \
    long k = kb;                                                                            \
    for (; k + 4 <= ke; k += 4) {                                                           \
        const T *w0 = w + k * N, *w1 = w0 + N, *w2 = w1 + N, *w3 = w2 + N;                  \
        float xs[WK_SMALL_M][4];                                                            \
        for (int m = 0; m < M; m++)                                                         \
            for (int i = 0; i < 4; i++)                                                     \
                xs[m][i] = x[m * ldx + k + i];                                              \
        for (long j = 0; j < vec_end; j += VLEN) {                                          \
            v16f a = LOAD(w0 + j), b = LOAD(w1 + j), c = LOAD(w2 + j), d = LOAD(w3 + j);    \
            for (int m = 0; m < M; m++) {                                                   \
                float *ym = y + m * N + j;                                                  \
                v16f acc;                                                                   \
                memcpy(&acc, ym, sizeof acc);                                               \
                acc += xs[m][0] * a + xs[m][1] * b + xs[m][2] * c + xs[m][3] * d;           \
                memcpy(ym, &acc, sizeof acc);                                               \
            }                                                                               \
        }                                                                                   \
        for (long j = vec_end; j < N; j++) {                                                \
            float a = SCALAR(w0[j]), b = SCALAR(w1[j]), c = SCALAR(w2[j]), d = SCALAR(w3[j]); \
            for (int m = 0; m < M; m++)                                                     \
                y[m * N + j] += xs[m][0] * a + xs[m][1] * b + xs[m][2] * c + xs[m][3] * d;  \
        }                                                                                   \
    }                                                                                       \
    for (; k < ke; k++) {                                                                   \
        const T *wk = w + k * N;                                                            \
        for (int m = 0; m < M; m++) {                                                       \
            float xk = x[m * ldx + k];                                                      \
            float *ym = y + m * N;                                                          \
            for (long j = 0; j < vec_end; j += VLEN) {                                      \
                v16f acc;                                                                   \
                memcpy(&acc, ym + j, sizeof acc);                                           \
                acc += xk * LOAD(wk + j);                                                   \
                memcpy(ym + j, &acc, sizeof acc);                                           \
            }                                                                               \
            for (long j = vec_end; j < N; j++)                                              \
                ym[j] += xk * SCALAR(wk[j]);                                                \
        }                                                                                   \
    }                                                                                       \
}

/* out[m] = vsum(acc[m]) for m < MC (<= WK_SMALL_M), bit for bit: on AVX-512, 4-8 rows are
 * summed together by in-register transposes that pair the same lanes in the same order as
 * vsum (i + 8, then + 4, then (0 + 2) + (1 + 3); adds commute exactly), about a third of the
 * instructions of MC separate vsums, which on 576-wide rows cost a fifth of the dot product
 * itself. */
static inline __attribute__((always_inline)) void WK_SFX(vsum_rows)(const v16f *acc, const int MC,
                                                                     float *out)
{
#if defined(WK_HAVE_AVX512)
    if (MC >= 4) {
        __m512 z[4];
        for (int p = 0; p < 4; p++) { /* [lo8 + hi8 of row 2p | of row 2p + 1] */
            __m512 a = 2 * p < MC ? (__m512)acc[2 * p] : _mm512_setzero_ps();
            __m512 b = 2 * p + 1 < MC ? (__m512)acc[2 * p + 1] : _mm512_setzero_ps();
            z[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
        }
        float t[2 * VLEN] __attribute__((aligned(64)));
        for (int h = 0; h < 2; h++) { /* 128-bit lane q: lo4 + hi4 of row 4h + q, then within */
            __m512 u = _mm512_add_ps(_mm512_shuffle_f32x4(z[2 * h], z[2 * h + 1], 0x88),
                                     _mm512_shuffle_f32x4(z[2 * h], z[2 * h + 1], 0xDD));
            __m512 v = _mm512_add_ps(u, _mm512_permute_ps(u, 0x4E)); /* [0] + [2], [1] + [3] */
            _mm512_store_ps(t + h * VLEN, _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1)));
        }
        for (int m = 0; m < MC; m++)
            out[m] = t[(m / 4) * VLEN + (m % 4) * 4];
        return;
    }
#endif
    for (int m = 0; m < MC; m++)
        out[m] = vsum(acc[m]);
}

/* Weight rows ahead that the linear kernels prefetch.  The hardware prefetcher alone
 * falls behind on these short rows (SmolLM2-135M bf16, 2 threads, one decode step:
 * 8 rows 34 -> 29 ms, 4 rows 26 -> 19 ms).  The hint is prefetcht2 (into L2), so the
 * prefetched rows do not push the input rows out of a 32 KB L1 (AMD Zen 4, the same
 * step, three interleaved pairs of bench_batching.py --engine-only: 1 row 11.7-12.4 ->
 * 9.6-11.1 ms, 8 rows 27-30 -> 21-24 ms). */
#ifndef WK_PREFETCH_ROWS
#define WK_PREFETCH_ROWS 2
#endif

static inline __attribute__((always_inline)) void WK_SFX(prefetch_bytes)(const void *p, long n)
{
    for (long b = 0; b < n; b += 64)
        __builtin_prefetch((const char *)p + b, 0, 1); /* prefetcht2 */
}

/* ---- Linear slab: W [N, K], rows n in [nb, ne) -------------------------------
 * One weight row at a time (one sequential stream), dotted with every input
 * row.  MC is a compile-time row count so the accumulators stay in
 * registers; M = 1 uses four accumulators to hide the FMA latency.  With
 * AVX-512's 32 registers, 5+ input rows take the weight rows in pairs, so each
 * input vector is loaded once for two weight rows (2 x 8 sums; SmolLM2-135M
 * shapes in bf16, 8 rows, 2 threads, a scratch harness timing the kernel alone:
 * 19.5-20.2 -> 16.7-17.1 ms; one decode step of the model 24.5-28.5 -> 22.8-25.3
 * ms).  Fewer rows stay on one stream (paired, a one-row step was 6-9% slower
 * and a 4-row step 0-6%; 6 rows 0-7% faster).  A pair computes each dot product
 * exactly as the single-row loop does. */
#if defined(WK_HAVE_AVX512)
#define WK_ROW_PAIRS 1
#else
#define WK_ROW_PAIRS 0
#endif
#define WK_DEFINE_LINEAR(DT, T, LOAD, SCALAR)                                               \
/* y[m, n] = (vsum(acc[m]) + the scalar tail of row wr from k) * scale, m < MC */           \
static inline __attribute__((always_inline)) void WK_SFX(linear_store_##DT)(                \
    float *y, long ldy, const float *x, long ldx, const int MC, const T *wr,                \
    const v16f *acc, const float *scales, long k, long K, long n)                           \
{                                                                                           \
    float s = scales ? scales[n] : 1.0f, sums[WK_SMALL_M];                                  \
    WK_SFX(vsum_rows)(acc, MC, sums);                                                       \
    for (int m = 0; m < MC; m++) {                                                          \
        float t = sums[m];                                                                  \
        for (long kk = k; kk < K; kk++)                                                     \
            t += SCALAR(wr[kk]) * x[m * ldx + kk];                                          \
        y[m * ldy + n] = t * s;                                                             \
    }                                                                                       \
}                                                                                           \
static inline __attribute__((always_inline)) void WK_SFX(linear_rows_##DT)(                 \
    float *y, long ldy, const float *x, long ldx, const int MC, const T *w,                 \
    const float *scales, long K, long nb, long ne)                                          \
{                                                                                           \
    long vec_end = K - K % VLEN;                                                            \
    long n = nb;                                                                            \
    for (; WK_ROW_PAIRS && MC >= 5 && n + 1 < ne; n += 2) {                                 \
        const T *wr = w + n * K, *wr1 = wr + K;                                             \
        long ahead = ne - n - WK_PREFETCH_ROWS; /* rows that exist past the pair's lead */  \
        if (ahead > 0)                                                                      \
            WK_SFX(prefetch_bytes)(wr + WK_PREFETCH_ROWS * K,                               \
                                   (ahead < 2 ? ahead : 2) * K * (long)sizeof(T));          \
        v16f a[WK_SMALL_M], b[WK_SMALL_M];                                                  \
        for (int m = 0; m < MC; m++)                                                        \
            a[m] = b[m] = (v16f){0};                                                        \
        long k = 0;                                                                         \
        for (; k < vec_end; k += VLEN) {                                                    \
            v16f w0 = LOAD(wr + k), w1 = LOAD(wr1 + k);                                     \
            for (int m = 0; m < MC; m++) {                                                  \
                v16f xv = WK_SFX(ld_f32)(x + m * ldx + k);                                  \
                a[m] += w0 * xv;                                                            \
                b[m] += w1 * xv;                                                            \
            }                                                                               \
        }                                                                                   \
        WK_SFX(linear_store_##DT)(y, ldy, x, ldx, MC, wr, a, scales, k, K, n);              \
        WK_SFX(linear_store_##DT)(y, ldy, x, ldx, MC, wr1, b, scales, k, K, n + 1);         \
    }                                                                                       \
    for (; n < ne; n++) {                                                                   \
        const T *wr = w + n * K;                                                            \
        if (n + WK_PREFETCH_ROWS < ne)                                                      \
            WK_SFX(prefetch_bytes)(wr + WK_PREFETCH_ROWS * K, K * (long)sizeof(T));         \
        v16f acc[WK_SMALL_M];                                                               \
        for (int m = 0; m < MC; m++)                                                        \
            acc[m] = (v16f){0};                                                             \
        long k = 0;                                                                         \
        for (; k < vec_end; k += VLEN) {                                                    \
            v16f wv = LOAD(wr + k);                                                         \
            for (int m = 0; m < MC; m++)                                                    \
                acc[m] += wv * WK_SFX(ld_f32)(x + m * ldx + k);                             \
        }                                                                                   \
        WK_SFX(linear_store_##DT)(y, ldy, x, ldx, MC, wr, acc, scales, k, K, n);            \
    }                                                                                       \
}                                                                                           \
static void WK_SFX(linear_1_##DT)(float *y, const float *x, const T *w,                    \
                                  const float *scales, long K, long nb, long ne)            \
{                                                                                           \
    long vec_end = K - K % VLEN, vec4_end = K - K % (4 * VLEN);                             \
    for (long n = nb; n < ne; n++) {                                                        \
        const T *wr = w + n * K;                                                            \
        if (n + WK_PREFETCH_ROWS < ne)                                                      \
            WK_SFX(prefetch_bytes)(wr + WK_PREFETCH_ROWS * K, K * (long)sizeof(T));         \
        v16f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                        \
        long k = 0;                                                                         \
        for (; k < vec4_end; k += 4 * VLEN) {                                               \
            a0 += LOAD(wr + k) * WK_SFX(ld_f32)(x + k);                                     \
            a1 += LOAD(wr + k + VLEN) * WK_SFX(ld_f32)(x + k + VLEN);                       \
            a2 += LOAD(wr + k + 2 * VLEN) * WK_SFX(ld_f32)(x + k + 2 * VLEN);               \
            a3 += LOAD(wr + k + 3 * VLEN) * WK_SFX(ld_f32)(x + k + 3 * VLEN);               \
        }                                                                                   \
        for (; k < vec_end; k += VLEN)                                                      \
            a0 += LOAD(wr + k) * WK_SFX(ld_f32)(x + k);                                     \
        float t = vsum((a0 + a1) + (a2 + a3));                                      \
        for (; k < K; k++)                                                                  \
            t += SCALAR(wr[k]) * x[k];                                                      \
        y[n] = scales ? t * scales[n] : t;                                                  \
    }                                                                                       \
}                                                                                           \
static void WK_SFX(linear_##DT)(float *y, long ldy, const float *x, long ldx, int M,       \
                                 const T *w, const float *scales, long K, long nb, long ne, \
                                 int exact)                                                 \
{                                                                                           \
    switch (exact && M == 1 ? 0 : M) {                                                      \
    case 0: WK_SFX(linear_rows_##DT)(y, ldy, x, ldx, 1, w, scales, K, nb, ne); break;       \
    case 1: WK_SFX(linear_1_##DT)(y, x, w, scales, K, nb, ne); break;                       \
    case 2: WK_SFX(linear_rows_##DT)(y, ldy, x, ldx, 2, w, scales, K, nb, ne); break;       \
    case 3: WK_SFX(linear_rows_##DT)(y, ldy, x, ldx, 3, w, scales, K, nb, ne); break;       \
    case 4: WK_SFX(linear_rows_##DT)(y, ldy, x, ldx, 4, w, scales, K, nb, ne); break;       \
    case 5: WK_SFX(linear_rows_##DT)(y, ldy, x, ldx, 5, w, scales, K, nb, ne); break;       \
    case 6: WK_SFX(linear_rows_##DT)(y, ldy, x, ldx, 6, w, scales, K, nb, ne); break;       \
    case 7: WK_SFX(linear_rows_##DT)(y, ldy, x, ldx, 7, w, scales, K, nb, ne); break;       \
    default: WK_SFX(linear_rows_##DT)(y, ldy, x, ldx, 8, w, scales, K, nb, ne); break;      \
    }                                                                                       \
}

/* ---- tile dequantisation: stored rows [r0, r0+rows) x cols [c0, c0+cols) ---- */
#define WK_DEFINE_DEQUANT(DT, T, LOAD, SCALAR)                                              \
static void WK_SFX(dequant_##DT)(float *out, const T *w, long ld, const float *col_scales, \
                                  const float *row_scales, long r0, long rows, long c0,     \
                                  long cols)                                                \
{                                                                                           \
    long vec_end = cols - cols % VLEN;                                                      \
    for (long r = 0; r < rows; r++) {                                                       \
        const T *src = w + (r0 + r) * ld + c0;                                              \
        float *dst = out + r * cols;                                                        \
        float rs = row_scales ? row_scales[r0 + r] : 1.0f;                                  \
        for (long j = 0; j < vec_end; j += VLEN) {                                          \
            v16f v = LOAD(src + j) * rs;                                                    \
            if (col_scales)                                                                 \
                v *= WK_SFX(ld_f32)(col_scales + c0 + j);                                   \
            memcpy(dst + j, &v, sizeof v);                                                  \
        }                                                                                   \
        for (long j = vec_end; j < cols; j++)                                               \
            dst[j] = SCALAR(src[j]) * rs * (col_scales ? col_scales[c0 + j] : 1.0f);        \
    }                                                                                       \
}

#define WK_DEFINE_ALL(DT, T, LOAD, SCALAR)  \
    WK_DEFINE_CONV1D(DT, T, LOAD, SCALAR)   \
    WK_DEFINE_LINEAR(DT, T, LOAD, SCALAR)   \
    WK_DEFINE_DEQUANT(DT, T, LOAD, SCALAR)

WK_DEFINE_ALL(f32, float, WK_SFX(ld_f32), wk_id_f32)
WK_DEFINE_ALL(bf16, uint16_t, WK_SFX(ld_bf16), wk_bf16_to_f32)
WK_DEFINE_ALL(f16, uint16_t, WK_SFX(ld_f16), wk_f16_to_f32)
WK_DEFINE_ALL(i8, int8_t, WK_SFX(ld_i8), wk_i8_to_f32)

/* ---- bandwidth probe: sum of n floats, four independent streams of adds ---- */
static float WK_SFX(stream_sum)(const float *p, long n)
{
    v16f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    long i = 0;
    for (; i + 4 * VLEN <= n; i += 4 * VLEN) {
        a0 += WK_SFX(ld_f32)(p + i);
        a1 += WK_SFX(ld_f32)(p + i + VLEN);
        a2 += WK_SFX(ld_f32)(p + i + 2 * VLEN);
        a3 += WK_SFX(ld_f32)(p + i + 3 * VLEN);
    }
    float s = vsum((a0 + a1) + (a2 + a3));
    for (; i < n; i++)
        s += p[i];
    return s;
}

/* ---- per-ISA entry points (dtype switch) ------------------------------------ */

static void WK_SFX(conv1d)(float *y, const float *x, long ldx, int M, const wk_weight *w,
                           long kb, long ke)
{
    switch (w->dtype) {
    case WK_F32: WK_SFX(conv1d_f32)(y, x, ldx, M, w->data, w->N, kb, ke); break;
    case WK_BF16: WK_SFX(conv1d_bf16)(y, x, ldx, M, w->data, w->N, kb, ke); break;
    case WK_F16: WK_SFX(conv1d_f16)(y, x, ldx, M, w->data, w->N, kb, ke); break;
    default: WK_SFX(conv1d_i8)(y, x, ldx, M, w->data, w->N, kb, ke); break;
    }
}

static void WK_SFX(linear)(float *y, long ldy, const float *x, long ldx, int M,
                           const wk_weight *w, long nb, long ne)
{
    int ex = (w->flags & WK_ROW_EXACT) != 0;
    switch (w->dtype) {
    case WK_F32: WK_SFX(linear_f32)(y, ldy, x, ldx, M, w->data, NULL, w->K, nb, ne, ex); break;
    case WK_BF16: WK_SFX(linear_bf16)(y, ldy, x, ldx, M, w->data, NULL, w->K, nb, ne, ex); break;
    case WK_F16: WK_SFX(linear_f16)(y, ldy, x, ldx, M, w->data, NULL, w->K, nb, ne, ex); break;
    default: WK_SFX(linear_i8)(y, ldy, x, ldx, M, w->data, w->scales, w->K, nb, ne, ex); break;
    }
}

static void WK_SFX(dequant)(float *out, const wk_weight *w, int linear, long r0, long rows,
                            long c0, long cols)
{
    long ld = linear ? w->K : w->N;
    const float *cs = (w->dtype == WK_I8 && !linear) ? w->scales : NULL;
    const float *rs = (w->dtype == WK_I8 && linear) ? w->scales : NULL;
    switch (w->dtype) {
    case WK_F32: WK_SFX(dequant_f32)(out, w->data, ld, cs, rs, r0, rows, c0, cols); break;
    case WK_BF16: WK_SFX(dequant_bf16)(out, w->data, ld, cs, rs, r0, rows, c0, cols); break;
    case WK_F16: WK_SFX(dequant_f16)(out, w->data, ld, cs, rs, r0, rows, c0, cols); break;
    default: WK_SFX(dequant_i8)(out, w->data, ld, cs, rs, r0, rows, c0, cols); break;
    }
}

#undef WK_DEFINE_ALL
#undef WK_DEFINE_CONV1D
#undef WK_DEFINE_LINEAR
#undef WK_ROW_PAIRS
#undef WK_DEFINE_DEQUANT
