// Integer-dot-product kernels: see include/CLorikeetQ8.h. Layouts of the weights:
// LorikeetKernels/QuantKernels.swift (quad blocks of four rows).
#include "CLorikeetQ8.h"

#include <string.h>

// Every build must round the same way: no multiply-add contracted into an FMA.
#pragma STDC FP_CONTRACT OFF

enum { Q41_QUAD_BLOCK = 80, Q80_QUAD_BLOCK = 136 };

/// fp16 bits to float, exactly, without F16C or a library call (as QuantKernels.floats).
static inline float half_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)(h & 0x7FFF) << 13;
    float magnitude;
    memcpy(&magnitude, &bits, 4);
    magnitude *= 0x1p112f;
    memcpy(&bits, &magnitude, 4);
    if ((h & 0x7C00) == 0x7C00) bits |= 0x7F800000u;
    bits |= (uint32_t)(h & 0x8000) << 16;
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

static inline uint16_t load_half(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/// `roundf(v)` for |v| <= 127 without a library call: the nearest integer, halves away from
/// zero. Exact: `v - trunc(v)` has no rounding error at this size (adding 0.5 first would
/// round 0.49999997 up).
static inline int round_half_away(float v) {
    const int whole = (int)v;
    const float fraction = v - (float)whole;
    return whole + (fraction >= 0.5f) - (fraction <= -0.5f);
}

void lorikeet_q8_quantize(const float *x, int columns, lorikeet_q8_block *out) {
    const int blocks = columns / 32;
    for (int b = 0; b < blocks; b++) {
        const float *xb = x + 32 * b;
        lorikeet_q8_block *o = out + b;
        float amax = 0;
        for (int k = 0; k < 32; k++) {
            const float a = xb[k] < 0 ? -xb[k] : xb[k];
            amax = a > amax ? a : amax;
        }
        // A NaN or infinity gives NaN (or infinite) outputs, as an fp32 product would.
        int finite = 1;
        for (int k = 0; k < 32; k++) finite &= (xb[k] == xb[k]) && xb[k] - xb[k] == 0;
        const float d = finite ? amax / 127 : __builtin_nanf("");
        // Below about 3.7e-37, 127 / amax overflows: divide by the step instead.
        const float id = finite && amax > 0 ? 127 / amax : 0;
        const int divide = finite && amax > 0 && !(id <= 0x1.fffffep127f);
        int8_t codes[32];
        for (int k = 0; k < 32; k++) {
            float v = !finite ? 0 : divide ? xb[k] / d : xb[k] * id;
            v = v > 127 ? 127 : v < -127 ? -127 : v;
            codes[k] = (int8_t)round_half_away(v);
        }
        for (int i = 0; i < 4; i++) {
            for (int j = 0; j < 4; j++) {
                o->q41[4 * i + j] = codes[8 * j + i];
                o->q41[16 + 4 * i + j] = codes[8 * j + 4 + i];
            }
        }
        for (int h = 0; h < 2; h++) {
            for (int i = 0; i < 4; i++) {
                for (int k = 0; k < 4; k++) o->q80[16 * h + 4 * i + k] = codes[16 * h + 4 * k + i];
            }
        }
        for (int i = 0; i < 4; i++) {
            int32_t s = 0;
            for (int h = 0; h < 2; h++) {
                for (int k = 0; k < 4; k++) s += o->q80[16 * h + 4 * i + k];
            }
            o->lanes80[i] = s;
        }
        // Q4_1's min term multiplies the sum of the quantized inputs, not of the exact ones:
        // the product is then exactly that of the dequantized weights (centered near zero)
        // with the dequantized input, whose error is about half that of correcting the min
        // term alone (the codes 0...15 times the input's error), as llama.cpp's Q8_1 does.
        int32_t code_sum = 0;
        for (int k = 0; k < 32; k++) code_sum += codes[k];
        o->d = d;
        o->sum = d * (float)code_sum;
        o->padding[0] = 0;
        o->padding[1] = 0;
    }
}

/// Row `r`'s result from its 4 lane accumulators and its min term, in the one order every
/// build uses.
static inline float reduce_row(const float *lanes, float min_term) {
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + min_term;
}

static inline void store_quad(const float *lanes16, const float *min4, int quad, int rows, float *y) {
    for (int r = 0; r < 4; r++) {
        const int row = 4 * quad + r;
        if (row < rows) y[row] = reduce_row(lanes16 + 4 * r, min4 ? min4[r] : 0);
    }
}

// MARK: plain C

void lorikeet_q41_q8_generic(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                             const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride) {
    if (inputs < 1) return;
    if (inputs > 4) inputs = 4;
    for (int q = quad_begin; q < quad_end; q++) {
        const uint8_t *quad = (const uint8_t *)w + (size_t)q * blocks * Q41_QUAD_BLOCK;
        float acc[4][16] = {{0}};
        float macc[4][4] = {{0}};
        for (int b = 0; b < blocks; b++) {
            const uint8_t *block = quad + (size_t)b * Q41_QUAD_BLOCK;
            const uint8_t *nibbles = block + 16;
            for (int t = 0; t < inputs; t++) {
                const lorikeet_q8_block *xb = x + (size_t)t * x_stride + b;
                for (int r = 0; r < 4; r++) {
                    const float s = half_to_float(load_half(block + 2 * r)) * xb->d;
                    for (int i = 0; i < 4; i++) {
                        int32_t isum = 0;
                        for (int j = 0; j < 4; j++) {
                            const uint8_t byte = nibbles[16 * r + 4 * i + j];
                            isum += (byte & 15) * xb->q41[4 * i + j] + (byte >> 4) * xb->q41[16 + 4 * i + j];
                        }
                        acc[t][4 * r + i] = acc[t][4 * r + i] + (float)isum * s;
                    }
                    macc[t][r] = macc[t][r] + half_to_float(load_half(block + 8 + 2 * r)) * xb->sum;
                }
            }
        }
        for (int t = 0; t < inputs; t++) store_quad(acc[t], macc[t], q, rows, y + (size_t)t * y_stride);
    }
}

void lorikeet_q80_q8_generic(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                             const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride) {
    if (inputs < 1) return;
    if (inputs > 4) inputs = 4;
    for (int q = quad_begin; q < quad_end; q++) {
        const uint8_t *quad = (const uint8_t *)w + (size_t)q * blocks * Q80_QUAD_BLOCK;
        float acc[4][16] = {{0}};
        for (int b = 0; b < blocks; b++) {
            const uint8_t *block = quad + (size_t)b * Q80_QUAD_BLOCK;
            for (int t = 0; t < inputs; t++) {
                const lorikeet_q8_block *xb = x + (size_t)t * x_stride + b;
                for (int r = 0; r < 4; r++) {
                    const float s = half_to_float(load_half(block + 2 * r)) * xb->d;
                    for (int i = 0; i < 4; i++) {
                        int32_t isum = 0;
                        for (int h = 0; h < 2; h++) {
                            for (int k = 0; k < 4; k++) {
                                const int wq = (int)block[8 + 64 * h + 16 * r + 4 * i + k] - 128;
                                isum += wq * xb->q80[16 * h + 4 * i + k];
                            }
                        }
                        acc[t][4 * r + i] = acc[t][4 * r + i] + (float)isum * s;
                    }
                }
            }
        }
        for (int t = 0; t < inputs; t++) store_quad(acc[t], NULL, q, rows, y + (size_t)t * y_stride);
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

#define LK_AVX2 __attribute__((target("avx2,f16c")))
#define LK_AVXVNNI __attribute__((target("avx2,avxvnni,f16c")))
#define LK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c")))
#define LK_INLINE static inline __attribute__((always_inline))

int lorikeet_q8_avx2_built(void) { return 1; }
int lorikeet_q8_avxvnni_built(void) { return 1; }
int lorikeet_q8_avx512vnni_built(void) { return 1; }

// MARK: AVX2

/// The four rows' scales times the input's, each repeated over its row's 4 lanes: rows 0-1
/// (`*s01`) and rows 2-3 (`*s23`).
LK_INLINE LK_AVX2 void avx2_scales(const uint8_t *halves, float xd, __m256 *s01, __m256 *s23) {
    const __m128 s = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)halves)), _mm_set1_ps(xd));
    const __m256 wide = _mm256_castps128_ps256(s);
    *s01 = _mm256_permutevar8x32_ps(wide, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
    *s23 = _mm256_permutevar8x32_ps(wide, _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3));
}

LK_INLINE LK_AVX2 __m256i avx2_broadcast16(const int8_t *p) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
}

// Both 256-bit builds share their loops (`LK_Q41_256`, `LK_Q80_256`); only the integer sums
// of one block differ. Each sum is, per int32 lane, the exact sum of the 8 byte products the
// lane covers (4 from each half of the block; Q8_0 less its bias correction), so both builds
// give the same bits.
#define LK_Q41_256(NAME, ATTR, SUMS)                                                                          \
    LK_INLINE ATTR void NAME(const uint8_t *quad, int blocks, const lorikeet_q8_block *x, int x_stride, int n, \
                             float lanes[4][16], float mins[4][4]) {                                          \
        __m256 acc01[4], acc23[4];                                                                            \
        __m128 macc[4];                                                                                       \
        for (int t = 0; t < n; t++) {                                                                         \
            acc01[t] = _mm256_setzero_ps();                                                                   \
            acc23[t] = _mm256_setzero_ps();                                                                   \
            macc[t] = _mm_setzero_ps();                                                                       \
        }                                                                                                     \
        const __m256i low = _mm256_set1_epi8(0x0F);                                                           \
        for (int b = 0; b < blocks; b++) {                                                                    \
            const uint8_t *block = quad + (size_t)b * Q41_QUAD_BLOCK;                                         \
            const __m256i u01 = _mm256_loadu_si256((const __m256i *)(block + 16));                            \
            const __m256i u23 = _mm256_loadu_si256((const __m256i *)(block + 48));                            \
            const __m256i lo01 = _mm256_and_si256(u01, low), hi01 = _mm256_and_si256(_mm256_srli_epi16(u01, 4), low); \
            const __m256i lo23 = _mm256_and_si256(u23, low), hi23 = _mm256_and_si256(_mm256_srli_epi16(u23, 4), low); \
            const __m128 m = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(block + 8)));                     \
            for (int t = 0; t < n; t++) {                                                                     \
                const lorikeet_q8_block *xb = x + (size_t)t * x_stride + b;                                   \
                const __m256i xlo = avx2_broadcast16(xb->q41), xhi = avx2_broadcast16(xb->q41 + 16);          \
                __m256 s01, s23;                                                                              \
                avx2_scales(block, xb->d, &s01, &s23);                                                        \
                acc01[t] = _mm256_add_ps(acc01[t], _mm256_mul_ps(_mm256_cvtepi32_ps(SUMS(lo01, hi01, xlo, xhi)), s01)); \
                acc23[t] = _mm256_add_ps(acc23[t], _mm256_mul_ps(_mm256_cvtepi32_ps(SUMS(lo23, hi23, xlo, xhi)), s23)); \
                macc[t] = _mm_add_ps(macc[t], _mm_mul_ps(m, _mm_set1_ps(xb->sum)));                           \
            }                                                                                                 \
        }                                                                                                     \
        for (int t = 0; t < n; t++) {                                                                         \
            _mm256_storeu_ps(lanes[t], acc01[t]);                                                             \
            _mm256_storeu_ps(lanes[t] + 8, acc23[t]);                                                         \
            _mm_storeu_ps(mins[t], macc[t]);                                                                  \
        }                                                                                                     \
    }

#define LK_Q80_256(NAME, ATTR, SUMS)                                                                          \
    LK_INLINE ATTR void NAME(const uint8_t *quad, int blocks, const lorikeet_q8_block *x, int x_stride, int n, \
                             float lanes[4][16], float mins[4][4]) {                                          \
        __m256 acc01[4], acc23[4];                                                                            \
        for (int t = 0; t < n; t++) {                                                                         \
            acc01[t] = _mm256_setzero_ps();                                                                   \
            acc23[t] = _mm256_setzero_ps();                                                                   \
        }                                                                                                     \
        for (int b = 0; b < blocks; b++) {                                                                    \
            const uint8_t *block = quad + (size_t)b * Q80_QUAD_BLOCK;                                         \
            const __m256i a01 = _mm256_loadu_si256((const __m256i *)(block + 8));                             \
            const __m256i a23 = _mm256_loadu_si256((const __m256i *)(block + 40));                            \
            const __m256i b01 = _mm256_loadu_si256((const __m256i *)(block + 72));                            \
            const __m256i b23 = _mm256_loadu_si256((const __m256i *)(block + 104));                           \
            for (int t = 0; t < n; t++) {                                                                     \
                const lorikeet_q8_block *xb = x + (size_t)t * x_stride + b;                                   \
                const __m256i x0 = avx2_broadcast16(xb->q80), x1 = avx2_broadcast16(xb->q80 + 16);            \
                __m256 s01, s23;                                                                              \
                avx2_scales(block, xb->d, &s01, &s23);                                                        \
                acc01[t] = _mm256_add_ps(acc01[t], _mm256_mul_ps(_mm256_cvtepi32_ps(SUMS(a01, b01, x0, x1, xb)), s01)); \
                acc23[t] = _mm256_add_ps(acc23[t], _mm256_mul_ps(_mm256_cvtepi32_ps(SUMS(a23, b23, x0, x1, xb)), s23)); \
            }                                                                                                 \
        }                                                                                                     \
        for (int t = 0; t < n; t++) {                                                                         \
            _mm256_storeu_ps(lanes[t], acc01[t]);                                                             \
            _mm256_storeu_ps(lanes[t] + 8, acc23[t]);                                                         \
            _mm_storeu_ps(mins[t], _mm_setzero_ps()); /* Q8_0 has no min term */                              \
        }                                                                                                     \
    }

/// Q4_1: codes 0...15 (`lo`, `hi` nibbles) times -127...127, pairs and both halves: at most
/// 7,620 in an int16, then pairs of int16 summed into int32.
LK_INLINE LK_AVX2 __m256i avx2_q41_sums(__m256i lo, __m256i hi, __m256i xlo, __m256i xhi) {
    const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo), _mm256_maddubs_epi16(hi, xhi));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

LK_INLINE LK_AVX2 __m256i avx2_q80_half(__m256i weights, __m256i xs) {
    // Signed codes; |w| (128 stays 0x80 = 128 unsigned) times x with w's sign: at most
    // 2 * 128 * 127 = 32,512 per int16 pair.
    const __m256i w = _mm256_xor_si256(weights, _mm256_set1_epi8((char)0x80));
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xs, w)), _mm256_set1_epi16(1));
}

/// Q8_0: the weight bytes are w + 128; each half back to signed, then multiplied.
LK_INLINE LK_AVX2 __m256i avx2_q80_sums(__m256i a, __m256i b, __m256i x0, __m256i x1, const lorikeet_q8_block *xb) {
    (void)xb;
    return _mm256_add_epi32(avx2_q80_half(a, x0), avx2_q80_half(b, x1));
}

LK_Q41_256(avx2_q41, LK_AVX2, avx2_q41_sums)
LK_Q80_256(avx2_q80, LK_AVX2, avx2_q80_sums)

// MARK: AVX-VNNI (VEX-encoded `vpdpbusd` on 256 bits: Alder Lake and later client CPUs)

LK_INLINE LK_AVXVNNI __m256i avxvnni_q41_sums(__m256i lo, __m256i hi, __m256i xlo, __m256i xhi) {
    return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), lo, xlo), hi, xhi);
}

/// The bytes are w + 128 (unsigned): subtract 128 times the lane's code sum.
LK_INLINE LK_AVXVNNI __m256i avxvnni_q80_sums(__m256i a, __m256i b, __m256i x0, __m256i x1, const lorikeet_q8_block *xb) {
    const __m256i biased = _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), a, x0), b, x1);
    const __m256i codes = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)xb->lanes80));
    return _mm256_sub_epi32(biased, _mm256_slli_epi32(codes, 7));
}

LK_Q41_256(avxvnni_q41, LK_AVXVNNI, avxvnni_q41_sums)
LK_Q80_256(avxvnni_q80, LK_AVXVNNI, avxvnni_q80_sums)

// MARK: AVX-512 VNNI

LK_INLINE LK_AVX512 __m512 avx512_scales(const uint8_t *halves, float xd) {
    const __m128 s = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)halves)), _mm_set1_ps(xd));
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                                 _mm512_castps128_ps512(s));
}

LK_INLINE LK_AVX512 __m512i avx512_broadcast16(const int8_t *p) {
    return _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)p));
}

LK_INLINE LK_AVX512 void avx512_q41(const uint8_t *quad, int blocks, const lorikeet_q8_block *x, int x_stride, int n,
                                    float lanes[4][16], float mins[4][4]) {
    __m512 acc[4];
    __m128 macc[4];
    for (int t = 0; t < n; t++) {
        acc[t] = _mm512_setzero_ps();
        macc[t] = _mm_setzero_ps();
    }
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int b = 0; b < blocks; b++) {
        const uint8_t *block = quad + (size_t)b * Q41_QUAD_BLOCK;
        const __m512i u = _mm512_loadu_si512((const void *)(block + 16));
        const __m512i lo = _mm512_and_si512(u, low), hi = _mm512_and_si512(_mm512_srli_epi16(u, 4), low);
        const __m128 m = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(block + 8)));
        for (int t = 0; t < n; t++) {
            const lorikeet_q8_block *xb = x + (size_t)t * x_stride + b;
            const __m512i sums = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, avx512_broadcast16(xb->q41)),
                                                     hi, avx512_broadcast16(xb->q41 + 16));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_cvtepi32_ps(sums), avx512_scales(block, xb->d)));
            macc[t] = _mm_add_ps(macc[t], _mm_mul_ps(m, _mm_set1_ps(xb->sum)));
        }
    }
    for (int t = 0; t < n; t++) {
        _mm512_storeu_ps(lanes[t], acc[t]);
        _mm_storeu_ps(mins[t], macc[t]);
    }
}

LK_INLINE LK_AVX512 void avx512_q80(const uint8_t *quad, int blocks, const lorikeet_q8_block *x, int x_stride, int n,
                                    float lanes[4][16], float mins[4][4]) {
    __m512 acc[4];
    for (int t = 0; t < n; t++) acc[t] = _mm512_setzero_ps();
    for (int b = 0; b < blocks; b++) {
        const uint8_t *block = quad + (size_t)b * Q80_QUAD_BLOCK;
        const __m512i w0 = _mm512_loadu_si512((const void *)(block + 8));
        const __m512i w1 = _mm512_loadu_si512((const void *)(block + 72));
        for (int t = 0; t < n; t++) {
            const lorikeet_q8_block *xb = x + (size_t)t * x_stride + b;
            // The bytes are w + 128 (unsigned): subtract 128 times the lane's code sum.
            const __m512i biased = _mm512_dpbusd_epi32(
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, avx512_broadcast16(xb->q80)), w1, avx512_broadcast16(xb->q80 + 16));
            const __m512i correction = _mm512_slli_epi32(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)xb->lanes80)), 7);
            const __m512i sums = _mm512_sub_epi32(biased, correction);
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_cvtepi32_ps(sums), avx512_scales(block, xb->d)));
        }
    }
    for (int t = 0; t < n; t++) {
        _mm512_storeu_ps(lanes[t], acc[t]);
        _mm_storeu_ps(mins[t], _mm_setzero_ps());  // Q8_0 has no min term
    }
}

// MARK: entry points: one specialization per input count, so the loops over inputs unroll.

#define LK_ENTRY(NAME, ATTR, BODY, QUAD_BLOCK)                                                              \
    ATTR void NAME(const void *w, int blocks, int rows, int quad_begin, int quad_end,                        \
                   const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride) {           \
        if (inputs < 1) return;                                                                              \
        if (inputs > 4) inputs = 4;                                                                          \
        for (int q = quad_begin; q < quad_end; q++) {                                                        \
            const uint8_t *quad = (const uint8_t *)w + (size_t)q * blocks * QUAD_BLOCK;                      \
            float lanes[4][16], mins[4][4];                                                                  \
            switch (inputs) {                                                                                \
            case 1: BODY(quad, blocks, x, x_stride, 1, lanes, mins); break;                                  \
            case 2: BODY(quad, blocks, x, x_stride, 2, lanes, mins); break;                                  \
            case 3: BODY(quad, blocks, x, x_stride, 3, lanes, mins); break;                                  \
            default: BODY(quad, blocks, x, x_stride, 4, lanes, mins); break;                                 \
            }                                                                                                \
            for (int t = 0; t < inputs; t++) store_quad(lanes[t], mins[t], q, rows, y + (size_t)t * y_stride); \
        }                                                                                                    \
    }

LK_ENTRY(lorikeet_q41_q8_avx2, LK_AVX2, avx2_q41, Q41_QUAD_BLOCK)
LK_ENTRY(lorikeet_q80_q8_avx2, LK_AVX2, avx2_q80, Q80_QUAD_BLOCK)
LK_ENTRY(lorikeet_q41_q8_avxvnni, LK_AVXVNNI, avxvnni_q41, Q41_QUAD_BLOCK)
LK_ENTRY(lorikeet_q80_q8_avxvnni, LK_AVXVNNI, avxvnni_q80, Q80_QUAD_BLOCK)
LK_ENTRY(lorikeet_q41_q8_avx512vnni, LK_AVX512, avx512_q41, Q41_QUAD_BLOCK)
LK_ENTRY(lorikeet_q80_q8_avx512vnni, LK_AVX512, avx512_q80, Q80_QUAD_BLOCK)

#else
int lorikeet_q8_avx2_built(void) { return 0; }
int lorikeet_q8_avxvnni_built(void) { return 0; }
int lorikeet_q8_avx512vnni_built(void) { return 0; }
void lorikeet_q41_q8_avxvnni(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                             const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride) {
    lorikeet_q41_q8_generic(w, blocks, rows, quad_begin, quad_end, x, inputs, x_stride, y, y_stride);
}
void lorikeet_q80_q8_avxvnni(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                             const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride) {
    lorikeet_q80_q8_generic(w, blocks, rows, quad_begin, quad_end, x, inputs, x_stride, y, y_stride);
}
void lorikeet_q41_q8_avx2(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                          const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride) {
    lorikeet_q41_q8_generic(w, blocks, rows, quad_begin, quad_end, x, inputs, x_stride, y, y_stride);
}
void lorikeet_q80_q8_avx2(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                          const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride) {
    lorikeet_q80_q8_generic(w, blocks, rows, quad_begin, quad_end, x, inputs, x_stride, y, y_stride);
}
void lorikeet_q41_q8_avx512vnni(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                                const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride) {
    lorikeet_q41_q8_generic(w, blocks, rows, quad_begin, quad_end, x, inputs, x_stride, y, y_stride);
}
void lorikeet_q80_q8_avx512vnni(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                                const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride) {
    lorikeet_q80_q8_generic(w, blocks, rows, quad_begin, quad_end, x, inputs, x_stride, y, y_stride);
}
#endif
