/* int8 weights x float32 activations, float32 arithmetic: the product of multihead's int8
 * weight-only layers (multihead/_native.py builds it, multihead/quantize/native.py calls it).
 *
 *   y[m, n] = bias[n] + sum_g scale[n, g] * sum_{k in group g} x[m, k] * w[n, k]
 *
 * Each int8 weight becomes a float32 exactly; products and sums are float32 (fused multiply-add),
 * the per-group sums are scaled in float32. A decoding step multiplies one activation row by
 * each weight matrix, so its time goes into reading the weights. They are read in their own
 * row-major (N, K) order, one row after the other: one forward stream, prefetched ahead, and
 * each row read once for up to COLS activation rows.
 *
 * Compiled on the user's machine with -march=native: the AVX-512 or AVX2 path is chosen by
 * what that CPU has; anything else gets the plain C loop.
 */
#include <stddef.h>
#include <stdint.h>

#define COLS 4          /* activation rows (M) per tile: each weight row is read once for them */
#define UNROLL 4        /* independent accumulators per activation row (hides FMA latency) */
#define AHEAD 4096      /* bytes to prefetch ahead of the weight stream */

#include "simd.h"

/* int8 weights as float32 (exact), and a vector scaled into an accumulator. */
#if defined(__AVX512F__)
static inline vec vloadw(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
#elif defined(__AVX2__) && defined(__FMA__)
static inline vec vloadw(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
#else
static inline vec vloadw(const int8_t *p) { return (float)*p; }
#endif
static inline vec vscale(vec a, float s, vec c) { return vfma(a, vset(s), c); }

/* One tile: C activation rows (stride K) times one weight row. C is a constant at every call
 * site, so the compiler unrolls the loops over it and keeps the accumulators in registers. */
static inline __attribute__((always_inline)) void tile(
    const int C, const float *restrict x, const int64_t K, const int8_t *restrict w,
    const float *restrict scale, const int64_t G, const int64_t group, float *restrict out,
    const int64_t N)
{
    vec total[COLS];
    float tail[COLS];
    for (int c = 0; c < C; ++c) {
        total[c] = vzero();
        tail[c] = 0.0f;
    }
    for (int64_t g = 0; g < G; ++g) {
        vec acc[COLS][UNROLL];
        float rest[COLS];
        for (int c = 0; c < C; ++c) {
            rest[c] = 0.0f;
            for (int u = 0; u < UNROLL; ++u) acc[c][u] = vzero();
        }
        int64_t k = g * group;
        const int64_t end = k + group;
        for (; k + UNROLL * LANES <= end; k += UNROLL * LANES) {
            __builtin_prefetch(w + k + AHEAD, 0, 0);
            vec wv[UNROLL];
            for (int u = 0; u < UNROLL; ++u) wv[u] = vloadw(w + k + u * LANES);
            for (int c = 0; c < C; ++c)
                for (int u = 0; u < UNROLL; ++u)
                    acc[c][u] = vfma(vloadx(x + c * K + k + u * LANES), wv[u], acc[c][u]);
        }
        for (; k + LANES <= end; k += LANES) {
            const vec wv = vloadw(w + k);
            for (int c = 0; c < C; ++c) acc[c][0] = vfma(vloadx(x + c * K + k), wv, acc[c][0]);
        }
        for (; k < end; ++k)  /* a group that is not a multiple of the vector width */
            for (int c = 0; c < C; ++c) rest[c] += x[c * K + k] * (float)w[k];
        const float s = scale[g];
        for (int c = 0; c < C; ++c) {
            vec sum = acc[c][0];
            for (int u = 1; u < UNROLL; ++u) sum = vadd(sum, acc[c][u]);
            total[c] = vscale(sum, s, total[c]);
            tail[c] += s * rest[c];
        }
    }
    for (int c = 0; c < C; ++c) out[c * N] = vsum(total[c]) + tail[c];
}

#define TILE(C) tile(C, x + m * K, K, w + n * K, scale + n * G, G, group, y + m * N + n, N)

/* Version of this file's interface; native.py checks it after loading. */
int mh_int8_abi(void) { return 1; }

/* Lanes of the vector path this build chose (16: AVX-512, 8: AVX2, 1: plain C). */
int mh_int8_lanes(void) { return LANES; }

/* y (M, N) = x (M, K) @ dequantized(w)^T + bias, all row-major and contiguous: w (N, K) int8,
 * scale (N, K / group) float32, bias (N,) or NULL. The caller checks shapes, dtypes and
 * contiguity; group is positive and divides K. */
void mh_int8_mm(const float *x, int64_t M, int64_t K, const int8_t *w, int64_t N,
                const float *scale, int64_t group, const float *bias, float *y, int threads)
{
    if (group <= 0 || K % group) return;  /* the caller checks; never divide by zero here */
    const int64_t G = K / group;
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t n = 0; n < N; ++n) {
        for (int64_t m = 0; m < M; m += COLS) {
            switch (M - m < COLS ? M - m : COLS) {
            case 4: TILE(4); break;
            case 3: TILE(3); break;
            case 2: TILE(2); break;
            default: TILE(1); break;
            }
            if (bias) {
                const int64_t C = M - m < COLS ? M - m : COLS;
                for (int64_t c = 0; c < C; ++c) y[(m + c) * N + n] += bias[n];
            }
        }
    }
}
