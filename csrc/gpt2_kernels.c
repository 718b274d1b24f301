/* GPT-2 forward-pass kernels and the worker pool (see gpt2_kernels.h).
 *
 * The math follows the GPT-2 paper / llm.c naming: embedding_forward,
 * layernorm_forward, matvec (the decode-time matmul), attention, gelu,
 * residual.  GEMMs for prefill are OpenBLAS calls made from pyx/_gpt2.pyx.
 *
 * Vector code uses GCC vector extensions on 16-float vectors; the compiler
 * lowers them to one zmm (AVX-512), two ymm (AVX2) or four xmm (SSE2)
 * registers depending on the clone picked at load time.
 */
#define _GNU_SOURCE
#include "gpt2_kernels.h"
#include "vec16.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- runtime CPU dispatch --------------------------------------------- */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define GPT2_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 6
#define GPT2_HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GPT2_HOT
#endif

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* ---- 16-float vectors (types and vsum: vec16.h) -------------------------- */

/* memcpy keeps loads and stores legal at any alignment (inputs from the
 * network and safetensors offsets carry no alignment promise). */
ALWAYS_INLINE v16f vload(const float *p) { v16f v; memcpy(&v, p, sizeof v); return v; }
ALWAYS_INLINE void vstore(float *p, v16f v) { memcpy(p, &v, sizeof v); }
ALWAYS_INLINE v16f vbroadcast(float s) { return (v16f){0} + s; }

ALWAYS_INLINE v16f vselect(v16i mask, v16f yes, v16f no)
{
    return (v16f)(((v16i)yes & mask) | ((v16i)no & ~mask));
}

ALWAYS_INLINE v16f vmax(v16f a, v16f b) { return vselect(a > b, a, b); }
ALWAYS_INLINE v16f vmin(v16f a, v16f b) { return vselect(a < b, a, b); }

/* exp(x) = 2^n * e^r with n = round(x / ln2), |r| <= ln2/2, and e^r from its
 * degree-7 Taylor polynomial (truncation error < 1e-8, i.e. ~1 ulp).  Inputs
 * are clamped so 2^n stays a normal float: results lie in [1.2e-38, 2.2e38]. */
ALWAYS_INLINE v16f vexp(v16f x)
{
    const float ln2_hi = 0.693145752f, ln2_lo = 1.42860677e-6f;
    const float round_magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    x = vmin(vmax(x, vbroadcast(-87.3f)), vbroadcast(88.3f));
    v16f shifted = x * 1.44269504f + round_magic;
    v16f n = shifted - round_magic;
    v16i n_int = (v16i)shifted - 0x4B400000; /* bits of round_magic */
    v16f r = x - n * ln2_hi - n * ln2_lo;
    v16f p = vbroadcast(1.0f / 5040);
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    v16f two_n = (v16f)((n_int + 127) << 23);
    return p * two_n;
}

/* ---- worker pool -------------------------------------------------------- *
 * Work is cut into chunks that threads claim one at a time, so a worker that
 * is late (asleep, or preempted by another process on a shared core) never
 * holds up a step: the caller simply runs the remaining chunks itself.
 *
 * OpenBLAS's own threads spin (sched_yield loop) for ~2^28 cycles after each
 * threaded call, which would starve another pipeline stage sharing the cores.
 * So OpenBLAS runs single-threaded inside these workers, and a worker that
 * has no work spins for at most GPT2_POOL_SPIN_NS (long enough to bridge the
 * gaps between the ~50 parallel steps of one token) and then sleeps. */

struct gpt2_pool {
    int n_threads;
    pthread_t *workers;
    /* the current run; written by the caller before `work` publishes it */
    _Atomic(gpt2_task_fn) fn;
    _Atomic(void *) ctx;
    atomic_long n_chunks;
    /* (generation << 32) | next unclaimed chunk: claiming a chunk and
     * checking that it belongs to the current run is one CAS */
    atomic_ullong work;
    atomic_long done_chunks;
    atomic_int sleepers; /* workers blocked (or about to block) on `wake` */
    atomic_int quiesce;  /* the forward pass ended: sleep now instead of spinning */
    atomic_int stop;
    pthread_mutex_t lock;
    pthread_cond_t wake;
};

typedef struct {
    gpt2_pool *pool;
    int idx;
} worker_arg;

#define WORK_GEN(w) ((unsigned)((w) >> 32))
#define WORK_NEXT(w) ((long)((w) & 0xFFFFFFFFu))
#define WORK_CLOSED 0xFFFFFFFFu /* next-chunk value once a run is finished */

ALWAYS_INLINE void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static long monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Claims and runs chunks of generation `gen` until none is left.
 *
 * `work` only ever moves (G,0) -> (G,1) -> ... -> (G,n) -> (G,CLOSED) ->
 * (G+1,0), and fn/ctx/n_chunks of run G+1 are stored after (G,CLOSED).  All
 * of these accesses are seq_cst, so if this thread read run G+1's
 * descriptor, its CAS sees at least (G,CLOSED) and fails: a successful
 * claim of (G,c) proves that fn/ctx/n_chunks belong to run G. */
static void pool_run_chunks(gpt2_pool *pool, unsigned gen, int thread_idx)
{
    gpt2_task_fn fn = atomic_load(&pool->fn);
    void *ctx = atomic_load(&pool->ctx);
    long n_chunks = atomic_load(&pool->n_chunks);
    unsigned long long w = atomic_load(&pool->work);
    for (;;) {
        if (WORK_GEN(w) != gen || WORK_NEXT(w) >= n_chunks)
            return;
        if (!atomic_compare_exchange_weak(&pool->work, &w, w + 1))
            continue;
        fn(ctx, WORK_NEXT(w), thread_idx);
        atomic_fetch_add_explicit(&pool->done_chunks, 1, memory_order_release);
        w = atomic_load(&pool->work);
    }
}

/* Waits until a run newer than `seen` is published; returns its generation. */
static unsigned pool_wait_for_work(gpt2_pool *pool, unsigned seen)
{
    long start = monotonic_ns();
    for (unsigned spins = 1;; spins++) {
        unsigned gen = WORK_GEN(atomic_load_explicit(&pool->work, memory_order_acquire));
        if (gen != seen || atomic_load_explicit(&pool->stop, memory_order_relaxed))
            return gen;
        cpu_relax();
        if ((spins & 255) == 0 && (monotonic_ns() - start > GPT2_POOL_SPIN_NS ||
                                   atomic_load_explicit(&pool->quiesce, memory_order_relaxed)))
            break;
    }
    /* sleepers is raised before `work` is re-checked, and the caller
     * publishes `work` before reading sleepers (both seq_cst): one side
     * always sees the other, so no wake-up is lost. */
    atomic_fetch_add(&pool->sleepers, 1);
    pthread_mutex_lock(&pool->lock);
    while (WORK_GEN(atomic_load(&pool->work)) == seen && !atomic_load(&pool->stop))
        pthread_cond_wait(&pool->wake, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
    atomic_fetch_sub(&pool->sleepers, 1);
    return WORK_GEN(atomic_load(&pool->work));
}

static void *pool_worker_main(void *arg_)
{
    worker_arg *arg = arg_;
    gpt2_pool *pool = arg->pool;
    int idx = arg->idx;
    free(arg);
    unsigned seen = 0;
    for (;;) {
        seen = pool_wait_for_work(pool, seen);
        if (atomic_load(&pool->stop))
            break;
        pool_run_chunks(pool, seen, idx);
    }
    return NULL;
}

gpt2_pool *gpt2_pool_create(int n_threads)
{
    if (n_threads < 1)
        return NULL;
    gpt2_pool *pool = calloc(1, sizeof *pool);
    if (!pool)
        return NULL;
    pool->n_threads = 1;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pool->workers = calloc((size_t)n_threads, sizeof *pool->workers);
    if (!pool->workers) {
        gpt2_pool_destroy(pool);
        return NULL;
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *arg = malloc(sizeof *arg);
        if (!arg) {
            gpt2_pool_destroy(pool);
            return NULL;
        }
        arg->pool = pool;
        arg->idx = i;
        if (pthread_create(&pool->workers[i], NULL, pool_worker_main, arg) != 0) {
            free(arg);
            gpt2_pool_destroy(pool);
            return NULL;
        }
        pool->n_threads = i + 1; /* threads [1, i] are running */
    }
    return pool;
}

void gpt2_pool_destroy(gpt2_pool *pool)
{
    if (!pool)
        return;
    atomic_store(&pool->stop, 1);
    pthread_mutex_lock(&pool->lock);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 1; i < pool->n_threads; i++)
        pthread_join(pool->workers[i], NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->lock);
    free(pool->workers);
    free(pool);
}

int gpt2_pool_threads(const gpt2_pool *pool) { return pool->n_threads; }

/* The caller has no more work for a while (end of a forward pass): idle
 * workers stop spinning at once, leaving the cores to the next stage. */
void gpt2_pool_quiesce(gpt2_pool *pool)
{
    atomic_store_explicit(&pool->quiesce, 1, memory_order_relaxed);
}

void gpt2_pool_run(gpt2_pool *pool, gpt2_task_fn fn, void *ctx, long n_chunks)
{
    if (n_chunks <= 0)
        return;
    if (pool->n_threads == 1 || n_chunks == 1) {
        for (long c = 0; c < n_chunks; c++)
            fn(ctx, c, 0);
        return;
    }
    if (n_chunks >= (long)WORK_CLOSED)
        abort(); /* callers size chunks; never reached */
    atomic_store_explicit(&pool->quiesce, 0, memory_order_relaxed);
    atomic_store(&pool->fn, fn);
    atomic_store(&pool->ctx, ctx);
    atomic_store(&pool->n_chunks, n_chunks);
    atomic_store(&pool->done_chunks, 0);
    unsigned gen = WORK_GEN(atomic_load(&pool->work)) + 1;
    atomic_store(&pool->work, (unsigned long long)gen << 32); /* publishes the run */
    if (atomic_load(&pool->sleepers) > 0) {
        pthread_mutex_lock(&pool->lock);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->lock);
    }
    pool_run_chunks(pool, gen, 0);
    /* only chunks already claimed by workers remain: wait for them, and give
     * the CPU away if a worker was preempted mid-chunk on this core */
    long start = monotonic_ns();
    for (unsigned spins = 1;
         atomic_load_explicit(&pool->done_chunks, memory_order_acquire) < n_chunks; spins++) {
        cpu_relax();
        if ((spins & 255) == 0 && monotonic_ns() - start > 20000)
            sched_yield();
    }
    atomic_store(&pool->work, ((unsigned long long)gen << 32) | WORK_CLOSED);
}

void gpt2_split_range(long n, int parts, int idx, long align, long *begin, long *end)
{
    long chunks = (n + align - 1) / align;
    long b = chunks * idx / parts * align;
    long e = chunks * (idx + 1) / parts * align;
    *begin = b < n ? b : n;
    *end = e < n ? e : n;
}

/* ---- embedding ---------------------------------------------------------- */

void embedding_forward(float *out, const uint32_t *ids, const float *wte, const float *wpe,
                       int B, int T, int past_len, int C)
{
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            float *out_bt = out + ((long)b * T + t) * C;
            const float *token = wte + (long)ids[(long)b * T + t] * C;
            const float *position = wpe + (long)(past_len + t) * C;
            for (int i = 0; i < C; i++)
                out_bt[i] = token[i] + position[i];
        }
    }
}

long ids_first_invalid(const uint32_t *ids, long n, uint32_t vocab_size)
{
    for (long i = 0; i < n; i++)
        if (ids[i] >= vocab_size)
            return i;
    return -1;
}

/* ---- layernorm ---------------------------------------------------------- */

GPT2_HOT
void layernorm_forward(float *out, const float *inp, const float *weight, const float *bias,
                       long rows, int C, float eps)
{
    for (long r = 0; r < rows; r++) {
        const float *x = inp + r * C;
        float *y = out + r * C;
        int vec_end = C - C % VLEN;

        /* two passes (mean, then mean of squared deviations): no cancellation */
        v16f acc = {0};
        float tail = 0.0f;
        for (int i = 0; i < vec_end; i += VLEN)
            acc += vload(x + i);
        for (int i = vec_end; i < C; i++)
            tail += x[i];
        float mean = (vsum(acc) + tail) / C;

        acc = (v16f){0};
        tail = 0.0f;
        for (int i = 0; i < vec_end; i += VLEN) {
            v16f d = vload(x + i) - mean;
            acc += d * d;
        }
        for (int i = vec_end; i < C; i++)
            tail += (x[i] - mean) * (x[i] - mean);
        float variance = (vsum(acc) + tail) / C; /* biased, as in the paper */
        float rstd = 1.0f / sqrtf(variance + eps);

        for (int i = 0; i < vec_end; i += VLEN)
            vstore(y + i, (vload(x + i) - mean) * rstd * vload(weight + i) + vload(bias + i));
        for (int i = vec_end; i < C; i++)
            y[i] = (x[i] - mean) * rstd * weight[i] + bias[i];
    }
}

/* ---- GELU --------------------------------------------------------------- *
 * gelu(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
 * Since 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)), this is x / (1 + exp(-2u)):
 * one exp, no cancellation near u = 0, exact limits for large |u|. */

#define GELU_SQRT_2_OVER_PI 0.7978845608028654f

GPT2_HOT
void gelu_forward(float *x, long n)
{
    long vec_end = n - n % VLEN;
    for (long i = 0; i < vec_end; i += VLEN) {
        v16f v = vload(x + i);
        v16f u = GELU_SQRT_2_OVER_PI * (v + 0.044715f * v * v * v);
        vstore(x + i, v / (1.0f + vexp(-2.0f * u)));
    }
    for (long i = vec_end; i < n; i++) {
        float v = x[i];
        float u = GELU_SQRT_2_OVER_PI * (v + 0.044715f * v * v * v);
        x[i] = 0.5f * v * (1.0f + tanhf(u));
    }
}

/* ---- residual and bias -------------------------------------------------- */

GPT2_HOT
void residual_forward(float *residual, const float *delta, long n)
{
    long vec_end = n - n % VLEN;
    for (long i = 0; i < vec_end; i += VLEN)
        vstore(residual + i, vload(residual + i) + vload(delta + i));
    for (long i = vec_end; i < n; i++)
        residual[i] += delta[i];
}

void bias_broadcast(float *out, const float *bias, long rows, long ld, long cols)
{
    for (long r = 0; r < rows; r++)
        memcpy(out + r * ld, bias, (size_t)cols * sizeof(float));
}

/* ---- GEMV (decode) ------------------------------------------------------ *
 * Decode is memory bound: every weight byte is read once per token.  Both
 * kernels walk the weights strictly in address order, one row at a time: a
 * single sequential stream per thread is what the hardware prefetchers
 * follow best (interleaving 4 rows measured 20-40% slower), and x, y stay
 * in L1. */

GPT2_HOT
void matvec_conv1d(float *y, const float *x, const float *weight,
                   long k_begin, long k_end, long N)
{
    long vec_end = N - N % VLEN;
    if (k_begin >= k_end) {
        memset(y, 0, (size_t)N * sizeof(float));
        return;
    }
    /* the first row initialises y: no separate zeroing pass */
    const float *w = weight + k_begin * N;
    float xk = x[k_begin];
    for (long j = 0; j < vec_end; j += VLEN)
        vstore(y + j, xk * vload(w + j));
    for (long j = vec_end; j < N; j++)
        y[j] = xk * w[j];
    for (long k = k_begin + 1; k < k_end; k++) {
        w = weight + k * N;
        xk = x[k];
        for (long j = 0; j < vec_end; j += VLEN)
            vstore(y + j, vload(y + j) + xk * vload(w + j));
        for (long j = vec_end; j < N; j++)
            y[j] += xk * w[j];
    }
}

/* The same for a few input rows at once (short prompts, small batches): each
 * weight vector is loaded once and used for every row, so M <= 8 rows cost
 * about one GEMV of memory traffic instead of a packed GEMM.  Four weight
 * rows are read per step so the partial sums in y (L1/L2) are loaded and
 * stored once per four weight vectors. */
GPT2_HOT
void matmul_conv1d_small(float *y, const float *x, long ldx, int M, const float *weight,
                         long k_begin, long k_end, long N)
{
    long vec_end = N - N % VLEN;
    memset(y, 0, (size_t)M * N * sizeof(float));
    long k = k_begin;
    for (; k + 4 <= k_end; k += 4) {
        const float *w0 = weight + k * N;
        const float *w1 = w0 + N, *w2 = w1 + N, *w3 = w2 + N;
        float xs[GPT2_SMALL_M][4];
        for (int m = 0; m < M; m++)
            for (int i = 0; i < 4; i++)
                xs[m][i] = x[m * ldx + k + i];
        for (long j = 0; j < vec_end; j += VLEN) {
            v16f a = vload(w0 + j), b = vload(w1 + j), c = vload(w2 + j), d = vload(w3 + j);
            for (int m = 0; m < M; m++) {
                float *ym = y + m * N + j;
                vstore(ym, vload(ym) + xs[m][0] * a + xs[m][1] * b + xs[m][2] * c + xs[m][3] * d);
            }
        }
        for (long j = vec_end; j < N; j++)
            for (int m = 0; m < M; m++)
                y[m * N + j] += xs[m][0] * w0[j] + xs[m][1] * w1[j] + xs[m][2] * w2[j]
                                + xs[m][3] * w3[j];
    }
    for (; k < k_end; k++) {
        const float *w = weight + k * N;
        for (int m = 0; m < M; m++) {
            const float xk = x[m * ldx + k];
            float *ym = y + m * N;
            for (long j = 0; j < vec_end; j += VLEN)
                vstore(ym + j, vload(ym + j) + xk * vload(w + j));
            for (long j = vec_end; j < N; j++)
                ym[j] += xk * w[j];
        }
    }
}

/* Continuous batching's matmul (any M rows) over the columns [n_begin, n_end); see the
 * header.  Per element it computes exactly what matmul_conv1d_small per k-chunk followed by
 * the chunk-ordered reduction computes: y = bias, then for each chunk of chunk_rows k's in
 * order y += (0 + x[k] w[k] + ... in k order, one multiply-add each).  So a row's result
 * does not depend on M, and no [n_chunks, M, N] partial sums are written or re-read.
 *
 * Register tiles of 8 rows x 48 columns walk down one chunk of a 48-column strip
 * (stride N).  Eight rows make that walk compute-heavy enough that the hardware
 * prefetcher alone leaves the core waiting on DRAM between strips, so each step also
 * prefetches the same weight row four strips ahead (measured on a 400 MB sweep, one core:
 * 10.3 -> 12.5 GB/s at N = 3072, against 14 GB/s for one row).  The hint is prefetcht2
 * (into L2, not L1): the walk keeps L1 busy with its own strip, and an L1 prefetch that
 * finds every fill buffer taken stalls the loop (perf showed the samples piling up right
 * after each prefetcht0).  Two threads, 8 rows, 4 and 2 strips ahead with t2 against t0
 * (a scratch C harness timing this function alone over 40 matrices, not kept):
 * 3072 x 768 (the MLP projection) 12-14 -> 15-16 GB/s, the other GPT-2 shapes unchanged
 * or better; served 8 streams vs 1 rose 3-5% (bench/bench_batching.py, 4 A/B pairs). */
#define ROWS_TILE_M 8
#define ROWS_TILE_V 3
#define ROWS_PREFETCH (4 * ROWS_TILE_V * VLEN)

/* y[m0 .. m0+mr, j .. j+NV*16) += the chunk's sums; rows past mr repeat row 0, never stored.
 * Each step also prefetches w + pf_off for the first pf_rows rows of the walk (the strip
 * walked ROWS_PREFETCH columns later; pf_rows = 0: none). */
ALWAYS_INLINE void rows_tile(float *y, long N, const float *x, long ldx, int mr, const float *weight,
                             long k_begin, long k_end, long j, const int NV, long pf_off, long pf_rows)
{
    const float *xr[ROWS_TILE_M];
    for (int m = 0; m < ROWS_TILE_M; m++)
        xr[m] = x + (m < mr ? (long)m * ldx : 0);
    v16f acc[ROWS_TILE_M][ROWS_TILE_V];
    for (int m = 0; m < ROWS_TILE_M; m++)
        for (int v = 0; v < NV; v++)
            acc[m][v] = (v16f){0};
    const float *w = weight + k_begin * N + j;
    long pf_end = k_begin + pf_rows;
    for (long k = k_begin; k < k_end; k++, w += N) {
        if (k < pf_end)
            for (int v = 0; v < NV; v++)
                __builtin_prefetch(w + pf_off + v * VLEN, 0, 1); /* read, prefetcht2 */
        v16f wv[ROWS_TILE_V];
        for (int v = 0; v < NV; v++)
            wv[v] = vload(w + v * VLEN);
        for (int m = 0; m < ROWS_TILE_M; m++) {
            float s = xr[m][k];
            for (int v = 0; v < NV; v++)
                acc[m][v] += s * wv[v];
        }
    }
    for (int m = 0; m < mr; m++)
        for (int v = 0; v < NV; v++) {
            float *ym = y + (long)m * N + j + v * VLEN;
            vstore(ym, vload(ym) + acc[m][v]);
        }
}

GPT2_HOT
void matmul_conv1d_rows(float *y, const float *x, long ldx, int M, const float *weight,
                        const float *bias, long K, long N, long chunk_rows, long n_begin, long n_end)
{
    long vec_end = n_end - (n_end - n_begin) % VLEN;
    long strip = ROWS_TILE_V * VLEN;
    long full_end = n_begin + (vec_end - n_begin) / strip * strip;   /* end of the full strips */
    for (int m = 0; m < M; m++)
        memcpy(y + (long)m * N + n_begin, bias + n_begin, (size_t)(n_end - n_begin) * sizeof(float));
    for (long k_begin = 0; k_begin < K; k_begin += chunk_rows) {
        long k_end = k_begin + chunk_rows < K ? k_begin + chunk_rows : K;
        long rows = k_end - k_begin;
        long next_rows = K - k_end < chunk_rows ? K - k_end : chunk_rows;
        long j = n_begin;
        for (; j < full_end; j += strip) {
            /* prefetch the strip walked four strips later: in this chunk, or (near the end
             * of this task's columns) at the start of the next chunk's rows; never past
             * this task's columns or the matrix */
            long pf_off = ROWS_PREFETCH, pf_rows = rows;
            if (j + ROWS_PREFETCH >= full_end) {
                long jt = n_begin + (j + ROWS_PREFETCH - full_end);
                pf_off = chunk_rows * N + (jt - j);
                pf_rows = jt + strip <= full_end ? (next_rows < rows ? next_rows : rows) : 0;
            }
            for (int m0 = 0; m0 < M; m0 += ROWS_TILE_M)
                rows_tile(y + (long)m0 * N, N, x + (long)m0 * ldx, ldx,
                          M - m0 < ROWS_TILE_M ? M - m0 : ROWS_TILE_M, weight, k_begin, k_end, j,
                          ROWS_TILE_V, m0 == 0 ? pf_off : 0, m0 == 0 ? pf_rows : 0);
        }
        for (; j < vec_end; j += VLEN)          /* the last one or two vectors */
            for (int m0 = 0; m0 < M; m0 += ROWS_TILE_M)
                rows_tile(y + (long)m0 * N, N, x + (long)m0 * ldx, ldx,
                          M - m0 < ROWS_TILE_M ? M - m0 : ROWS_TILE_M, weight, k_begin, k_end, j, 1, 0, 0);
        for (int m = 0; m < M; m++) {           /* scalar tail: as matmul_conv1d_small's */
            const float *xm = x + (long)m * ldx;
            for (long jj = vec_end; jj < n_end; jj++) {
                float s = 0.0f;
                long k = k_begin;
                for (; k + 4 <= k_end; k += 4)
                    s += xm[k] * weight[k * N + jj] + xm[k + 1] * weight[(k + 1) * N + jj]
                         + xm[k + 2] * weight[(k + 2) * N + jj] + xm[k + 3] * weight[(k + 3) * N + jj];
                for (; k < k_end; k++)
                    s += xm[k] * weight[k * N + jj];
                y[(long)m * N + jj] += s;
            }
        }
    }
}

/* One weight row against MC <= 4 input rows (y [MC, ldy], x [MC, ldx]): the row is loaded
 * once for all of them, and every row's dot product is computed exactly as matvec_rows
 * computes it (same accumulators, same order), so batched decode rows keep their solo
 * bits.  MC is a compile-time constant in each instance (registers). */
ALWAYS_INLINE void dot_row_mc(float *y, long ldy, const float *x, long ldx, const int MC,
                              const float *w, long r, long K)
{
    long vec4_end = K - K % (4 * VLEN);
    long vec_end = K - K % VLEN;
    v16f acc[4][4];
    for (int m = 0; m < MC; m++)
        acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = (v16f){0};
    long j = 0;
    for (; j < vec4_end; j += 4 * VLEN) {
        v16f w0 = vload(w + j), w1 = vload(w + j + VLEN);
        v16f w2 = vload(w + j + 2 * VLEN), w3 = vload(w + j + 3 * VLEN);
        for (int m = 0; m < MC; m++) {
            const float *xm = x + m * ldx + j;
            acc[m][0] += w0 * vload(xm);
            acc[m][1] += w1 * vload(xm + VLEN);
            acc[m][2] += w2 * vload(xm + 2 * VLEN);
            acc[m][3] += w3 * vload(xm + 3 * VLEN);
        }
    }
    for (; j < vec_end; j += VLEN) {
        v16f w0 = vload(w + j);
        for (int m = 0; m < MC; m++)
            acc[m][0] += w0 * vload(x + m * ldx + j);
    }
    for (int m = 0; m < MC; m++) {
        const float *xm = x + m * ldx;
        float s = vsum((acc[m][0] + acc[m][1]) + (acc[m][2] + acc[m][3]));
        for (long jj = j; jj < K; jj++)
            s += w[jj] * xm[jj];
        y[m * ldy + r] = s;
    }
}

/* Rows ahead that the batched lm-head prefetches: with 3+ input rows the dot products are
 * slow enough that the hardware prefetcher falls behind (one core, 50257 x 768:
 * 6.7 -> 9.6 GB/s at 8 rows with it, against 14 GB/s for one row).  The hint is prefetcht2
 * (into L2), as in the strip walk above: 8 input rows are 24 KB, and with the streamed row
 * and the rows prefetched into L1 they no longer fit a 32 KB L1 (AMD Zen 4), so every pass
 * reloaded x from L2.  Zen 4, 2 threads, 8 rows: 14-15 -> 7.3-7.6 ms (4 rows 8 -> 5.3 ms,
 * one row 5.4 ms); a scratch C harness timing this function alone, not kept. */
#define LM_PREFETCH_ROWS 2

GPT2_HOT
void matvec_rows_multi(float *y, long ldy, const float *x, long ldx, int M, const float *weight,
                       long r_begin, long r_end, long K)
{
    for (long r = r_begin; r < r_end; r++) {
        const float *w = weight + r * K;
        if (M > 2 && r + LM_PREFETCH_ROWS < r_end)
            for (long l = 0; l < K; l += VLEN)
                __builtin_prefetch(w + LM_PREFETCH_ROWS * K + l, 0, 1); /* prefetcht2 */
        int m = 0;
        for (; m + 4 <= M; m += 4)
            dot_row_mc(y + m * ldy, ldy, x + m * ldx, ldx, 4, w, r, K);
        switch (M - m) {
        case 1: dot_row_mc(y + m * ldy, ldy, x + m * ldx, ldx, 1, w, r, K); break;
        case 2: dot_row_mc(y + m * ldy, ldy, x + m * ldx, ldx, 2, w, r, K); break;
        case 3: dot_row_mc(y + m * ldy, ldy, x + m * ldx, ldx, 3, w, r, K); break;
        default: break;
        }
    }
}

GPT2_HOT
void matvec_rows(float *y, const float *x, const float *weight, long r_begin, long r_end, long K)
{
    long vec4_end = K - K % (4 * VLEN);
    long vec_end = K - K % VLEN;
    for (long r = r_begin; r < r_end; r++) {
        const float *w = weight + r * K;
        /* four accumulators hide the FMA latency */
        v16f acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0};
        long j = 0;
        for (; j < vec4_end; j += 4 * VLEN) {
            acc0 += vload(w + j) * vload(x + j);
            acc1 += vload(w + j + VLEN) * vload(x + j + VLEN);
            acc2 += vload(w + j + 2 * VLEN) * vload(x + j + 2 * VLEN);
            acc3 += vload(w + j + 3 * VLEN) * vload(x + j + 3 * VLEN);
        }
        for (; j < vec_end; j += VLEN)
            acc0 += vload(w + j) * vload(x + j);
        float s = vsum((acc0 + acc1) + (acc2 + acc3));
        for (; j < K; j++)
            s += w[j] * x[j];
        y[r] = s;
    }
}

/* ---- attention ---------------------------------------------------------- */

/* softmax over x[0:n] in place; returns nothing, the row sums to 1. */
ALWAYS_INLINE void softmax_inplace(float *x, long n)
{
    long vec_end = n - n % VLEN;
    float max = -INFINITY;
    for (long i = 0; i < n; i++)
        max = x[i] > max ? x[i] : max;
    v16f acc = {0};
    for (long i = 0; i < vec_end; i += VLEN) {
        v16f e = vexp(vload(x + i) - max);
        vstore(x + i, e);
        acc += e;
    }
    float sum = vsum(acc);
    for (long i = vec_end; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    float inv = 1.0f / sum;
    for (long i = 0; i < vec_end; i += VLEN)
        vstore(x + i, vload(x + i) * inv);
    for (long i = vec_end; i < n; i++)
        x[i] *= inv;
}

GPT2_HOT
void softmax_causal_forward(float *scores, int T, int S, long ld, int past_len, float scale)
{
    for (int i = 0; i < T; i++) {
        float *row = scores + (long)i * ld;
        int visible = past_len + i + 1; /* keys 0 .. past_len + i */
        if (visible > S)
            visible = S;
        for (int j = 0; j < visible; j++)
            row[j] *= scale;
        softmax_inplace(row, visible);
        for (int j = visible; j < S; j++)
            row[j] = 0.0f;
    }
}

ALWAYS_INLINE float dot(const float *a, const float *b, int n)
{
    int vec_end = n - n % VLEN;
    v16f acc = {0};
    for (int i = 0; i < vec_end; i += VLEN)
        acc += vload(a + i) * vload(b + i);
    float s = vsum(acc);
    for (int i = vec_end; i < n; i++)
        s += a[i] * b[i];
    return s;
}

GPT2_HOT
void attention_decode_forward(float *out, const float *q, const float *k_cache,
                              const float *v_cache, int S, int D, float scale, float *scratch)
{
    float *att = scratch;
    for (int s = 0; s < S; s++)
        att[s] = dot(q, k_cache + (long)s * D, D) * scale;
    softmax_inplace(att, S);

    int vec_end = D - D % VLEN;
    for (int i = 0; i < D; i++)
        out[i] = 0.0f;
    for (int s = 0; s < S; s++) {
        const float *v = v_cache + (long)s * D;
        const float p = att[s];
        for (int i = 0; i < vec_end; i += VLEN)
            vstore(out + i, vload(out + i) + p * vload(v + i));
        for (int i = vec_end; i < D; i++)
            out[i] += p * v[i];
    }
}
