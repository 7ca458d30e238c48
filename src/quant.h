/* Tensor element types (GGML numbering, as stored in GGUF) and the CPU kernels that read them.
 *
 * Weights stay in their file format; matmul reads quantized blocks directly. Every kernel has a
 * scalar reference (MK_SIMD_SCALAR) that is the truth; the AVX2/FMA and AVX-512 tables are tested
 * against it (tests/unit/test_quant.c). The tables are chosen at run time from CPUID, explicitly:
 * callers pass the table, there is no global dispatch state.
 *
 * Block layouts follow the GGML on-disk formats (see the struct definitions in src/quant_blocks.h,
 * each with a static size assert). */
#ifndef MK_QUANT_H
#define MK_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum mk_type {
  MK_TYPE_F32 = 0,
  MK_TYPE_F16 = 1,
  MK_TYPE_Q4_0 = 2,
  MK_TYPE_Q4_1 = 3,
  MK_TYPE_Q5_0 = 6,
  MK_TYPE_Q5_1 = 7,
  MK_TYPE_Q8_0 = 8,
  MK_TYPE_Q8_1 = 9,
  MK_TYPE_Q2_K = 10,
  MK_TYPE_Q3_K = 11,
  MK_TYPE_Q4_K = 12,
  MK_TYPE_Q5_K = 13,
  MK_TYPE_Q6_K = 14,
  MK_TYPE_Q8_K = 15,
  MK_TYPE_BF16 = 30,
  MK_TYPE_COUNT = 40 /* upper bound of known ids; not a type */
} mk_type_t;

/* Type traits. For an unknown or unsupported id: name "unknown", block sizes 0. */
const char *mk_type_name(mk_type_t t);
bool mk_type_supported(mk_type_t t);     /* can be dequantized and multiplied here */
int64_t mk_type_block_elems(mk_type_t t); /* elements per block (1 for F32/F16/BF16) */
size_t mk_type_block_bytes(mk_type_t t);  /* bytes per block */
/* Bytes of a row of n elements; 0 if n is not a multiple of the block size or t unsupported. */
size_t mk_type_row_bytes(mk_type_t t, int64_t n);

/* Half-precision conversions (IEEE binary16 and bfloat16), exact round-to-nearest-even. */
float mk_f16_to_f32(uint16_t h);
uint16_t mk_f32_to_f16(float f);
float mk_bf16_to_f32(uint16_t h);
uint16_t mk_f32_to_bf16(float f);

typedef enum mk_simd { MK_SIMD_SCALAR = 0, MK_SIMD_AVX2 = 1, MK_SIMD_AVX512 = 2 } mk_simd_t;
const char *mk_simd_name(mk_simd_t s);
mk_simd_t mk_simd_best(void); /* the widest level this CPU supports */

/* Kernels of one SIMD level. */
typedef struct mk_cpu_kernels {
  mk_simd_t level;
  /* dst[0..n) = dequantized src (n a multiple of the block size) */
  void (*dequant_row)(mk_type_t t, const void *src, float *dst, int64_t n);
  float (*dot_f32)(const float *a, const float *b, int64_t n);
  float (*dot_f16)(const uint16_t *a, const float *b, int64_t n); /* a in binary16 */
  void (*axpy_f32)(float *y, float a, const float *x, int64_t n); /* y += a*x */
  void (*axpy_f16)(float *y, float a, const uint16_t *x, int64_t n);
  /* Private: per-type matmul row kernels, used by mk_matmul. */
  const void *impl;
} mk_cpu_kernels_t;

/* NULL if this CPU lacks the level. MK_SIMD_SCALAR always exists. */
const mk_cpu_kernels_t *mk_cpu_kernels_get(mk_simd_t level);

/* A weight matrix in file format: `rows` rows of `cols` elements, row r at data + r*row_bytes. */
typedef struct mk_qmat {
  mk_type_t type;
  const void *data;
  int64_t rows, cols;
  size_t row_bytes;
} mk_qmat_t;

/* Scratch bytes mk_matmul needs for n_tok activation rows of w->cols (e.g. activations
 * quantized to 8 bits for integer dot products). */
size_t mk_matmul_scratch_bytes(const mk_qmat_t *w, int64_t n_tok);

/* y[t][r] = sum_c W[r][c] * x[t][c]   for t < n_tok, r < w->rows.
 * x: (n_tok, w->cols) fp32, y: (n_tok, w->rows) fp32. Threads: OpenMP, over rows (and tokens
 * for large n_tok); call it from outside any parallel region. scratch: mk_matmul_scratch_bytes.
 *
 * Invariance (every SIMD level): y[t][r] depends only on row r's bytes and token t's values,
 * never on r's index, the number of rows or tokens in the call, nor the thread count. So a row
 * slice gives the same bits as the whole matrix, a token the same bits alone as in any batch.
 * tests/unit/test_quant.c checks it bit for bit. */
void mk_matmul(const mk_cpu_kernels_t *k, const mk_qmat_t *w, const float *x, int64_t n_tok,
               float *y, void *scratch);

/* Chunked product for row-parallel layers (the reduction order does not depend on how the
 * columns are split over ranks). Chunk c covers columns [c*chunk_cols, min((c+1)*chunk_cols,
 * cols)) and its partial sum P_c is computed by the row kernel as if the chunk were a matrix of
 * its own (its activations quantized from the chunk's first block on). Then:
 *   parts != NULL: parts[(c*n_tok + t)*rows + r] = P_c[t][r]      (n_chunks, n_tok, rows); y unused
 *   parts == NULL: y[t*rows + r] = ((P_0 + P_1) + P_2) + ...       fp32, in chunk order
 * A column slice that starts on a chunk boundary yields the same P_c bits as the whole matrix,
 * and mk_sum_parts over all P_c in order gives the same bits as the fused (parts == NULL) form.
 * chunk_cols: a positive multiple of the type's block size. */
int64_t mk_matmul_n_chunks(const mk_qmat_t *w, int64_t chunk_cols);
size_t mk_matmul_chunks_scratch_bytes(const mk_qmat_t *w, int64_t n_tok, int64_t chunk_cols);
void mk_matmul_chunks(const mk_cpu_kernels_t *k, const mk_qmat_t *w, const float *x, int64_t n_tok,
                      int64_t chunk_cols, float *parts, float *y, void *scratch);
/* y[i] = ((parts[idx[0]*n + i] + parts[idx[1]*n + i]) + ...) for i < n: the chunk-order sum. */
void mk_sum_parts(float *y, const float *parts, const int *idx, int n_idx, size_t n);

#endif
