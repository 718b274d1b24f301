/* 16-float vectors shared by the GPT-2 kernels (gpt2_kernels.c) and the weight kernels
 * (wkernels.c): GCC vector extensions that lower to one zmm (AVX-512), two ymm (AVX2) or
 * four xmm (SSE2), depending on the target the including function is compiled for. */
#ifndef CMLP_VEC16_H
#define CMLP_VEC16_H

#include <stdint.h>
#include <string.h>

typedef float v16f __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v16i __attribute__((vector_size(64)));
#define VLEN 16

/* Pairwise (better rounding than a left-to-right sum): s[i] += s[i + w] for w = 8, 4, 2, 1,
 * done as halves added in registers (a loop over a float array went through the stack and
 * cost as much as the 48 FMAs of a 768-long dot product: the lm-head, attention and the
 * weight kernels end every dot product here).  Inlined, it takes the caller's target. */
static inline __attribute__((always_inline)) float vsum(v16f v)
{
    v8f lo8, hi8;
    memcpy(&lo8, &v, sizeof lo8);
    memcpy(&hi8, (const char *)&v + sizeof lo8, sizeof hi8);
    v8f s8 = lo8 + hi8;
    v4f lo4, hi4;
    memcpy(&lo4, &s8, sizeof lo4);
    memcpy(&hi4, (const char *)&s8 + sizeof lo4, sizeof hi4);
    v4f s4 = lo4 + hi4;
    float s0 = s4[0] + s4[2], s1 = s4[1] + s4[3];
    return s0 + s1;
}

#endif
