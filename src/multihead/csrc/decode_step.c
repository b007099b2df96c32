/* One cached decoding step of a float32 decoder-only Transformer (multihead's DecoderLM), all
 * layers and the LM head in one call: multihead/modules/native_decode.py checks the model and
 * every operand and calls mh_decode_step; multihead/_native.py builds this file.
 *
 * At batch 1 a step reads every weight once and multiplies it by one activation row, so its
 * time is the time to read the weights, plus whatever runs between the products. In PyTorch
 * that is ~150 operator calls per GPT-2-small step (norms, attention, activations, adds, their
 * Python), about 2.5 ms of a 17 ms step on one core. Here it is a few loops over vectors of
 * d_model or d_ff values, inside one OpenMP parallel region (one thread pool wake-up per step).
 *
 * Products: weights as stored by nn.Linear, row-major (N, K); each row is read once, forward,
 * prefetched ahead, for up to COLS activation rows; float32 fused multiply-add, one bias added
 * after the sum, as F.linear. Activations and residual adds are applied as each output is made.
 * Norms: mean and variance (or mean square) in double. Attention: one query per row over the
 * cached keys and values, softmax with its maximum subtracted, in float32; a query holding NaN
 * or inf gives NaN (multihead's rule, see functional/sdpa.py).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

#define COLS 4     /* activation rows per tile: each weight row is read once for them */
#define UNROLL 4   /* independent accumulators of a batch-1 dot product */
#define AHEAD 4096 /* bytes to prefetch ahead of the weight stream */

/* The dims array, as native_decode.py fills it. */
enum {
    D_EMBED, D_HEADS, D_KV_HEADS, D_HEAD, D_V_HEAD, D_FF, D_VOCAB, D_ROOM, D_LAYERS,
    D_NORM, D_NORM_FIRST, D_ACT, D_GATED, D_FINAL_NORM, D_ROWS, D_POS, D_COUNT
};
enum { NORM_LAYER, NORM_RMS };
enum { ACT_NONE, ACT_GELU, ACT_RELU, ACT_GELU_TANH, ACT_SILU };
/* Per layer, NULL where absent (no bias, no affine norm, no gate). */
enum {
    P_N1W, P_N1B, P_QW, P_QB, P_KW, P_KB, P_VW, P_VB, P_OW, P_OB,
    P_N2W, P_N2B, P_F1W, P_F1B, P_GW, P_GB, P_F2W, P_F2B, P_PER_LAYER
};
/* After the layers: the final norm's weight and bias, the head's weight and bias. */
enum { P_NFW, P_NFB, P_HW, P_HB, P_FINAL };

/* Weight rows per tile: every activation vector loaded serves this many rows (AVX-512 has
 * the registers for 4 x 4 accumulators; AVX2's 16 registers hold 2 x 4). */
#if LANES == 16
#define WROWS 4
#else
#define WROWS 2
#endif

/* One activation row times one weight row of K values: the step at batch 1, which only
 * streams the weights. UNROLL accumulators hide the latency of the fused multiply-adds; the
 * rows are read one after the other, one stream, prefetched AHEAD bytes ahead. */
static inline float dot_row(const float *restrict x, const int64_t K, const float *restrict w)
{
    vec acc[UNROLL];
    for (int u = 0; u < UNROLL; ++u) acc[u] = vzero();
    int64_t k = 0;
    for (; k + UNROLL * LANES <= K; k += UNROLL * LANES) {
        for (int b = 0; b < UNROLL * LANES * 4; b += 64)
            __builtin_prefetch((const char *)(w + k) + AHEAD + b, 0, 0);
        for (int u = 0; u < UNROLL; ++u)
            acc[u] = vfma(vloadx(x + k + u * LANES), vloadx(w + k + u * LANES), acc[u]);
    }
    for (; k + LANES <= K; k += LANES) acc[0] = vfma(vloadx(x + k), vloadx(w + k), acc[0]);
    for (int u = 1; u < UNROLL; ++u) acc[0] = vadd(acc[0], acc[u]);
    float sum = vsum(acc[0]);
    for (; k < K; ++k) sum += x[k] * w[k];
    return sum;
}

/* RW weight rows (contiguous, K values each) times C activation rows (stride ldx), for
 * several rows at once: out[r * COLS + c] = w[r] . x[c]. Each activation vector loaded serves
 * RW weight rows and each weight vector C activation rows. RW and C are constants at every
 * call site, so the loops over them unroll and the accumulators stay in registers. The next
 * block of RW rows is prefetched as this one is read. */
static inline __attribute__((always_inline)) void dots(
    const int RW, const int C, const float *restrict x, const int64_t ldx, const int64_t K,
    const float *restrict w, float *restrict out)
{
    vec acc[WROWS][COLS];
    for (int r = 0; r < RW; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = vzero();
    int64_t k = 0;
    for (; k + LANES <= K; k += LANES) {
        for (int r = 0; r < RW; ++r) __builtin_prefetch(w + (RW + r) * K + k, 0, 0);
        vec wv[WROWS];
        for (int r = 0; r < RW; ++r) wv[r] = vloadx(w + r * K + k);
        for (int c = 0; c < C; ++c) {
            const vec xv = vloadx(x + c * ldx + k);
            for (int r = 0; r < RW; ++r) acc[r][c] = vfma(xv, wv[r], acc[r][c]);
        }
    }
    for (int r = 0; r < RW; ++r)
        for (int c = 0; c < C; ++c) {
            float sum = vsum(acc[r][c]);
            for (int64_t j = k; j < K; ++j) sum += x[c * ldx + j] * w[r * K + j];
            out[r * COLS + c] = sum;
        }
}

static inline float activate(int act, float v)
{
    switch (act) {
    case ACT_GELU: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case ACT_RELU: return v > 0.0f ? v : (v == v ? 0.0f : v); /* NaN stays NaN, as torch */
    case ACT_GELU_TANH: {
        const float inner = 0.79788456080286536f * (v + 0.044715f * v * v * v);
        return 0.5f * v * (1.0f + tanhf(inner));
    }
    case ACT_SILU: return v / (1.0f + expf(-v));
    default: return v;
    }
}

/* One product segment: y[m, n] (stride ldy) = act(x[m] . w[n] + bias[n]), or y += that. */
typedef struct {
    const float *w, *bias;
    float *y;
    int64_t n, ldy;
} segment;

/* The tile of RW weight rows (RW = WROWS or 1) and C activation rows, C from 1 to COLS. */
static inline __attribute__((always_inline)) void tile(
    const int RW, const int64_t C, const float *x, int64_t ldx, int64_t K, const float *w,
    float *out)
{
    switch (C) {
    case 4: dots(RW, 4, x, ldx, K, w, out); break;
    case 3: dots(RW, 3, x, ldx, K, w, out); break;
    case 2: dots(RW, 2, x, ldx, K, w, out); break;
    default: dots(RW, 1, x, ldx, K, w, out); break;
    }
}

/* x (M, K), stride ldx, times the rows of up to three segments (q, k and v share one pass),
 * WROWS rows at a time; the blocks of rows are shared among the threads of the enclosing
 * parallel region, which wait for each other at the end. */
static void product(const float *x, int64_t M, int64_t ldx, int64_t K, const segment *seg,
                    int nseg, int act, int accumulate)
{
    int64_t total = 0;
    for (int s = 0; s < nseg; ++s) total += (seg[s].n + WROWS - 1) / WROWS;
    #pragma omp for schedule(static)
    for (int64_t i = 0; i < total; ++i) {
        int s = 0;
        int64_t block = i;
        while (block >= (seg[s].n + WROWS - 1) / WROWS) block -= (seg[s++].n + WROWS - 1) / WROWS;
        const int64_t n0 = block * WROWS;
        const int64_t rows = seg[s].n - n0 < WROWS ? seg[s].n - n0 : WROWS;
        if (M == 1) {  /* batch 1: one stream */
            for (int64_t r = 0; r < rows; ++r) {
                const int64_t n = n0 + r;
                const float b = seg[s].bias ? seg[s].bias[n] : 0.0f;
                const float v = activate(act, dot_row(x, K, seg[s].w + n * K) + b);
                seg[s].y[n] = accumulate ? seg[s].y[n] + v : v;
            }
            continue;
        }
        for (int64_t m = 0; m < M; m += COLS) {
            float out[WROWS * COLS];
            const int64_t C = M - m < COLS ? M - m : COLS;
            if (rows == WROWS) {
                tile(WROWS, C, x + m * ldx, ldx, K, seg[s].w + n0 * K, out);
            } else {
                for (int64_t r = 0; r < rows; ++r)
                    tile(1, C, x + m * ldx, ldx, K, seg[s].w + (n0 + r) * K, out + r * COLS);
            }
            for (int64_t r = 0; r < rows; ++r) {
                const int64_t n = n0 + r;
                const float b = seg[s].bias ? seg[s].bias[n] : 0.0f;
                for (int64_t c = 0; c < C; ++c) {
                    float *y = seg[s].y + (m + c) * seg[s].ldy + n;
                    const float v = activate(act, out[r * COLS + c] + b);
                    *y = accumulate ? *y + v : v;
                }
            }
        }
    }
}

/* y (M, E) = norm(x (M, E)); y may be x. Rows shared among the threads. */
static void norm(const float *x, float *y, int64_t M, int64_t E, int kind, double eps,
                 const float *w, const float *b)
{
    #pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
        const float *xm = x + m * E;
        float *ym = y + m * E;
        double mean = 0.0, square = 0.0;
        if (kind == NORM_LAYER) {
            for (int64_t e = 0; e < E; ++e) mean += xm[e];
            mean /= (double)E;
        }
        for (int64_t e = 0; e < E; ++e) {
            const double d = xm[e] - mean;
            square += d * d;
        }
        const float inv = (float)(1.0 / sqrt(square / (double)E + eps));
        const float shift = (float)mean;
        for (int64_t e = 0; e < E; ++e) {
            float v = (xm[e] - shift) * inv;
            if (w) v *= w[e];
            if (b) v += b[e];
            ym[e] = v;
        }
    }
}

static inline float dot(const float *restrict a, const float *restrict b, int64_t n)
{
    vec acc = vzero();
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) acc = vfma(vloadx(a + i), vloadx(b + i), acc);
    float s = vsum(acc);
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

/* y += p * x over n values. */
static inline void axpy(float p, const float *restrict x, float *restrict y, int64_t n)
{
    const vec pv = vset(p);
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) vstore(y + i, vfma(pv, vloadx(x + i), vloadx(y + i)));
    for (; i < n; ++i) y[i] += p * x[i];
}

/* The new token's keys and values written into the cache at pos, then each query row and head
 * attends to positions 0..pos: out (R, H * Dv). scores holds R * H * (pos + 1) floats. */
static void attend(const int64_t *dims, const float *q, const float *k, const float *v,
                   float *keys, float *values, float *scores, float *out)
{
    const int64_t R = dims[D_ROWS], H = dims[D_HEADS], Hkv = dims[D_KV_HEADS];
    const int64_t D = dims[D_HEAD], Dv = dims[D_V_HEAD], L = dims[D_ROOM], pos = dims[D_POS];
    #pragma omp for schedule(static)
    for (int64_t i = 0; i < R * Hkv; ++i) {
        memcpy(keys + (i * L + pos) * D, k + i * D, (size_t)D * sizeof(float));
        memcpy(values + (i * L + pos) * Dv, v + i * Dv, (size_t)Dv * sizeof(float));
    }
    const float scale = (float)(1.0 / sqrt((double)D));
    const int64_t group = H / Hkv;
    #pragma omp for schedule(static)
    for (int64_t i = 0; i < R * H; ++i) {
        const int64_t r = i / H, h = i % H, kv = r * Hkv + h / group;
        const float *qi = q + i * D;
        float *o = out + i * Dv;
        float *s = scores + i * (pos + 1);
        int finite = 1;
        for (int64_t d = 0; d < D; ++d) finite &= isfinite(qi[d]) != 0;
        if (!finite) {
            for (int64_t d = 0; d < Dv; ++d) o[d] = NAN;
            continue;
        }
        const float *kt = keys + kv * L * D;
        float top = -INFINITY;
        for (int64_t t = 0; t <= pos; ++t) {
            s[t] = dot(qi, kt + t * D, D) * scale;
            if (s[t] > top) top = s[t];
        }
        float total = 0.0f;
        for (int64_t t = 0; t <= pos; ++t) total += (s[t] = expf(s[t] - top));
        for (int64_t d = 0; d < Dv; ++d) o[d] = 0.0f;
        const float *vt = values + kv * L * Dv;
        for (int64_t t = 0; t <= pos; ++t) axpy(s[t], vt + t * Dv, o, Dv);
        const float inv = 1.0f / total;
        for (int64_t d = 0; d < Dv; ++d) o[d] *= inv;
    }
}

/* Version of this file's interface; native_decode.py checks it after loading. */
int mh_decode_abi(void) { return 1; }

/* Lanes of the vector path this build chose (16: AVX-512, 8: AVX2, 1: plain C). */
int mh_decode_lanes(void) { return LANES; }

/* One step for R rows, each feeding one new token at position pos:
 *   x (R, E)       the new tokens' embeddings; overwritten with the last layer's output
 *   keys[l]        (R, Hkv, room, D) and values[l] (R, Hkv, room, Dv): layer l's cache, filled
 *                  before pos, written at pos
 *   logits (R, V)  the head's output
 *   params         P_PER_LAYER pointers per layer, then P_FINAL
 *   eps            two per layer (norm1, norm2), then the final norm's
 * Returns 0, or -1 when the work memory could not be allocated (nothing is written then). The
 * caller has checked every shape, dtype and layout. */
int mh_decode_step(const int64_t *dims, const float *const *params, const double *eps,
                   float *x, float *const *keys, float *const *values, float *logits,
                   int threads)
{
    const int64_t E = dims[D_EMBED], H = dims[D_HEADS], Hkv = dims[D_KV_HEADS];
    const int64_t D = dims[D_HEAD], Dv = dims[D_V_HEAD], F = dims[D_FF], V = dims[D_VOCAB];
    const int64_t R = dims[D_ROWS], layers = dims[D_LAYERS];
    const int kind = (int)dims[D_NORM], first = (int)dims[D_NORM_FIRST];
    const int act = (int)dims[D_ACT], gated = (int)dims[D_GATED];
    if (R == 0) return 0; /* nothing to compute (and malloc(0) may return NULL) */
    const int64_t pos = dims[D_POS];
    const size_t floats = (size_t)(R * E + R * H * D + R * Hkv * (D + Dv) + R * H * Dv
                                   + R * F * (gated ? 2 : 1) + R * H * (pos + 1));
    float *work = malloc(floats * sizeof(float));
    if (!work) return -1;
    float *h = work, *q = h + R * E, *k = q + R * H * D, *v = k + R * Hkv * D;
    float *att = v + R * Hkv * Dv, *f = att + R * H * Dv, *g = f + R * F;
    float *scores = g + (gated ? R * F : 0);
    const float *const *fin = params + layers * P_PER_LAYER;

    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        for (int64_t l = 0; l < layers; ++l) {
            const float *const *p = params + l * P_PER_LAYER;
            /* Self-attention: h = norm1(x) (pre-norm) or x. */
            const float *in = x;
            if (first) {
                norm(x, h, R, E, kind, eps[2 * l], p[P_N1W], p[P_N1B]);
                in = h;
            }
            const segment qkv[3] = {
                {p[P_QW], p[P_QB], q, H * D, H * D},
                {p[P_KW], p[P_KB], k, Hkv * D, Hkv * D},
                {p[P_VW], p[P_VB], v, Hkv * Dv, Hkv * Dv},
            };
            product(in, R, E, E, qkv, 3, ACT_NONE, 0);
            attend(dims, q, k, v, keys[l], values[l], scores, att);
            const segment o = {p[P_OW], p[P_OB], x, E, E};
            product(att, R, H * Dv, H * Dv, &o, 1, ACT_NONE, 1); /* x += out */
            if (!first) norm(x, x, R, E, kind, eps[2 * l], p[P_N1W], p[P_N1B]);
            /* Feed-forward. */
            in = x;
            if (first) {
                norm(x, h, R, E, kind, eps[2 * l + 1], p[P_N2W], p[P_N2B]);
                in = h;
            }
            if (gated) {
                const segment up[2] = {{p[P_GW], p[P_GB], g, F, F}, {p[P_F1W], p[P_F1B], f, F, F}};
                product(in, R, E, E, &up[0], 1, act, 0);
                product(in, R, E, E, &up[1], 1, ACT_NONE, 0);
                #pragma omp for schedule(static)
                for (int64_t i = 0; i < R * F; ++i) f[i] *= g[i];
            } else {
                const segment up = {p[P_F1W], p[P_F1B], f, F, F};
                product(in, R, E, E, &up, 1, act, 0);
            }
            const segment down = {p[P_F2W], p[P_F2B], x, E, E};
            product(f, R, F, F, &down, 1, ACT_NONE, 1); /* x += ffn */
            if (!first) norm(x, x, R, E, kind, eps[2 * l + 1], p[P_N2W], p[P_N2B]);
        }
        const float *in = x;
        if (dims[D_FINAL_NORM]) {
            norm(x, h, R, E, kind, eps[2 * layers], fin[P_NFW], fin[P_NFB]);
            in = h;
        }
        const segment head = {fin[P_HW], fin[P_HB], logits, V, V};
        product(in, R, E, E, &head, 1, ACT_NONE, 0);
    }
    free(work);
    return 0;
}
