/* Layout and batch invariance of the matmul kernels (src/quant.h), bit for bit, on every SIMD
 * level this CPU has (scalar, AVX2, AVX-512 BW and VNNI) and every multipliable type:
 *
 * - batch: a token's output row is the same alone (n = 1), in a batch of 2..5 (every position in
 *   the micro-kernel token tiles) and in a batch past the 64-token driver tile;
 * - row slices: rows [r0, r1) of W give the same bits as the same rows of the whole product,
 *   whatever r0 (the AVX-512 4-row decode groups and the per-thread row ranges move with it);
 * - threads: 1, 2 and 3 OpenMP threads give the same bits;
 * - chunks (mk_matmul_chunks, the row-parallel layers): the fused chunk-order sum equals the
 *   chunk partials added by mk_sum_parts; a column slice that starts on a chunk boundary (a rank's
 *   share) gives the same partials as the whole matrix; the chunked form obeys the batch rule too.
 * Against plain mk_matmul the chunked result differs only in fp32 summation order (checked
 * loosely). The engine-level consequence (every T gives the same logits) is in tests/mpi. */
#include <math.h>
#include <omp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "src/quant.h"
#include "src/quant_internal.h"
#include "tests/testutil/testutil.h"

static const mk_type_t k_types[] = {MK_TYPE_F32,  MK_TYPE_F16,  MK_TYPE_BF16, MK_TYPE_Q4_0, MK_TYPE_Q4_1,
                                    MK_TYPE_Q5_0, MK_TYPE_Q5_1, MK_TYPE_Q8_0, MK_TYPE_Q2_K, MK_TYPE_Q3_K,
                                    MK_TYPE_Q4_K, MK_TYPE_Q5_K, MK_TYPE_Q6_K};
#define N_TYPES (sizeof k_types / sizeof k_types[0])

typedef struct {
  const char *name;
  const mk_cpu_kernels_t *k;
} level_t;

static int levels(level_t *out) {
  int n = 0;
  out[n++] = (level_t){"scalar", mk_cpu_kernels_get(MK_SIMD_SCALAR)};
  if (mk_cpu_kernels_get(MK_SIMD_AVX2)) out[n++] = (level_t){"avx2", &mk_kernels_avx2};
  if (mk_cpu_kernels_get(MK_SIMD_AVX512)) {
    out[n++] = (level_t){"avx512bw", &mk_kernels_avx512};
    if (mk_cpu_has_avx512_vnni()) out[n++] = (level_t){"avx512vnni", &mk_kernels_avx512_vnni};
  }
  for (int i = 0; i < n; i++) printf("  level %s\n", out[i].name);
  if (n < 4) printf("  [skipped] %d of 4 kernel tables: this CPU lacks them\n", 4 - n);
  return n;
}

/* Random bytes with finite, small fp16 scales at every block's scale positions. */
static void rand_matrix(mk_type_t t, int64_t rows, int64_t cols, uint8_t *dst, uint64_t *s) {
  size_t rb = mk_type_row_bytes(t, cols), bb = mk_type_block_bytes(t);
  for (size_t i = 0; i < rb * (size_t)rows; i++) dst[i] = (uint8_t)mk_test_rand_u64(s);
  int64_t be = mk_type_block_elems(t);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t b = 0; b < cols / be; b++) {
      uint8_t *p = dst + (size_t)r * rb + (size_t)b * bb;
      uint16_t h = mk_f32_to_f16(0.01f * mk_test_rand_f32(s)), hm = mk_f32_to_f16(0.001f * (1.0f + mk_test_rand_f32(s)));
      switch (t) {
        case MK_TYPE_F32: {
          float f = mk_test_rand_f32(s);
          memcpy(p, &f, 4);
          break;
        }
        case MK_TYPE_F16: memcpy(p, &h, 2); break;
        case MK_TYPE_BF16: {
          uint16_t v = mk_f32_to_bf16(mk_test_rand_f32(s));
          memcpy(p, &v, 2);
          break;
        }
        case MK_TYPE_Q4_0: case MK_TYPE_Q5_0: case MK_TYPE_Q8_0: memcpy(p, &h, 2); break;
        case MK_TYPE_Q4_1: case MK_TYPE_Q5_1: memcpy(p, &h, 2), memcpy(p + 2, &hm, 2); break;
        case MK_TYPE_Q4_K: case MK_TYPE_Q5_K: memcpy(p, &h, 2), memcpy(p + 2, &hm, 2); break;
        case MK_TYPE_Q2_K: memcpy(p + bb - 4, &h, 2), memcpy(p + bb - 2, &hm, 2); break;
        default: memcpy(p + bb - 2, &hm, 2); break; /* Q3_K, Q6_K */
      }
    }
}

typedef struct {
  mk_type_t t;
  int64_t rows, cols, chunk;
  uint8_t *wd;
  mk_qmat_t w;
  float *x; /* (NT, cols) */
} prob_t;

#define NT 70 /* past the 64-token driver tile */

static prob_t make(mk_type_t t, uint64_t *s) {
  prob_t p;
  bool k = mk_type_block_elems(t) == 256;
  p.t = t;
  p.rows = 37;               /* not a multiple of 4 */
  p.cols = k ? 1280 : 352;   /* 5 chunks of 256 / 5.5 chunks of 64 (last one short) */
  p.chunk = k ? 256 : 64;
  size_t rb = mk_type_row_bytes(t, p.cols);
  p.wd = malloc(rb * (size_t)p.rows);
  rand_matrix(t, p.rows, p.cols, p.wd, s);
  p.w = (mk_qmat_t){t, p.wd, p.rows, p.cols, rb};
  p.x = malloc(sizeof(float) * NT * (size_t)p.cols);
  for (int64_t i = 0; i < NT * p.cols; i++) p.x[i] = mk_test_rand_f32(s) + (i % 5 == 0 ? 0.3f : 0.0f);
  return p;
}

static void drop(prob_t *p) {
  free(p->wd);
  free(p->x);
}

static void *scratch_for(const mk_qmat_t *w, int64_t n, int64_t chunk) {
  size_t a = mk_matmul_scratch_bytes(w, n), b = mk_matmul_chunks_scratch_bytes(w, n, chunk);
  return malloc((a > b ? a : b) + 64);
}

/* y (n, rows) of tokens [t0, t0+n) through mk_matmul, or the fused chunked form if chunk > 0. */
static void run(const mk_cpu_kernels_t *k, const mk_qmat_t *w, const float *x, int64_t n, int64_t chunk, float *y) {
  void *sc = scratch_for(w, n, chunk > 0 ? chunk : 32);
  if (chunk > 0)
    mk_matmul_chunks(k, w, x, n, chunk, NULL, y, sc);
  else
    mk_matmul(k, w, x, n, y, sc);
  free(sc);
}

static void expect_rows_equal(const float *a, const float *b, size_t n, const char *what, const level_t *lv,
                              mk_type_t t) {
  if (memcmp(a, b, n * sizeof(float)) == 0) return;
  for (size_t i = 0; i < n; i++)
    if (memcmp(&a[i], &b[i], sizeof(float)) != 0)
      fail_msg("%s %s: %s differs at %zu: %.9g vs %.9g", lv->name, mk_type_name(t), what, i, a[i], b[i]);
}

/* Batch, row-slice and thread invariance of one product form (chunk 0: mk_matmul). */
static void check_form(const level_t *lv, prob_t *p, int64_t chunk) {
  const int64_t R = p->rows, C = p->cols;
  float *all = malloc(sizeof(float) * NT * R), *y = malloc(sizeof(float) * NT * R);
  int saved = omp_get_max_threads();
  omp_set_num_threads(2);
  run(lv->k, &p->w, p->x, NT, chunk, all);
  char what[96];
  /* every token alone, and batches 2..5 starting at every tile position */
  for (int64_t t = 0; t < NT; t++) {
    run(lv->k, &p->w, p->x + t * C, 1, chunk, y);
    snprintf(what, sizeof what, "%s token %lld alone vs in a batch of %d", chunk ? "chunked" : "matmul",
             (long long)t, NT);
    expect_rows_equal(y, all + t * R, (size_t)R, what, lv, p->t);
  }
  for (int64_t n = 2; n <= 5; n++)
    for (int64_t t0 = 0; t0 + n <= 9; t0++) {
      run(lv->k, &p->w, p->x + t0 * C, n, chunk, y);
      snprintf(what, sizeof what, "%s batch of %lld at token %lld", chunk ? "chunked" : "matmul", (long long)n,
               (long long)t0);
      expect_rows_equal(y, all + t0 * R, (size_t)(n * R), what, lv, p->t);
    }
  /* row slices [r0, r1): the same bits as those rows of the whole product */
  const int64_t cuts[][2] = {{1, 37}, {3, 20}, {5, 6}, {2, 35}};
  for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
    int64_t r0 = cuts[c][0], r1 = cuts[c][1];
    mk_qmat_t ws = p->w;
    ws.data = p->wd + (size_t)r0 * p->w.row_bytes;
    ws.rows = r1 - r0;
    for (int64_t n = 1; n <= 7; n += 6) {
      run(lv->k, &ws, p->x, n, chunk, y);
      for (int64_t t = 0; t < n; t++) {
        snprintf(what, sizeof what, "%s rows [%lld, %lld) of token %lld", chunk ? "chunked" : "matmul",
                 (long long)r0, (long long)r1, (long long)t);
        expect_rows_equal(y + t * (r1 - r0), all + t * R + r0, (size_t)(r1 - r0), what, lv, p->t);
      }
    }
  }
  /* thread counts */
  for (int th = 1; th <= 3; th += 2) {
    omp_set_num_threads(th);
    run(lv->k, &p->w, p->x, NT, chunk, y);
    snprintf(what, sizeof what, "%s with %d threads vs 2", chunk ? "chunked" : "matmul", th);
    expect_rows_equal(y, all, (size_t)(NT * R), what, lv, p->t);
  }
  omp_set_num_threads(saved);
  free(all);
  free(y);
}

static void test_matmul_invariance(void **state) {
  (void)state;
  level_t lv[4];
  int nl = levels(lv);
  uint64_t s = 2024;
  for (size_t ti = 0; ti < N_TYPES; ti++) {
    prob_t p = make(k_types[ti], &s);
    for (int l = 0; l < nl; l++) check_form(&lv[l], &p, 0);
    drop(&p);
  }
}

static void test_chunked_invariance(void **state) {
  (void)state;
  level_t lv[4];
  int nl = levels(lv);
  uint64_t s = 77;
  for (size_t ti = 0; ti < N_TYPES; ti++) {
    prob_t p = make(k_types[ti], &s);
    for (int l = 0; l < nl; l++) check_form(&lv[l], &p, p.chunk);
    drop(&p);
  }
}

/* Partials: fused == mk_sum_parts(partials); a rank's column share (starting on a chunk boundary)
 * gives the same partials; the chunked sum is the plain product up to fp32 summation order. */
static void test_chunk_partials(void **state) {
  (void)state;
  level_t lv[4];
  int nl = levels(lv);
  uint64_t s = 4242;
  for (size_t ti = 0; ti < N_TYPES; ti++) {
    prob_t p = make(k_types[ti], &s);
    const int64_t R = p.rows, C = p.cols, n = 9, nc = mk_matmul_n_chunks(&p.w, p.chunk);
    assert_int_equal(nc, (C + p.chunk - 1) / p.chunk);
    float *parts = malloc(sizeof(float) * (size_t)(nc * n * R)), *fused = malloc(sizeof(float) * n * R);
    float *summed = malloc(sizeof(float) * n * R), *plain = malloc(sizeof(float) * n * R);
    float *sp = malloc(sizeof(float) * (size_t)(nc * n * R));
    float *xs = malloc(sizeof(float) * n * C);
    int *idx = malloc(sizeof(int) * (size_t)nc);
    for (int64_t c = 0; c < nc; c++) idx[c] = (int)c;
    for (int l = 0; l < nl; l++) {
      void *sc = scratch_for(&p.w, n, p.chunk);
      mk_matmul_chunks(lv[l].k, &p.w, p.x, n, p.chunk, parts, NULL, sc);
      mk_matmul_chunks(lv[l].k, &p.w, p.x, n, p.chunk, NULL, fused, sc);
      mk_matmul(lv[l].k, &p.w, p.x, n, plain, sc);
      free(sc);
      mk_sum_parts(summed, parts, idx, (int)nc, (size_t)(n * R));
      expect_rows_equal(summed, fused, (size_t)(n * R), "mk_sum_parts(partials) vs the fused chunk sum", &lv[l], p.t);
      for (int64_t i = 0; i < n * R; i++)
        if (!(fabs(plain[i] - fused[i]) <= 1e-4 * (1.0 + fabs(plain[i]))))
          fail_msg("%s %s: chunked %.9g vs plain %.9g at %lld", lv[l].name, mk_type_name(p.t), fused[i], plain[i],
                   (long long)i);
      /* a share of chunks [c0, c1) as a rank holds it: columns from chunk c0 on */
      const int64_t shares[][2] = {{1, 3}, {2, nc}, {0, 1}, {nc - 1, nc}};
      for (size_t k = 0; k < sizeof shares / sizeof shares[0]; k++) {
        int64_t c0 = shares[k][0], c1 = shares[k][1];
        int64_t col0 = c0 * p.chunk, col1 = c1 * p.chunk < C ? c1 * p.chunk : C;
        mk_qmat_t ws = p.w;
        int64_t be = mk_type_block_elems(p.t);
        ws.data = p.wd + (size_t)(col0 / be) * mk_type_block_bytes(p.t);
        ws.cols = col1 - col0;
        for (int64_t t = 0; t < n; t++) memcpy(xs + t * ws.cols, p.x + t * C + col0, sizeof(float) * (size_t)ws.cols);
        void *sc2 = scratch_for(&ws, n, p.chunk);
        mk_matmul_chunks(lv[l].k, &ws, xs, n, p.chunk, sp, NULL, sc2);
        free(sc2);
        char what[96];
        snprintf(what, sizeof what, "partials of the chunk share [%lld, %lld) vs the whole matrix", (long long)c0,
                 (long long)c1);
        expect_rows_equal(sp, parts + c0 * n * R, (size_t)((c1 - c0) * n * R), what, &lv[l], p.t);
      }
    }
    free(parts), free(fused), free(summed), free(plain), free(sp), free(xs), free(idx);
    drop(&p);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_matmul_invariance),
      cmocka_unit_test(test_chunked_invariance),
      cmocka_unit_test(test_chunk_partials),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
