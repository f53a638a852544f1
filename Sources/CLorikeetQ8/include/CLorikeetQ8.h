#ifndef LORIKEET_CLORIKEETQ8_H
#define LORIKEET_CLORIKEETQ8_H
// Matrix products of ggml-quantized weights (Q4_1, Q8_0, in LorikeetKernels' quad layout)
// with activations quantized to 8 bits per 32-column block, in integer dot products
// (llama.cpp's scheme). Four builds of the same arithmetic: plain C for any CPU, AVX2,
// AVX-VNNI (256-bit, VEX) and AVX-512 VNNI. All four return the same bits: every block's integer sums are exact, and
// the float steps (scale, accumulate, reduce) happen in the same order in each.
//
// The caller picks a build (LorikeetKernelDispatch asks the CPU); nothing here reads CPUID.
#include <stddef.h>
#include <stdint.h>

/// One block of 32 activations quantized to int8: `x[k] ≈ d * q[k]`.
///
/// `q41` holds the codes in the order of a Q4_1 quad block's nibbles (16 low, 16 high),
/// `q80` in the order of a Q8_0 quad block's bytes (two halves of 16), so one load of 16
/// codes lines up with one row's 16 weight bytes. `sum` is `d` times the sum of the codes
/// (Q4_1's min term: the sum of the dequantized inputs); `lanes80[i]` the sum of the codes that lane `i` of a Q8_0
/// product covers (the VNNI builds' correction for their unsigned weight bytes).
typedef struct {
    int8_t q41[32];
    int8_t q80[32];
    float d;
    float sum;
    int32_t lanes80[4];
    int32_t padding[2];
} lorikeet_q8_block;

/// Quantizes `columns` floats (a multiple of 32) into `columns / 32` blocks.
void lorikeet_q8_quantize(const float *x, int columns, lorikeet_q8_block *out);

/// `y[t * y_stride + row] = W[row] · x[t]` for `t < inputs` (1 to 4) and the rows of quads
/// `quad_begin ..< quad_end` below `rows`. `w` is a repacked Q4_1 (`_q41_`) or Q8_0 (`_q80_`)
/// matrix of `blocks` blocks per row; input `t`'s blocks start at `x + t * x_stride`.
/// `inputs` beyond 4 count as 4; below 1, nothing is written.
void lorikeet_q41_q8_generic(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                             const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride);
void lorikeet_q80_q8_generic(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                             const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride);
/// The AVX2 build (needs AVX2 and F16C).
void lorikeet_q41_q8_avx2(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                          const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride);
void lorikeet_q80_q8_avx2(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                          const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride);
/// The AVX-VNNI build (needs AVX2, F16C and AVX-VNNI).
void lorikeet_q41_q8_avxvnni(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                             const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride);
void lorikeet_q80_q8_avxvnni(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                             const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride);
/// The AVX-512 build (needs AVX-512 F, BW, VL and VNNI).
void lorikeet_q41_q8_avx512vnni(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                                const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride);
void lorikeet_q80_q8_avx512vnni(const void *w, int blocks, int rows, int quad_begin, int quad_end,
                                const lorikeet_q8_block *x, int inputs, int x_stride, float *y, int y_stride);

/// 1 when the AVX2 build is compiled in (x86-64); whether the CPU runs it is the caller's
/// question (CLorikeetSys).
int lorikeet_q8_avx2_built(void);
/// 1 when the AVX-VNNI build is compiled in.
int lorikeet_q8_avxvnni_built(void);
/// 1 when the AVX-512 VNNI build is compiled in.
int lorikeet_q8_avx512vnni_built(void);
#endif
