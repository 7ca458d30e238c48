/* Private interface between the matmul driver (quant.c) and the kernel tables (quant_ref.c,
 * quant_avx2.c, quant_avx512.c). Not for use outside the quant module and its tests.
 *
 * Design note — the quantized-activation matmul:
 * For every quantized weight type, mk_matmul first quantizes each activation row (x, fp32) to
 * "XQ" form: blocks of 32 int8 with one fp32 scale per block, d = amax/127, q = rint(x*127/amax)
 * (round-half-even, so the scalar and SIMD quantizers agree bit for bit), plus s = d*sum(q) per
 * block and the integer sums of q over each 16-element half (for the K types whose sub-blocks
 * have 16 elements). The row kernels then take integer dot products per 32-block and combine
 * them in fp32 with the weight scales. The exact per-type formula (what every SIMD kernel must
 * reproduce up to fp32 summation order) is written next to the scalar kernels in quant_ref.c.
 * F32/F16/BF16 weights are multiplied with the fp32 activations directly (no quantization).
 *
 * XQ row layout (one token, mk_xq_row_bytes(cols) bytes, 64-byte aligned, nb = cols/32):
 *   int8_t  qs[cols rounded up to 128]   at 0; the padding is zero
 *   float   d[nb]         at mk_xq_off_d(cols)
 *   float   s[nb]         at mk_xq_off_d(cols) + 4*nb
 *   int16_t bsum[2*nb]    at mk_xq_off_d(cols) + 8*nb     (sum of qs over elements 16i..16i+15)
 * The order of qs is chosen per weight type by the table (xq_layout):
 *   MK_XQ_NATURAL: element i of the row at qs[i].
 *   MK_XQ_QUAD:    within each group of 4 blocks (128 elements, g = b/4, j = b%4), element i of
 *                  block b sits at qs[128g + 16j + i] for i < 16 and at qs[128g + 64 + 16j + i-16]
 *                  otherwise: a 64-byte load then lines up with the low (or high) nibbles of the
 *                  16 packed bytes of 4 consecutive Q4/Q5 blocks. Slots of absent blocks are 0.
 * d, s and bsum are the same in both layouts.
 */
#ifndef MK_QUANT_INTERNAL_H
#define MK_QUANT_INTERNAL_H

#include "src/quant.h"
#include "src/quant_blocks.h"

/* Tokens per call of a row kernel: the driver tiles n_tok so that the activations of one tile
 * stay in L2 while a thread's weight rows are streamed once per tile. */
#define MK_TOK_TILE 64

static inline size_t mk_align64(size_t n) { return (n + 63) & ~(size_t)63; }
enum { MK_XQ_NATURAL = 0, MK_XQ_QUAD = 1 };

static inline size_t mk_xq_off_d(int64_t cols) { return ((size_t)cols + 127) & ~(size_t)127; }
/* Position in qs of element i of the row. */
static inline size_t mk_xq_pos(int layout, int64_t i) {
  if (layout == MK_XQ_NATURAL) return (size_t)i;
  int64_t b = i / 32, e = i % 32;
  return (size_t)(128 * (b / 4) + (e < 16 ? 0 : 64) + 16 * (b % 4) + e % 16);
}
static inline size_t mk_xq_row_bytes(int64_t cols) {
  return mk_align64(mk_xq_off_d(cols) + (size_t)(cols / 32) * 12);
}

/* Pointers into one XQ row. */
typedef struct mk_xq_view {
  const int8_t *qs;    /* (cols) */
  const float *d;      /* (nb) */
  const float *s;      /* (nb) */
  const int16_t *bsum; /* (2*nb) */
} mk_xq_view_t;

static inline mk_xq_view_t mk_xq_view(const void *row, int64_t cols) {
  const char *b = (const char *)row;
  size_t od = mk_xq_off_d(cols);
  int64_t nb = cols / 32;
  mk_xq_view_t v = {(const int8_t *)b, (const float *)(b + od), (const float *)(b + od) + nb,
                    (const int16_t *)(b + od + 8 * (size_t)nb)};
  return v;
}

/* True when mk_matmul feeds type t with XQ activations (all block-quantized types). */
static inline bool mk_type_uses_xq(mk_type_t t) {
  return t != MK_TYPE_F32 && t != MK_TYPE_F16 && t != MK_TYPE_BF16;
}

/* Rows r0..r1 of w times n_tok (<= MK_TOK_TILE) activation rows:
 *   y[t*y_stride + r] = dot(W[r], act_t)   for r0 <= r < r1, t < n_tok.
 * act: n_tok rows act_stride bytes apart: fp32 x for F32/F16/BF16, XQ rows otherwise. */
typedef void (*mk_rows_fn)(const mk_qmat_t *w, int64_t r0, int64_t r1, const void *act,
                           size_t act_stride, int64_t n_tok, float *y, int64_t y_stride);

/* Chunked rows (mk_matmul_chunks) in one pass over each weight row: rows r0..r1, n_tok tokens;
 * chunk c of token t reads its own XQ row at act + t*tstride + c*cstride. Writes chunk c's
 * partial to parts[c*pstride + t*ys + r] (parts != NULL), else y[t*ys + r] = the partials added
 * in chunk order. Optional per type: mk_matmul_chunks falls back to the rows kernel per chunk. */
typedef void (*mk_chunks_fn)(const mk_qmat_t *w, int64_t r0, int64_t r1, const char *act, size_t cstride,
                             size_t tstride, int64_t n_tok, int64_t chunk_cols, float *parts, size_t pstride,
                             float *y, int64_t ys);

typedef struct mk_quant_impl {
  /* x (cols) fp32 -> one XQ row in the given layout; cols a multiple of 32. */
  void (*quantize_xq)(const float *x, int64_t cols, void *xq, int layout);
  mk_rows_fn rows[MK_TYPE_COUNT];        /* NULL: type not multipliable */
  mk_chunks_fn chunks[MK_TYPE_COUNT];    /* NULL: the rows kernel per chunk */
  uint8_t xq_layout[MK_TYPE_COUNT];      /* MK_XQ_* the row kernel of each type reads */
} mk_quant_impl_t;

/* Scalar reference (quant_ref.c). */
void mk_ref_dequant_row(mk_type_t t, const void *src, float *dst, int64_t n);
void mk_ref_quantize_xq(const float *x, int64_t cols, void *xq, int layout);
extern const mk_quant_impl_t mk_ref_impl;
extern const mk_cpu_kernels_t mk_kernels_scalar;

/* SIMD tables. The AVX-512 file provides two variants: with AVX512-VNNI (vpdpbusd) and without;
 * mk_cpu_kernels_get picks by CPUID, tests may ask for either (the VNNI one only if the CPU has it). */
extern const mk_cpu_kernels_t mk_kernels_avx2;
extern const mk_cpu_kernels_t mk_kernels_avx512;
extern const mk_cpu_kernels_t mk_kernels_avx512_vnni;
/* AVX2 row kernels, reused by the AVX-512 tables for the types they do not specialise. */
#define MK_ROWS_PARAMS                                                                        \
  const mk_qmat_t *w, int64_t r0, int64_t r1, const void *act, size_t act_stride,             \
      int64_t n_tok, float *y, int64_t y_stride
void mk_avx2_rows_f32(MK_ROWS_PARAMS);
void mk_avx2_rows_f16(MK_ROWS_PARAMS);
void mk_avx2_rows_bf16(MK_ROWS_PARAMS);
void mk_avx2_rows_q4_0(MK_ROWS_PARAMS);
void mk_avx2_rows_q4_1(MK_ROWS_PARAMS);
void mk_avx2_rows_q5_0(MK_ROWS_PARAMS);
void mk_avx2_rows_q5_1(MK_ROWS_PARAMS);
void mk_avx2_rows_q8_0(MK_ROWS_PARAMS);
void mk_avx2_rows_q2_k(MK_ROWS_PARAMS);
void mk_avx2_rows_q3_k(MK_ROWS_PARAMS);
void mk_avx2_rows_q4_k(MK_ROWS_PARAMS);
void mk_avx2_rows_q5_k(MK_ROWS_PARAMS);
void mk_avx2_rows_q6_k(MK_ROWS_PARAMS);
void mk_avx2_dequant_row(mk_type_t t, const void *src, float *dst, int64_t n);
bool mk_cpu_has_f16c(void); /* CPUID leaf 1 (clang 14 has no "f16c" for __builtin_cpu_supports) */
bool mk_cpu_has_avx512_vnni(void);

#endif
