/* Element types and CPU kernels (src/quant.h).
 *
 * Truth chain: the `gguf` Python package dequantizes golden blocks (tests/golden/quant/, made by
 * make_quant_golden.py) -> the scalar dequant_row must match it bit for bit -> every SIMD
 * level's dequant_row must match the scalar one bit for bit -> matmul of every level is compared
 * with (1) the scalar table, which computes the same quantized-activation math (normalized error
 * ||y - ref|| / ||ref|| < 1e-5: only fp32 summation order differs), and (2) the fp64 product of
 * the scalar-dequantized weights with the fp32 activations (8-bit activations: NMSE < 1e-4;
 * F32/F16/BF16 weights: normalized error < 1e-5). Half conversions are checked exhaustively. */
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
#include <immintrin.h>

#include "src/quant.h"
#include "src/quant_blocks.h"
#include "src/quant_internal.h"
#include "tests/testutil/testutil.h"

static const mk_type_t k_mm_types[] = {MK_TYPE_F32,  MK_TYPE_F16,  MK_TYPE_BF16, MK_TYPE_Q4_0,
                                       MK_TYPE_Q4_1, MK_TYPE_Q5_0, MK_TYPE_Q5_1, MK_TYPE_Q8_0,
                                       MK_TYPE_Q2_K, MK_TYPE_Q3_K, MK_TYPE_Q4_K, MK_TYPE_Q5_K,
                                       MK_TYPE_Q6_K};
#define N_MM_TYPES (sizeof k_mm_types / sizeof k_mm_types[0])

/* ---- kernel tables under test ------------------------------------------------------------ */

typedef struct {
  const char *name;
  const mk_cpu_kernels_t *k;
} level_t;

/* Every table this CPU can run, scalar first; prints the ones skipped. */
static int levels_available(level_t *out) {
  int n = 0;
  out[n++] = (level_t){"scalar", mk_cpu_kernels_get(MK_SIMD_SCALAR)};
  const mk_cpu_kernels_t *a2 = mk_cpu_kernels_get(MK_SIMD_AVX2);
  if (a2)
    out[n++] = (level_t){"avx2", a2};
  else
    printf("  [skipped] avx2: this CPU lacks AVX2/FMA/F16C\n");
  if (mk_cpu_kernels_get(MK_SIMD_AVX512)) {
    out[n++] = (level_t){"avx512bw", &mk_kernels_avx512};
    if (mk_cpu_has_avx512_vnni())
      out[n++] = (level_t){"avx512vnni", &mk_kernels_avx512_vnni};
    else
      printf("  [skipped] avx512vnni: this CPU lacks AVX512-VNNI\n");
  } else {
    printf("  [skipped] avx512: this CPU lacks AVX-512 F/BW/VL/DQ\n");
  }
  return n;
}

/* ---- random data ------------------------------------------------------------------------- */

static uint16_t rand_half_scale(uint64_t *s, float lo, float hi) {
  float u = (mk_test_rand_f32(s) + 1.0f) * 0.5f;
  return mk_f32_to_f16(lo + (hi - lo) * u);
}

/* A row of `cols` random elements of type t; fp16 scales are finite, in sane ranges. */
static void rand_row(mk_type_t t, int64_t cols, uint8_t *dst, uint64_t *s) {
  size_t bytes = mk_type_row_bytes(t, cols);
  for (size_t i = 0; i < bytes; i++) dst[i] = (uint8_t)mk_test_rand_u64(s);
  int64_t nb = cols / mk_type_block_elems(t);
  size_t bb = mk_type_block_bytes(t);
  for (int64_t b = 0; b < nb; b++) {
    uint8_t *p = dst + (size_t)b * bb;
    uint16_t d = rand_half_scale(s, -0.02f, 0.02f), m = rand_half_scale(s, -0.1f, 0.1f);
    switch (t) {
      case MK_TYPE_F32: {
        float f = mk_test_rand_f32(s);
        memcpy(p, &f, 4);
        break;
      }
      case MK_TYPE_F16: {
        uint16_t h = mk_f32_to_f16(mk_test_rand_f32(s));
        memcpy(p, &h, 2);
        break;
      }
      case MK_TYPE_BF16: {
        uint16_t h = mk_f32_to_bf16(mk_test_rand_f32(s));
        memcpy(p, &h, 2);
        break;
      }
      case MK_TYPE_Q4_0: case MK_TYPE_Q5_0: case MK_TYPE_Q8_0:
        memcpy(p, &d, 2);
        break;
      case MK_TYPE_Q4_1: case MK_TYPE_Q5_1:
        memcpy(p, &d, 2), memcpy(p + 2, &m, 2);
        break;
      case MK_TYPE_Q4_K: case MK_TYPE_Q5_K: {
        uint16_t dm = rand_half_scale(s, 0.0f, 0.002f);
        memcpy(p, &d, 2), memcpy(p + 2, &dm, 2);
        break;
      }
      case MK_TYPE_Q2_K: {
        uint16_t dm = rand_half_scale(s, 0.0f, 0.01f);
        memcpy(p + bb - 4, &d, 2), memcpy(p + bb - 2, &dm, 2);
        break;
      }
      case MK_TYPE_Q3_K: case MK_TYPE_Q6_K: {
        uint16_t dk = rand_half_scale(s, -0.001f, 0.001f);
        memcpy(p + bb - 2, &dk, 2);
        break;
      }
      default: break;
    }
  }
}

static double norm_err(const float *y, const float *ref, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double e = (double)y[i] - (double)ref[i];
    num += e * e;
    den += (double)ref[i] * ref[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* ---- traits ------------------------------------------------------------------------------ */

static void test_type_traits(void **state) {
  (void)state;
  struct { mk_type_t t; const char *name; int64_t be; size_t bb; bool sup; } want[] = {
      {MK_TYPE_F32, "F32", 1, 4, true},       {MK_TYPE_F16, "F16", 1, 2, true},
      {MK_TYPE_BF16, "BF16", 1, 2, true},     {MK_TYPE_Q4_0, "Q4_0", 32, 18, true},
      {MK_TYPE_Q4_1, "Q4_1", 32, 20, true},   {MK_TYPE_Q5_0, "Q5_0", 32, 22, true},
      {MK_TYPE_Q5_1, "Q5_1", 32, 24, true},   {MK_TYPE_Q8_0, "Q8_0", 32, 34, true},
      {MK_TYPE_Q8_1, "Q8_1", 32, 36, false},  {MK_TYPE_Q2_K, "Q2_K", 256, 84, true},
      {MK_TYPE_Q3_K, "Q3_K", 256, 110, true}, {MK_TYPE_Q4_K, "Q4_K", 256, 144, true},
      {MK_TYPE_Q5_K, "Q5_K", 256, 176, true}, {MK_TYPE_Q6_K, "Q6_K", 256, 210, true},
      {MK_TYPE_Q8_K, "Q8_K", 256, 292, false},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    assert_string_equal(mk_type_name(want[i].t), want[i].name);
    assert_int_equal(mk_type_block_elems(want[i].t), want[i].be);
    assert_int_equal(mk_type_block_bytes(want[i].t), want[i].bb);
    assert_int_equal(mk_type_supported(want[i].t), want[i].sup);
    assert_int_equal(mk_type_row_bytes(want[i].t, 4 * want[i].be), 4 * want[i].bb);
    if (want[i].be > 1) assert_int_equal(mk_type_row_bytes(want[i].t, want[i].be + 1), 0);
  }
  for (int t = 16; t < 30; t++) { /* IQ types and removed ids: unknown here */
    assert_string_equal(mk_type_name((mk_type_t)t), "unknown");
    assert_false(mk_type_supported((mk_type_t)t));
    assert_int_equal(mk_type_block_bytes((mk_type_t)t), 0);
    assert_int_equal(mk_type_row_bytes((mk_type_t)t, 256), 0);
  }
  assert_string_equal(mk_type_name((mk_type_t)4), "unknown");
  assert_string_equal(mk_type_name((mk_type_t)-1), "unknown");
  assert_string_equal(mk_type_name((mk_type_t)99), "unknown");
  assert_false(mk_type_supported(MK_TYPE_COUNT));

  /* SIMD selection: the best level exists and is what get() returns for it */
  mk_simd_t best = mk_simd_best();
  assert_non_null(mk_cpu_kernels_get(best));
  assert_int_equal(mk_cpu_kernels_get(best)->level, best);
  assert_non_null(mk_cpu_kernels_get(MK_SIMD_SCALAR));
  if (best < MK_SIMD_AVX512) assert_null(mk_cpu_kernels_get(MK_SIMD_AVX512));
  printf("  best SIMD level: %s (avx512 vnni: %s)\n", mk_simd_name(best),
         mk_cpu_has_avx512_vnni() ? "yes" : "no");

  mk_qmat_t w = {MK_TYPE_Q4_1, NULL, 10, 576, mk_type_row_bytes(MK_TYPE_Q4_1, 576)};
  assert_true(mk_matmul_scratch_bytes(&w, 3) >= 3 * (576 + 18 * 12));
  w.type = MK_TYPE_F32;
  assert_int_equal(mk_matmul_scratch_bytes(&w, 3), 0);
}

/* ---- half conversions -------------------------------------------------------------------- */

/* Independent reference: value of a binary16 pattern by arithmetic (fp64 is exact here). */
static double half_value(uint16_t h) {
  int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
  return s ? -v : v;
}

static void test_f16_exhaustive(void **state) {
  (void)state;
  int bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = mk_f16_to_f32((uint16_t)h);
    double want = half_value((uint16_t)h);
    if (isnan(want)) {
      if (!isnan(f) || (signbit(f) != 0) != (int)(h >> 15)) bad++;
      uint16_t back = mk_f32_to_f16(f);
      if ((back & 0x7C00) != 0x7C00 || !(back & 0x3FF) || (back & 0x8000) != (h & 0x8000)) bad++;
      continue;
    }
    if ((double)f != want || (signbit(f) != 0) != (int)(h >> 15)) {
      if (bad++ < 5) printf("f16->f32 %04x: got %.9g want %.9g\n", h, f, want);
    }
    if (mk_f32_to_f16(f) != h) { /* exact round trip */
      if (bad++ < 5) printf("f32->f16 round trip %04x -> %04x\n", h, mk_f32_to_f16(f));
    }
    /* midpoint to the next pattern of larger magnitude: ties go to the even mantissa */
    uint16_t up = (uint16_t)(h + 1);
    if ((h & 0x7FFF) < 0x7BFF) {
      double mid = (want + half_value(up)) / 2; /* exact in fp32 (12 significant bits) */
      uint16_t even = (h & 1) ? up : (uint16_t)h;
      float fm = (float)mid;
      if (mk_f32_to_f16(fm) != even) {
        if (bad++ < 5) printf("midpoint %04x/%04x -> %04x\n", h, up, mk_f32_to_f16(fm));
      }
      float below = nextafterf(fm, (float)want), above = nextafterf(fm, (float)half_value(up));
      if (mk_f32_to_f16(below) != h || mk_f32_to_f16(above) != up) {
        if (bad++ < 5) printf("near-midpoint %04x/%04x\n", h, up);
      }
    }
  }
  /* overflow threshold: 65520 is the midpoint between 65504 and 2^16 -> rounds to Inf */
  assert_int_equal(mk_f32_to_f16(65520.0f), 0x7C00);
  assert_int_equal(mk_f32_to_f16(nextafterf(65520.0f, 0.0f)), 0x7BFF);
  assert_int_equal(mk_f32_to_f16(-1e30f), 0xFC00);
  assert_int_equal(mk_f32_to_f16(INFINITY), 0x7C00);
  assert_int_equal(mk_f32_to_f16(1e-30f), 0x0000);
  assert_int_equal(mk_f32_to_f16(-1e-30f), 0x8000);
  assert_int_equal(mk_f32_to_f16(ldexpf(1.0f, -25)), 0x0000);              /* tie -> even 0 */
  assert_int_equal(mk_f32_to_f16(nextafterf(ldexpf(1.0f, -25), 1.0f)), 1); /* just above */
  assert_int_equal(mk_f32_to_f16(ldexpf(3.0f, -25)), 2);                   /* 1.5 ulp -> 2 */
  assert_int_equal(bad, 0);
}

__attribute__((target("f16c"))) static int f16c_compare(uint64_t *s) {
  int bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float hw = _cvtsh_ss((unsigned short)h), sw = mk_f16_to_f32((uint16_t)h);
    if (memcmp(&hw, &sw, 4) != 0 && bad++ < 5) printf("f16->f32 %04x: hw/sw differ\n", h);
  }
  for (int i = 0; i < 2000000; i++) {
    uint32_t u = (uint32_t)mk_test_rand_u64(s);
    if (i & 1) u = (u & 0x807FFFFF) | ((uint32_t)(96 + (i >> 1) % 48) << 23); /* near half range */
    float f;
    memcpy(&f, &u, 4);
    uint16_t hw = (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT), sw = mk_f32_to_f16(f);
    if (hw != sw && bad++ < 5) printf("f32->f16 %08x: hw %04x sw %04x\n", u, hw, sw);
  }
  return bad;
}

static void test_f16_vs_hardware(void **state) {
  (void)state;
  if (!mk_cpu_has_f16c()) {
    printf("  [skipped] no F16C on this CPU\n");
    return;
  }
  uint64_t s = 7;
  assert_int_equal(f16c_compare(&s), 0);
}

/* bf16 value by arithmetic; the all-ones-exponent pattern with zero mantissa counts as 2^128 so
 * that round-to-nearest into Inf falls out of the distance comparison. */
static double bf16_value(uint16_t p) {
  int s = p >> 15, e = (p >> 7) & 255, m = p & 127;
  double v = e == 0 ? ldexp(m, -133) : ldexp(128 + m, e - 134);
  return s ? -v : v;
}

static void test_bf16(void **state) {
  (void)state;
  int bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = mk_bf16_to_f32((uint16_t)h);
    uint32_t u;
    memcpy(&u, &f, 4);
    if (u != h << 16) bad++;
  }
  uint64_t s = 11;
  for (int i = 0; i < 2000000; i++) {
    uint32_t u = (uint32_t)mk_test_rand_u64(&s);
    if (i % 3 == 0) u = (u & 0xFFFF0000u) | 0x8000u; /* exact ties */
    float f;
    memcpy(&f, &u, 4);
    uint16_t got = mk_f32_to_bf16(f);
    if (isnan(f)) {
      if (!isnan(mk_bf16_to_f32(got)) || (got >> 15) != (u >> 31)) bad++;
      continue;
    }
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1); /* toward larger magnitude */
    double dl = fabs((double)f - bf16_value(lo)), dh = fabs(bf16_value(hi) - (double)f);
    uint16_t want = dl < dh ? lo : dh < dl ? hi : ((lo & 1) ? hi : lo);
    if (got != want && bad++ < 5) printf("f32->bf16 %08x: got %04x want %04x\n", u, got, want);
  }
  assert_int_equal(mk_f32_to_bf16(INFINITY), 0x7F80);
  assert_int_equal(mk_f32_to_bf16(-INFINITY), 0xFF80);
  assert_int_equal(mk_f32_to_bf16(3.0e38f), 0x7F62);
  assert_int_equal(bad, 0);
}

/* ---- golden dequantization (gguf Python package) ----------------------------------------- */

static void test_golden_dequant(void **state) {
  (void)state;
  level_t lv[4];
  int nl = levels_available(lv);
  const mk_type_t types[] = {MK_TYPE_F32,  MK_TYPE_F16,  MK_TYPE_BF16, MK_TYPE_Q4_0, MK_TYPE_Q4_1,
                             MK_TYPE_Q5_0, MK_TYPE_Q5_1, MK_TYPE_Q8_0, MK_TYPE_Q2_K, MK_TYPE_Q3_K,
                             MK_TYPE_Q4_K, MK_TYPE_Q5_K, MK_TYPE_Q6_K};
  for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
    mk_type_t t = types[ti];
    char rel[128];
    snprintf(rel, sizeof rel, "tests/golden/quant/%s.bin", mk_type_name(t));
    size_t len = 0;
    char *buf = mk_test_read_file(mk_test_source_path(rel), &len);
    if (!buf) fail_msg("cannot read golden file %s", rel);
    assert_true(len >= 20);
    assert_memory_equal(buf, "MKQG", 4);
    uint32_t hdr[4];
    memcpy(hdr, buf + 4, 16);
    assert_int_equal(hdr[0], 1);
    assert_int_equal(hdr[1], (uint32_t)t);
    uint32_t n = hdr[2], nbytes = hdr[3];
    assert_int_equal(len, 20 + nbytes + 4 * (size_t)n);
    assert_int_equal(mk_type_row_bytes(t, n), nbytes);
    const uint8_t *raw = (const uint8_t *)buf + 20;
    float *want = malloc(4 * (size_t)n), *got = malloc(4 * (size_t)n);
    memcpy(want, raw + nbytes, 4 * (size_t)n);
    for (int l = 0; l < nl; l++) {
      memset(got, 0xAB, 4 * (size_t)n);
      lv[l].k->dequant_row(t, raw, got, n);
      int bad = 0;
      for (uint32_t i = 0; i < n; i++) {
        bool same = memcmp(&got[i], &want[i], 4) == 0 || (isnan(got[i]) && isnan(want[i]));
        if (!same && bad++ < 5)
          printf("%s %s: element %u got %.9g want %.9g\n", lv[l].name, mk_type_name(t), i, got[i],
                 want[i]);
      }
      if (bad) fail_msg("%s dequant_row(%s) differs from gguf in %d of %u values (exact match required)",
                        lv[l].name, mk_type_name(t), bad, n);
    }
    free(want);
    free(got);
    free(buf);
  }
}

/* ---- SIMD dequant and activation quantization vs scalar ---------------------------------- */

static void test_simd_dequant_random(void **state) {
  (void)state;
  level_t lv[4];
  int nl = levels_available(lv);
  uint64_t s = 3;
  const int64_t n = 2048 + 0; /* 8 super-blocks, 64 blocks */
  uint8_t *raw = malloc(mk_type_row_bytes(MK_TYPE_F32, n));
  float *ref = malloc(4 * n), *got = malloc(4 * n);
  for (size_t ti = 0; ti < N_MM_TYPES; ti++) {
    mk_type_t t = k_mm_types[ti];
    rand_row(t, n, raw, &s);
    mk_cpu_kernels_get(MK_SIMD_SCALAR)->dequant_row(t, raw, ref, n);
    for (int l = 1; l < nl; l++) {
      lv[l].k->dequant_row(t, raw, got, n);
      if (memcmp(ref, got, 4 * n) != 0)
        fail_msg("%s dequant_row(%s) is not bit-identical to scalar", lv[l].name, mk_type_name(t));
    }
  }
  /* XQ activation quantization: bit-identical across levels */
  const int64_t cols = 1536;
  float *x = malloc(4 * cols);
  for (int64_t i = 0; i < cols; i++) x[i] = mk_test_rand_f32(&s) * (i % 97 == 0 ? 40.0f : 1.0f);
  for (int i = 32; i < 64; i++) x[i] = 0.0f; /* an all-zero block */
  size_t xb = mk_xq_row_bytes(cols);
  void *a = aligned_alloc(64, xb), *b = aligned_alloc(64, xb), *a4 = aligned_alloc(64, xb);
  memset(a, 0x55, xb), memset(a4, 0x55, xb);
  mk_ref_quantize_xq(x, cols, a, MK_XQ_NATURAL);
  mk_ref_quantize_xq(x, cols, a4, MK_XQ_QUAD);
  /* the reference itself: d = amax/127, |q| <= 127, q*d close to x; QUAD is a permutation */
  mk_xq_view_t v = mk_xq_view(a, cols), v4 = mk_xq_view(a4, cols);
  for (int64_t blk = 0; blk < cols / 32; blk++) {
    float amax = 0;
    int sum = 0;
    for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[32 * blk + i]));
    assert_true(v.d[blk] == amax / 127.0f);
    for (int i = 0; i < 32; i++) {
      int q = v.qs[32 * blk + i];
      sum += q;
      assert_true(fabsf(q * v.d[blk] - x[32 * blk + i]) <= 0.5001f * v.d[blk]);
      assert_int_equal(q, v4.qs[mk_xq_pos(MK_XQ_QUAD, 32 * blk + i)]);
    }
    assert_int_equal(v.bsum[2 * blk] + v.bsum[2 * blk + 1], sum);
    assert_true(v.s[blk] == v.d[blk] * (float)sum);
  }
  assert_memory_equal((char *)a + mk_xq_off_d(cols), (char *)a4 + mk_xq_off_d(cols), xb - mk_xq_off_d(cols));
  for (int l = 1; l < nl; l++) {
    for (int layout = 0; layout < 2; layout++) {
      /* cols with a partial 4-block group: padding must come out zero */
      const int64_t cs[] = {cols, 96, 32, 160};
      for (int ci = 0; ci < 4; ci++) {
        size_t xbc = mk_xq_row_bytes(cs[ci]);
        memset(a, 0x55, xbc), memset(b, 0x77, xbc);
        mk_ref_quantize_xq(x, cs[ci], a, layout);
        ((const mk_quant_impl_t *)lv[l].k->impl)->quantize_xq(x, cs[ci], b, layout);
        size_t used = mk_xq_off_d(cs[ci]) + 12 * (size_t)(cs[ci] / 32);
        if (memcmp(a, b, used) != 0)
          fail_msg("%s quantize_xq (layout %d, cols %ld) is not bit-identical to scalar", lv[l].name,
                   layout, (long)cs[ci]);
      }
    }
  }
  free(a4);
  free(a), free(b), free(x), free(raw), free(ref), free(got);
}

/* ---- matmul ------------------------------------------------------------------------------ */

typedef struct {
  int64_t rows, cols, n_tok;
} shape_t;

/* y (n_tok, rows) = x (n_tok, cols) . dequant(W)^T in fp64, and per output a hard bound on the
 * error that 8-bit activations may add: each x_i is replaced by q_i*d_b with |x_i - q_i*d_b| <=
 * d_b/2 (d_b = amax of its 32-block / 127), so |y - y_fp64| <= sum_i |w_i| * d_b/2, plus fp32
 * rounding slack 1e-5 * sum_i |w_i x_i|. */
static void float_ref(const mk_qmat_t *w, const float *x, int64_t n_tok, float *y, double *bound) {
  float *row = malloc(4 * w->cols);
  for (int64_t r = 0; r < w->rows; r++) {
    mk_ref_dequant_row(w->type, (const uint8_t *)w->data + r * w->row_bytes, row, w->cols);
    for (int64_t t = 0; t < n_tok; t++) {
      const float *xt = x + t * w->cols;
      double acc = 0, qerr = 0, mag = 0;
      for (int64_t c = 0; c < w->cols; c++) {
        acc += (double)row[c] * xt[c];
        mag += fabs((double)row[c] * xt[c]);
      }
      for (int64_t b = 0; b + 32 <= w->cols; b += 32) {
        double amax = 0, wsum = 0;
        for (int i = 0; i < 32; i++) {
          amax = fmax(amax, fabs(xt[b + i]));
          wsum += fabs(row[b + i]);
        }
        qerr += wsum * (amax / 127.0) * 0.5;
      }
      y[t * w->rows + r] = (float)acc;
      bound[t * w->rows + r] = (mk_type_uses_xq(w->type) ? qerr * 1.0001 : 0.0) + 1e-5 * mag;
    }
  }
  free(row);
}

static void check_matmul(mk_type_t t, shape_t sh, const level_t *lv, int nl, uint64_t *s) {
  size_t rb = mk_type_row_bytes(t, sh.cols);
  assert_true(rb > 0);
  uint8_t *wd = malloc(rb * sh.rows);
  for (int64_t r = 0; r < sh.rows; r++) rand_row(t, sh.cols, wd + r * rb, s);
  mk_qmat_t w = {t, wd, sh.rows, sh.cols, rb};
  float *x = malloc(4 * sh.n_tok * sh.cols);
  for (int64_t i = 0; i < sh.n_tok * sh.cols; i++)
    x[i] = mk_test_rand_f32(s) + (i % 7 == 0 ? 0.5f : 0.0f); /* non-zero mean, too */
  int64_t ny = sh.n_tok * sh.rows;
  float *yf = malloc(4 * ny), *yref = malloc(4 * ny), *y = malloc(4 * ny);
  double *bound = malloc(8 * ny);
  size_t sb = mk_matmul_scratch_bytes(&w, sh.n_tok);
  void *scratch = sb ? malloc(sb) : NULL;
  float_ref(&w, x, sh.n_tok, yf, bound);
  bool xq = mk_type_uses_xq(t);
  /* statistical bound, only meaningful over enough outputs */
  double tol_float = xq ? (ny >= 32 ? 1e-2 /* sqrt(NMSE 1e-4) */ : 1e30) : 1e-5;
  for (int l = 0; l < nl; l++) {
    for (int64_t i = 0; i < ny; i++) y[i] = NAN;
    mk_matmul(lv[l].k, &w, x, sh.n_tok, y, scratch);
    double ef = norm_err(y, yf, ny);
    if (!(ef < tol_float))
      fail_msg("%s %s rows=%ld cols=%ld n_tok=%ld: vs fp64 dequant.x normalized error %.3g "
               "(NMSE %.3g), bound %.3g",
               lv[l].name, mk_type_name(t), (long)sh.rows, (long)sh.cols, (long)sh.n_tok, ef,
               ef * ef, tol_float);
    for (int64_t i = 0; i < ny; i++)
      if (!(fabs((double)y[i] - yf[i]) <= bound[i]))
        fail_msg("%s %s rows=%ld cols=%ld n_tok=%ld: output %ld = %.9g, fp64 %.9g, beyond the "
                 "activation-quantization bound %.3g",
                 lv[l].name, mk_type_name(t), (long)sh.rows, (long)sh.cols, (long)sh.n_tok,
                 (long)i, y[i], yf[i], bound[i]);
    if (l == 0) {
      memcpy(yref, y, 4 * ny);
      continue;
    }
    double e = norm_err(y, yref, ny);
    if (!(e < 1e-5))
      fail_msg("%s %s rows=%ld cols=%ld n_tok=%ld: vs scalar (same quantized math) normalized "
               "error %.3g, bound 1e-5",
               lv[l].name, mk_type_name(t), (long)sh.rows, (long)sh.cols, (long)sh.n_tok, e);
  }
  free(scratch), free(wd), free(x), free(yf), free(yref), free(y), free(bound);
}

static void test_matmul_all_levels(void **state) {
  (void)state;
  level_t lv[4];
  int nl = levels_available(lv);
  uint64_t s = 12345;
  /* cols: odd block counts (tails of the two-block AVX-512 loop), rows not multiples of 4 or
   * of the per-thread chunk, n_tok 1, 3, 17 and one beyond the 64-token tile */
  const shape_t small[] = {{1, 32, 1},  {37, 96, 1},  {37, 96, 3},  {70, 160, 17},
                           {16, 576, 1}, {9, 576, 5},  {5, 64, 70},  {129, 224, 2}};
  const shape_t kshapes[] = {{1, 256, 1}, {37, 512, 1}, {19, 768, 3}, {70, 256, 17}, {5, 256, 70}};
  for (size_t ti = 0; ti < N_MM_TYPES; ti++) {
    mk_type_t t = k_mm_types[ti];
    bool k = mk_type_block_elems(t) == 256;
    const shape_t *sh = k ? kshapes : small;
    size_t ns = k ? sizeof kshapes / sizeof kshapes[0] : sizeof small / sizeof small[0];
    for (size_t i = 0; i < ns; i++) check_matmul(t, sh[i], lv, nl, &s);
    if (t == MK_TYPE_F32 || t == MK_TYPE_F16 || t == MK_TYPE_BF16) /* cols not a multiple of 8 */
      check_matmul(t, (shape_t){13, 77, 3}, lv, nl, &s);
  }
}

/* Thread counts that split rows unevenly give the same result as one thread. */
static void test_matmul_threads(void **state) {
  (void)state;
  const mk_cpu_kernels_t *k = mk_cpu_kernels_get(mk_simd_best());
  uint64_t s = 99;
  const mk_type_t types[] = {MK_TYPE_Q4_1, MK_TYPE_Q8_0, MK_TYPE_Q6_K};
  for (size_t ti = 0; ti < 6; ti++) {
    mk_type_t t = types[ti % 3];
    int64_t rows = 203, cols = 512, n_tok = ti < 3 ? 9 : 1; /* prefill and decode paths */
    size_t rb = mk_type_row_bytes(t, cols);
    uint8_t *wd = malloc(rb * rows);
    for (int64_t r = 0; r < rows; r++) rand_row(t, cols, wd + r * rb, &s);
    mk_qmat_t w = {t, wd, rows, cols, rb};
    float *x = malloc(4 * n_tok * cols), *y1 = malloc(4 * n_tok * rows), *y3 = malloc(4 * n_tok * rows);
    for (int64_t i = 0; i < n_tok * cols; i++) x[i] = mk_test_rand_f32(&s);
    void *scratch = malloc(mk_matmul_scratch_bytes(&w, n_tok));
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    mk_matmul(k, &w, x, n_tok, y1, scratch);
    omp_set_num_threads(3);
    mk_matmul(k, &w, x, n_tok, y3, scratch);
    omp_set_num_threads(saved);
    /* same kernels, same per-row arithmetic: identical results */
    assert_memory_equal(y1, y3, 4 * n_tok * rows);
    free(wd), free(x), free(y1), free(y3), free(scratch);
  }
}

/* Unsupported types and rows that are not whole blocks give NaN, not garbage or a crash. */
static void test_matmul_misuse(void **state) {
  (void)state;
  const mk_cpu_kernels_t *k = mk_cpu_kernels_get(mk_simd_best());
  uint8_t wd[64 * 40] = {0};
  float x[2 * 80] = {0}, y[2 * 3];
  mk_qmat_t w = {MK_TYPE_Q8_K, wd, 3, 256, 292};
  mk_matmul(k, &w, x, 2, y, NULL);
  for (int i = 0; i < 6; i++) assert_true(isnan(y[i]));
  mk_qmat_t w2 = {MK_TYPE_Q4_1, wd, 3, 80, 60};
  char scratch[4096];
  mk_matmul(k, &w2, x, 2, y, scratch);
  for (int i = 0; i < 6; i++) assert_true(isnan(y[i]));
}

/* ---- vector kernels ---------------------------------------------------------------------- */

static void test_dot_axpy(void **state) {
  (void)state;
  level_t lv[4];
  int nl = levels_available(lv);
  uint64_t s = 5;
  const int64_t ns[] = {0, 1, 7, 8, 15, 16, 31, 33, 64, 100, 1000};
  for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
    int64_t n = ns[ni];
    float *a = malloc(4 * n + 4), *b = malloc(4 * n + 4), *y0 = malloc(4 * n + 4),
          *yr = malloc(4 * n + 4), *y = malloc(4 * n + 4);
    uint16_t *h = malloc(2 * n + 2);
    double mag = 0, magh = 0;
    for (int64_t i = 0; i < n; i++) {
      a[i] = mk_test_rand_f32(&s), b[i] = mk_test_rand_f32(&s), y0[i] = mk_test_rand_f32(&s);
      h[i] = mk_f32_to_f16(mk_test_rand_f32(&s));
      mag += fabs((double)a[i] * b[i]);
      magh += fabs((double)mk_f16_to_f32(h[i]) * b[i]);
    }
    const mk_cpu_kernels_t *sc = lv[0].k;
    float d_ref = sc->dot_f32(a, b, n), dh_ref = sc->dot_f16(h, b, n);
    double exact = 0, exacth = 0;
    for (int64_t i = 0; i < n; i++) {
      exact += (double)a[i] * b[i];
      exacth += (double)mk_f16_to_f32(h[i]) * b[i];
    }
    assert_true(fabs(d_ref - exact) <= 1e-6 * mag + 1e-30);
    assert_true(fabs(dh_ref - exacth) <= 1e-6 * magh + 1e-30);
    const float alpha = 0.37f;
    for (int l = 0; l < nl; l++) {
      float d = lv[l].k->dot_f32(a, b, n), dh = lv[l].k->dot_f16(h, b, n);
      if (!(fabs(d - exact) <= 1e-5 * mag + 1e-30))
        fail_msg("%s dot_f32 n=%ld: %.9g vs %.9g (bound 1e-5 * sum|a*b| = %.3g)", lv[l].name,
                 (long)n, d, exact, 1e-5 * mag);
      if (!(fabs(dh - exacth) <= 1e-5 * magh + 1e-30))
        fail_msg("%s dot_f16 n=%ld: %.9g vs %.9g", lv[l].name, (long)n, dh, exacth);
      for (int f16 = 0; f16 < 2; f16++) {
        memcpy(yr, y0, 4 * n), memcpy(y, y0, 4 * n);
        if (f16) {
          sc->axpy_f16(yr, alpha, h, n);
          lv[l].k->axpy_f16(y, alpha, h, n);
        } else {
          sc->axpy_f32(yr, alpha, a, n);
          lv[l].k->axpy_f32(y, alpha, a, n);
        }
        for (int64_t i = 0; i < n; i++) {
          double xi = f16 ? mk_f16_to_f32(h[i]) : a[i];
          double want = (double)y0[i] + (double)alpha * xi;
          double bound = 1e-6 * (fabs(y0[i]) + fabs(alpha * xi)) + 1e-30;
          if (!(fabs(y[i] - want) <= bound) || !(fabs(yr[i] - want) <= bound))
            fail_msg("%s axpy_%s n=%ld i=%ld: %.9g (scalar %.9g) want %.9g, bound 1e-6*(|y|+|a*x|)",
                     lv[l].name, f16 ? "f16" : "f32", (long)n, (long)i, y[i], yr[i], want);
        }
      }
    }
    free(a), free(b), free(y0), free(yr), free(y), free(h);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_type_traits),       cmocka_unit_test(test_f16_exhaustive),
      cmocka_unit_test(test_f16_vs_hardware),   cmocka_unit_test(test_bf16),
      cmocka_unit_test(test_golden_dequant),    cmocka_unit_test(test_simd_dequant_random),
      cmocka_unit_test(test_matmul_all_levels), cmocka_unit_test(test_matmul_threads),
      cmocka_unit_test(test_matmul_misuse),
      cmocka_unit_test(test_dot_axpy),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
