/* Skinny fp32 matrix products for decoding: y (N, M) = x (N, K) @ w (M, K)^T + b, for a few
 * rows N (the batch) against a large weight w. The product is bound by reading w from memory,
 * so the kernel streams w exactly once: two weight rows at a time, against four input rows at
 * a time (the input rows stay in L1/L2), with a software prefetch a few weight rows ahead so
 * that the next rows arrive while the current ones are multiplied. Rows of w are split over
 * OpenMP threads. Weights may be float32, bfloat16, or int8 with one scale per row (the
 * products are summed in float32). AVX2 + FMA; the caller checks the CPU before loading this library. */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#define PREFETCH_ROWS 4

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_hadd_ps(lo, lo);
    lo = _mm_hadd_ps(lo, lo);
    return _mm_cvtss_f32(lo);
}

/* Loading 8 weights as 8 floats, per weight type. */
static inline __m256 load_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 load_bf16(const uint16_t *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
static inline __m256 load_i8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
static inline float scalar_f32(float v) { return v; }
static inline float scalar_bf16(uint16_t v) {
    union { uint32_t u; float f; } c; c.u = (uint32_t)v << 16; return c.f;
}
static inline float scalar_i8(int8_t v) { return (float)v; }

/* For weight type T (element type W): o[i * 4 + j] = w_i . x_j for weight rows w0, w1 and
 * input rows x + j*K, j < 4; and o[i] = w_i . x for one input row. pf points at the rows to
 * prefetch. */
#define DEFINE_SKINNY(T, W)                                                                     \
static void rows2x4_##T(const float *x, const W *w0, const W *w1, const W *pf, int K,          \
                        float *o) {                                                             \
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;                          \
    __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;                                          \
    const float *x0 = x, *x1 = x + K, *x2 = x + 2 * (size_t)K, *x3 = x + 3 * (size_t)K;        \
    int k = 0;                                                                                  \
    for (; k + 8 <= K; k += 8) {                                                                \
        if ((k * sizeof(W)) % 64 == 0) {                                                        \
            _mm_prefetch((const char *)(pf + k), _MM_HINT_T0);                                  \
            _mm_prefetch((const char *)(pf + K + k), _MM_HINT_T0);                              \
        }                                                                                       \
        __m256 v0 = load_##T(w0 + k), v1 = load_##T(w1 + k), t;                                 \
        t = _mm256_loadu_ps(x0 + k); a00 = _mm256_fmadd_ps(v0, t, a00); a10 = _mm256_fmadd_ps(v1, t, a10); \
        t = _mm256_loadu_ps(x1 + k); a01 = _mm256_fmadd_ps(v0, t, a01); a11 = _mm256_fmadd_ps(v1, t, a11); \
        t = _mm256_loadu_ps(x2 + k); a02 = _mm256_fmadd_ps(v0, t, a02); a12 = _mm256_fmadd_ps(v1, t, a12); \
        t = _mm256_loadu_ps(x3 + k); a03 = _mm256_fmadd_ps(v0, t, a03); a13 = _mm256_fmadd_ps(v1, t, a13); \
    }                                                                                           \
    o[0] = hsum(a00); o[1] = hsum(a01); o[2] = hsum(a02); o[3] = hsum(a03);                     \
    o[4] = hsum(a10); o[5] = hsum(a11); o[6] = hsum(a12); o[7] = hsum(a13);                     \
    for (; k < K; k++) {                                                                        \
        float u0 = scalar_##T(w0[k]), u1 = scalar_##T(w1[k]);                                  \
        o[0] += u0 * x0[k]; o[1] += u0 * x1[k]; o[2] += u0 * x2[k]; o[3] += u0 * x3[k];         \
        o[4] += u1 * x0[k]; o[5] += u1 * x1[k]; o[6] += u1 * x2[k]; o[7] += u1 * x3[k];         \
    }                                                                                           \
}                                                                                               \
static void rows2x1_##T(const float *x, const W *w0, const W *w1, const W *pf, int K,          \
                        float *o) {                                                             \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, c0 = a0, c1 = a0;                                 \
    int k = 0;                                                                                  \
    for (; k + 16 <= K; k += 16) {                                                              \
        if ((k * sizeof(W)) % 64 == 0) {                                                        \
            _mm_prefetch((const char *)(pf + k), _MM_HINT_T0);                                  \
            _mm_prefetch((const char *)(pf + K + k), _MM_HINT_T0);                              \
        }                                                                                       \
        __m256 t = _mm256_loadu_ps(x + k), u = _mm256_loadu_ps(x + k + 8);                      \
        a0 = _mm256_fmadd_ps(load_##T(w0 + k), t, a0);                                          \
        a1 = _mm256_fmadd_ps(load_##T(w1 + k), t, a1);                                          \
        c0 = _mm256_fmadd_ps(load_##T(w0 + k + 8), u, c0);                                      \
        c1 = _mm256_fmadd_ps(load_##T(w1 + k + 8), u, c1);                                      \
    }                                                                                           \
    for (; k + 8 <= K; k += 8) {                                                                \
        __m256 t = _mm256_loadu_ps(x + k);                                                      \
        a0 = _mm256_fmadd_ps(load_##T(w0 + k), t, a0);                                          \
        a1 = _mm256_fmadd_ps(load_##T(w1 + k), t, a1);                                          \
    }                                                                                           \
    o[0] = hsum(_mm256_add_ps(a0, c0));                                                         \
    o[1] = hsum(_mm256_add_ps(a1, c1));                                                         \
    for (; k < K; k++) { o[0] += scalar_##T(w0[k]) * x[k]; o[1] += scalar_##T(w1[k]) * x[k]; } \
}                                                                                               \
/* x: (N, K) float32; w: (M, K) of W; scale: (M,) float32 or NULL (row m of w times scale[m]); \
 * b: (M,) float32 or NULL; y: (N, M) float32. All contiguous. */                               \
void attnkit_skinny_linear_##T(const float *x, const W *w, const float *scale, const float *b,  \
                               float *y, int N, int M, int K, int threads) {                    \
    if (threads < 1) threads = 1;                                                               \
    int pairs = (M + 1) / 2;                                                                    \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                           \
    for (int p = 0; p < pairs; p++) {                                                           \
        int m = 2 * p;                                                                          \
        int two = m + 1 < M;                                                                    \
        const W *w0 = w + (size_t)m * K;                                                        \
        const W *w1 = two ? w0 + K : w0;                                                        \
        /* the rows PREFETCH_ROWS ahead, or these rows again near the end of w */               \
        const W *pf = (m + PREFETCH_ROWS + 1 < M) ? w0 + (size_t)PREFETCH_ROWS * K : w0;        \
        float s0 = scale ? scale[m] : 1.0f, s1 = (scale && two) ? scale[m + 1] : 1.0f;          \
        float b0 = b ? b[m] : 0.0f, b1 = (b && two) ? b[m + 1] : 0.0f;                          \
        float o[8];                                                                             \
        int n = 0;                                                                              \
        for (; n + 4 <= N; n += 4) {                                                            \
            rows2x4_##T(x + (size_t)n * K, w0, w1, pf, K, o);                                   \
            for (int j = 0; j < 4; j++) {                                                       \
                float *yr = y + (size_t)(n + j) * M + m;                                        \
                yr[0] = o[j] * s0 + b0;                                                         \
                if (two) yr[1] = o[4 + j] * s1 + b1;                                            \
            }                                                                                   \
        }                                                                                       \
        for (; n < N; n++) {                                                                    \
            rows2x1_##T(x + (size_t)n * K, w0, w1, pf, K, o);                                   \
            float *yr = y + (size_t)n * M + m;                                                  \
            yr[0] = o[0] * s0 + b0;                                                             \
            if (two) yr[1] = o[1] * s1 + b1;                                                    \
        }                                                                                       \
    }                                                                                           \
}

DEFINE_SKINNY(f32, float)
DEFINE_SKINNY(bf16, uint16_t)
DEFINE_SKINNY(i8, int8_t)
