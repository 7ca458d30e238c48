/* Per-op parity: every op of the CUDA backend against the CPU backend (the reference) on the same
 * inputs, by normalized error (sum (cuda-cpu)^2 / sum cpu^2) with the bound stated per test.
 * Skips (exit 77) where no CUDA device is present. Built a second time as test_cuda_emu_ops against
 * the CPU emulator of the kernels (tests/gpu/emu, MK_GPU_EMU), which runs without a GPU.
 *
 * Bounds and why:
 *   dequantized weights   within 1 bf16 ulp of the CPU's fp32 value (the device keeps bf16)
 *   matmul, float types   1e-5   bf16 rounding of the weights (2^-9 relative, ~1e-6 NMSE)
 *   matmul, quant types   3e-4   plus the CPU's 8-bit quantization of the activations
 *   embed                 1e-5   bf16 table rows
 *   rmsnorm, add, bias,
 *   rope, swiglu, qsum    1e-10  same fp32/fp64 formulas; last-bit differences only (expf, FMA)
 *   attention             1e-8   both caches fp16; fp32 sums in another order
 *   cache metadata        exact: pos[] and n_used of every head after every call, all policies */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kvcache/kvcache.h"
#include "src/backend.h"
#include "src/quant.h"
#include "tests/gpu/gpu_test.h"
#include "tests/testutil/testutil.h"

typedef struct fixture {
  mk_backend_t cpu, gpu;
} fixture_t;

static fixture_t g_fx; /* test-process state, set up once in main */
static mk_error_t op_err; /* the ops' error slot (ops return 0 here; a failure fails the assert) */

static float *rand_vec(size_t n, float scale, uint64_t *st) {
  float *v = malloc(sizeof(float) * (n ? n : 1));
  for (size_t i = 0; i < n; i++) v[i] = mk_test_rand_f32(st) * scale;
  return v;
}

static void *to_dev(const void *host, size_t bytes) {
  mk_backend_t *g = &g_fx.gpu;
  mk_error_t err;
  void *d = g->ops->alloc(g, bytes);
  assert_non_null(d);
  if (g->ops->upload(g, d, host, bytes, &err) != 0) fail_msg("upload: %s", err.msg);
  return d;
}

static void from_dev(void *host, const void *dev, size_t bytes) {
  mk_backend_t *g = &g_fx.gpu;
  mk_error_t err;
  if (g->ops->download(g, host, dev, bytes, &err) != 0) fail_msg("download: %s", err.msg);
}

static void gsync(void) {
  mk_error_t err;
  if (g_fx.gpu.ops->sync(&g_fx.gpu, &err) != 0) fail_msg("sync: %s", err.msg);
}

/* ---- weights ----------------------------------------------------------------------------- */

/* Offsets of the binary16 scale fields in one block of t (the other bytes are random). */
static int scale_fields(mk_type_t t, int off[2]) {
  switch (t) {
    case MK_TYPE_Q4_0: case MK_TYPE_Q5_0: case MK_TYPE_Q8_0: off[0] = 0; return 1;
    case MK_TYPE_Q4_1: case MK_TYPE_Q5_1: case MK_TYPE_Q4_K: case MK_TYPE_Q5_K: off[0] = 0; off[1] = 2; return 2;
    case MK_TYPE_Q2_K: off[0] = 80; off[1] = 82; return 2;
    case MK_TYPE_Q3_K: off[0] = 108; return 1;
    case MK_TYPE_Q6_K: off[0] = 208; return 1;
    default: return 0;
  }
}

/* A random (rows, cols) matrix of type t in file format (valid scales, random quants). */
static uint8_t *rand_matrix(mk_type_t t, int64_t rows, int64_t cols, uint64_t *st, mk_qmat_t *m) {
  size_t rb = mk_type_row_bytes(t, cols), total = rb * (size_t)rows;
  uint8_t *p = malloc(total);
  if (t == MK_TYPE_F32) {
    for (size_t i = 0; i < total / 4; i++) ((float *)p)[i] = mk_test_rand_f32(st);
  } else if (t == MK_TYPE_F16) {
    for (size_t i = 0; i < total / 2; i++) ((uint16_t *)p)[i] = mk_f32_to_f16(mk_test_rand_f32(st));
  } else if (t == MK_TYPE_BF16) {
    for (size_t i = 0; i < total / 2; i++) ((uint16_t *)p)[i] = mk_f32_to_bf16(mk_test_rand_f32(st));
  } else {
    for (size_t i = 0; i < total; i++) p[i] = (uint8_t)mk_test_rand_u64(st);
    int off[2], nf = scale_fields(t, off);
    size_t bb = mk_type_block_bytes(t), nb = total / bb;
    for (size_t b = 0; b < nb; b++)
      for (int k = 0; k < nf; k++) {
        float v = (0.002f + 0.02f * fabsf(mk_test_rand_f32(st))) * (k == 0 ? 1.f : (mk_test_rand_f32(st) < 0 ? -1.f : 1.f));
        uint16_t h = mk_f32_to_f16(v);
        memcpy(p + b * bb + off[k], &h, 2);
      }
  }
  m->type = t;
  m->data = p;
  m->rows = rows;
  m->cols = cols;
  m->row_bytes = rb;
  return p;
}

static const mk_type_t k_types[] = {MK_TYPE_F32,  MK_TYPE_F16,  MK_TYPE_BF16, MK_TYPE_Q4_0, MK_TYPE_Q4_1,
                                    MK_TYPE_Q5_0, MK_TYPE_Q5_1, MK_TYPE_Q8_0, MK_TYPE_Q2_K, MK_TYPE_Q3_K,
                                    MK_TYPE_Q4_K, MK_TYPE_Q5_K, MK_TYPE_Q6_K};

static void test_weight_dequant(void **state) {
  const mk_cpu_kernels_t *k = mk_cpu_kernels_get(MK_SIMD_SCALAR);
  uint64_t st = 11;
  int failures = 0;
  for (size_t ti = 0; ti < sizeof k_types / sizeof k_types[0]; ti++) {
    mk_type_t t = k_types[ti];
    const int64_t rows = 7, cols = 512;
    mk_qmat_t m;
    uint8_t *raw = rand_matrix(t, rows, cols, &st, &m);
    mk_bweight_t w;
    mk_error_t err;
    if (g_fx.gpu.ops->weight_prepare(&g_fx.gpu, &m, &w, &err) != 0) fail_msg("%s: %s", mk_type_name(t), err.msg);
    uint16_t *got = malloc(sizeof(uint16_t) * rows * cols);
    float *ref = malloc(sizeof(float) * cols);
    from_dev(got, w.dev, sizeof(uint16_t) * rows * cols);
    int bad = 0;
    for (int64_t r = 0; r < rows; r++) {
      k->dequant_row(t, raw + r * m.row_bytes, ref, cols);
      for (int64_t c = 0; c < cols; c++) {
        uint16_t want = mk_f32_to_bf16(ref[c]), have = got[r * cols + c];
        int diff = (int)want - (int)have;
        if (diff < -1 || diff > 1) { /* more than one bf16 ulp (same sign) apart */
          if (bad < 4)
            printf("%s [%lld,%lld]: cuda %.8g cpu %.8g\n", mk_type_name(t), (long long)r, (long long)c,
                   mk_bf16_to_f32(have), ref[c]);
          bad++;
        }
      }
    }
    if (bad) printf("%s: %d of %lld dequantized values off by more than 1 bf16 ulp\n", mk_type_name(t), bad,
                    (long long)(rows * cols));
    failures += bad != 0;
    g_fx.gpu.ops->weight_release(&g_fx.gpu, &w);
    free(got);
    free(ref);
    free(raw);
  }
  assert_int_equal(failures, 0);
}

static void test_matmul(void **state) {
  uint64_t st = 12;
  int failures = 0;
  const int ns[] = {1, 2, 3, 4, 5, 17};
  for (size_t ti = 0; ti < sizeof k_types / sizeof k_types[0] + 2; ti++) {
    /* the last two: float matrices whose rows are not a multiple of 8 (the scalar GEMV) */
    mk_type_t t = ti < sizeof k_types / sizeof k_types[0] ? k_types[ti] : (ti % 2 ? MK_TYPE_F16 : MK_TYPE_F32);
    const int64_t rows = 97, cols = ti < sizeof k_types / sizeof k_types[0] ? 768 : 100;
    mk_qmat_t m;
    uint8_t *raw = rand_matrix(t, rows, cols, &st, &m);
    mk_bweight_t wc, wg;
    mk_error_t err;
    assert_int_equal(g_fx.cpu.ops->weight_prepare(&g_fx.cpu, &m, &wc, &err), 0);
    if (g_fx.gpu.ops->weight_prepare(&g_fx.gpu, &m, &wg, &err) != 0) fail_msg("%s: %s", mk_type_name(t), err.msg);
    const bool quant = mk_type_block_elems(t) > 1;
    const double bound = quant ? 3e-4 : 1e-5;
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
      int n = ns[ni];
      float *x = rand_vec((size_t)n * cols, 1.f, &st);
      float *yc = calloc((size_t)n * rows, sizeof(float)), *yg = calloc((size_t)n * rows, sizeof(float));
      assert_int_equal(0, g_fx.cpu.ops->matmul(&g_fx.cpu, &wc, x, n, yc, &op_err));
      float *dx = to_dev(x, sizeof(float) * n * cols), *dy = g_fx.gpu.ops->alloc(&g_fx.gpu, sizeof(float) * n * rows);
      assert_int_equal(0, g_fx.gpu.ops->matmul(&g_fx.gpu, &wg, dx, n, dy, &op_err));
      from_dev(yg, dy, sizeof(float) * n * rows);
      char what[64];
      snprintf(what, sizeof what, "matmul %s %lldx%lld n=%d", mk_type_name(t), (long long)rows, (long long)cols, n);
      failures += !mk_gpu_close(what, yg, yc, (size_t)n * rows, bound);
      g_fx.gpu.ops->dealloc(&g_fx.gpu, dx);
      g_fx.gpu.ops->dealloc(&g_fx.gpu, dy);
      free(x);
      free(yc);
      free(yg);
    }
    g_fx.gpu.ops->weight_release(&g_fx.gpu, &wg);
    g_fx.cpu.ops->weight_release(&g_fx.cpu, &wc);
    free(raw);
  }
  assert_int_equal(failures, 0);
}

static void test_embed(void **state) {
  uint64_t st = 13;
  mk_qmat_t m;
  uint8_t *raw = rand_matrix(MK_TYPE_Q8_0, 50, 576, &st, &m);
  mk_bweight_t wc, wg;
  mk_error_t err;
  assert_int_equal(g_fx.cpu.ops->weight_prepare(&g_fx.cpu, &m, &wc, &err), 0);
  assert_int_equal(g_fx.gpu.ops->weight_prepare(&g_fx.gpu, &m, &wg, &err), 0);
  const int32_t ids[] = {3, 0, 49, 7, 3};
  const int n = 5;
  float *xc = calloc((size_t)n * 576, sizeof(float)), *xg = calloc((size_t)n * 576, sizeof(float));
  assert_int_equal(0, g_fx.cpu.ops->embed(&g_fx.cpu, &wc, ids, n, xc, &op_err));
  float *dx = g_fx.gpu.ops->alloc(&g_fx.gpu, sizeof(float) * n * 576);
  assert_int_equal(0, g_fx.gpu.ops->embed(&g_fx.gpu, &wg, ids, n, dx, &op_err));
  from_dev(xg, dx, sizeof(float) * n * 576);
  assert_true(mk_gpu_close("embed Q8_0", xg, xc, (size_t)n * 576, 1e-5));
  g_fx.gpu.ops->dealloc(&g_fx.gpu, dx);
  g_fx.gpu.ops->weight_release(&g_fx.gpu, &wg);
  free(xc);
  free(xg);
  free(raw);
}

static void test_rmsnorm_add_bias_swiglu(void **state) {
  uint64_t st = 14;
  const int dims[] = {576, 4096, 100};
  for (int di = 0; di < 3; di++) {
    int n = 3, dim = dims[di];
    size_t N = (size_t)n * dim;
    float *x = rand_vec(N, 3.f, &st), *w = rand_vec((size_t)dim, 1.f, &st), *y = rand_vec(N, 1.f, &st);
    float *yc = malloc(sizeof(float) * N), *yg = malloc(sizeof(float) * N);
    float *dx = to_dev(x, sizeof(float) * N), *dw = to_dev(w, sizeof(float) * dim), *dy = to_dev(y, sizeof(float) * N);
    /* rmsnorm */
    assert_int_equal(0, g_fx.cpu.ops->rmsnorm(&g_fx.cpu, yc, x, w, n, dim, 1e-5f, &op_err));
    assert_int_equal(0, g_fx.gpu.ops->rmsnorm(&g_fx.gpu, dy, dx, dw, n, dim, 1e-5f, &op_err));
    from_dev(yg, dy, sizeof(float) * N);
    assert_true(mk_gpu_close("rmsnorm", yg, yc, N, 1e-10));
    /* rmsnorm in place (y == x) */
    memcpy(yc, x, sizeof(float) * N);
    assert_int_equal(0, g_fx.cpu.ops->rmsnorm(&g_fx.cpu, yc, yc, w, n, dim, 1e-6f, &op_err));
    float *dx2 = to_dev(x, sizeof(float) * N);
    assert_int_equal(0, g_fx.gpu.ops->rmsnorm(&g_fx.gpu, dx2, dx2, dw, n, dim, 1e-6f, &op_err));
    from_dev(yg, dx2, sizeof(float) * N);
    assert_true(mk_gpu_close("rmsnorm in place", yg, yc, N, 1e-10));
    /* add_bias: y += w per row */
    memcpy(yc, y, sizeof(float) * N);
    assert_int_equal(0, g_fx.cpu.ops->add_bias(&g_fx.cpu, yc, w, n, dim, &op_err));
    float *dy2 = to_dev(y, sizeof(float) * N);
    assert_int_equal(0, g_fx.gpu.ops->add_bias(&g_fx.gpu, dy2, dw, n, dim, &op_err));
    from_dev(yg, dy2, sizeof(float) * N);
    assert_true(mk_gpu_close("add_bias", yg, yc, N, 1e-12));
    /* add */
    memcpy(yc, y, sizeof(float) * N);
    assert_int_equal(0, g_fx.cpu.ops->add(&g_fx.cpu, yc, x, N, &op_err));
    g_fx.gpu.ops->upload(&g_fx.gpu, dy2, y, sizeof(float) * N, NULL);
    assert_int_equal(0, g_fx.gpu.ops->add(&g_fx.gpu, dy2, dx, N, &op_err));
    from_dev(yg, dy2, sizeof(float) * N);
    assert_true(mk_gpu_close("add", yg, yc, N, 1e-12));
    /* swiglu, in place on the gate as the engine calls it */
    memcpy(yc, x, sizeof(float) * N);
    assert_int_equal(0, g_fx.cpu.ops->swiglu(&g_fx.cpu, yc, yc, y, N, &op_err));
    g_fx.gpu.ops->upload(&g_fx.gpu, dx2, x, sizeof(float) * N, NULL);
    g_fx.gpu.ops->upload(&g_fx.gpu, dy2, y, sizeof(float) * N, NULL);
    assert_int_equal(0, g_fx.gpu.ops->swiglu(&g_fx.gpu, dx2, dx2, dy2, N, &op_err));
    from_dev(yg, dx2, sizeof(float) * N);
    assert_true(mk_gpu_close("swiglu", yg, yc, N, 1e-10));
    float *bufs[] = {dx, dw, dy, dx2, dy2};
    for (int i = 0; i < 5; i++) g_fx.gpu.ops->dealloc(&g_fx.gpu, bufs[i]);
    free(x);
    free(w);
    free(y);
    free(yc);
    free(yg);
  }
}

static void test_rope(void **state) {
  uint64_t st = 15;
  struct {
    int n_head, head_dim, rope_dim;
    bool neox, ff;
    float theta;
  } cases[] = {{9, 64, 64, false, false, 1e5f}, {4, 128, 128, true, false, 1e6f},
               {8, 128, 128, false, true, 5e5f}, {3, 128, 64, true, true, 1e4f}};
  for (int ci = 0; ci < 4; ci++) {
    int n_tok = 5, nh = cases[ci].n_head, hd = cases[ci].head_dim;
    size_t N = (size_t)n_tok * nh * hd;
    float *x = rand_vec(N, 2.f, &st), *yc = malloc(sizeof(float) * N), *yg = malloc(sizeof(float) * N);
    int32_t pos[5] = {0, 1, 17, 4095, 40000};
    float ffh[128];
    for (int i = 0; i < cases[ci].rope_dim / 2; i++) ffh[i] = 1.f + 7.f * fabsf(mk_test_rand_f32(&st));
    float *dff = cases[ci].ff ? to_dev(ffh, sizeof(float) * cases[ci].rope_dim / 2) : NULL;
    memcpy(yc, x, sizeof(float) * N);
    mk_rope_params_t p = {.x = yc, .pos = pos, .n_tok = n_tok, .n_head = nh, .head_dim = hd,
                          .rope_dim = cases[ci].rope_dim, .theta = cases[ci].theta, .neox = cases[ci].neox,
                          .freq_factors = cases[ci].ff ? ffh : NULL};
    assert_int_equal(0, g_fx.cpu.ops->rope(&g_fx.cpu, &p, &op_err));
    float *dx = to_dev(x, sizeof(float) * N);
    p.x = dx;
    p.freq_factors = dff;
    assert_int_equal(0, g_fx.gpu.ops->rope(&g_fx.gpu, &p, &op_err));
    from_dev(yg, dx, sizeof(float) * N);
    char what[64];
    snprintf(what, sizeof what, "rope case %d", ci);
    assert_true(mk_gpu_close(what, yg, yc, N, 1e-10));
    g_fx.gpu.ops->dealloc(&g_fx.gpu, dx);
    if (dff) g_fx.gpu.ops->dealloc(&g_fx.gpu, dff);
    free(x);
    free(yc);
    free(yg);
  }
}

static void test_group_qsum(void **state) {
  uint64_t st = 16;
  const int n_tok = 3, n_q = 9, n_kv = 3, d = 64;
  const int maps[2][9] = {{0, 0, 0, 1, 1, 1, 2, 2, 2}, {2, 0, 1, 2, 2, 0, 1, 0, 2}};
  for (int mi = 0; mi < 2; mi++) {
    size_t nq = (size_t)n_tok * n_q * d, nk = (size_t)n_tok * n_kv * d;
    float *q = rand_vec(nq, 1.f, &st), *sc = malloc(sizeof(float) * nk), *sg = malloc(sizeof(float) * nk);
    assert_int_equal(0, g_fx.cpu.ops->group_qsum(&g_fx.cpu, sc, q, n_tok, n_q, n_kv, d, maps[mi], &op_err));
    float *dq = to_dev(q, sizeof(float) * nq), *ds = g_fx.gpu.ops->alloc(&g_fx.gpu, sizeof(float) * nk);
    assert_int_equal(0, g_fx.gpu.ops->group_qsum(&g_fx.gpu, ds, dq, n_tok, n_q, n_kv, d, maps[mi], &op_err));
    from_dev(sg, ds, sizeof(float) * nk);
    assert_true(mk_gpu_close("group_qsum", sg, sc, nk, 1e-12));
    g_fx.gpu.ops->dealloc(&g_fx.gpu, dq);
    g_fx.gpu.ops->dealloc(&g_fx.gpu, ds);
    free(q);
    free(sc);
    free(sg);
  }
}

/* ---- attention and the cache policies ---------------------------------------------------- */

typedef struct attn_case {
  const char *name;
  mk_kv_policy_kind_t policy;
  mk_kv_fusion_t fusion;
  mk_kv_gqa_t gqa;
  float ea;
  int n_q, n_kv, d, W, C;
  int prompt[2]; /* prompt lengths of the two sequences */
  int steps;     /* decode steps, both sequences in one batch */
} attn_case_t;

/* Compares every head's metadata of the two caches; prints the first difference. */
static bool caches_equal(const char *what, const mk_kv_cache_t *a, const mk_kv_cache_t *b) {
  size_t nh = (size_t)a->n_seq * a->n_layer * a->n_heads;
  for (size_t i = 0; i < nh; i++) {
    const mk_kv_head_t *x = &a->heads[i], *y = &b->heads[i];
    if (x->n_used != y->n_used || memcmp(x->pos, y->pos, sizeof(int32_t) * (size_t)a->n_slots) != 0) {
      printf("%s: seq %d layer %d head %d differ: cpu used %d, cuda used %d\n", what, x->seq, x->layer, x->kv_head,
             x->n_used, y->n_used);
      int shown = 0;
      for (int s = 0; s < a->n_slots && shown < 8; s++)
        if (x->pos[s] != y->pos[s]) {
          printf("  slot %d: cpu pos %d, cuda pos %d\n", s, x->pos[s], y->pos[s]);
          shown++;
        }
      return false;
    }
  }
  return true;
}

static int run_attn_case(const attn_case_t *tc) {
  if (!mk_kv_policy_get(tc->policy)) {
    printf("%s: policy not registered, case skipped\n", tc->name);
    return 0;
  }
  uint64_t st = 1000 + (uint64_t)tc->policy * 17 + (uint64_t)tc->d;
  mk_kv_config_t cfg;
  mk_kv_config_default(&cfg);
  cfg.policy = tc->policy;
  cfg.fusion = tc->fusion;
  cfg.gqa = tc->gqa;
  cfg.window = tc->W;
  cfg.capacity = tc->C;
  cfg.evict_after = tc->ea;
  cfg.sinks = 4;
  cfg.dtype = MK_KV_F16;
  const int n_layer = 2, n_seq = 2, d = tc->d, n_q = tc->n_q, n_kv = tc->n_kv, g = n_q / n_kv;
  int maxp = tc->prompt[0] > tc->prompt[1] ? tc->prompt[0] : tc->prompt[1];
  mk_kv_cache_params_t cp = {.n_seq = n_seq, .n_layer = n_layer, .n_heads = n_kv, .head_dim = d, .group = g,
                             .max_prompt = maxp, .max_total = maxp + tc->steps + 1, .first_kv_head = 0};
  mk_kv_cache_t cc, cg;
  mk_error_t err;
  if (mk_kv_cache_init(&cc, &cfg, &cp, &err) != 0) fail_msg("%s: %s", tc->name, err.msg);
  if (mk_kv_cache_init(&cg, &cfg, &cp, &err) != 0) fail_msg("%s: %s", tc->name, err.msg);
  int *q_to_kv = malloc(sizeof(int) * n_q);
  for (int u = 0; u < n_q; u++) q_to_kv[u] = u / g;
  const int max_tok = maxp > n_seq ? maxp : n_seq;
  float *dq = g_fx.gpu.ops->alloc(&g_fx.gpu, sizeof(float) * max_tok * n_q * d);
  float *dk = g_fx.gpu.ops->alloc(&g_fx.gpu, sizeof(float) * max_tok * n_kv * d);
  float *dv = g_fx.gpu.ops->alloc(&g_fx.gpu, sizeof(float) * max_tok * n_kv * d);
  float *dqs = g_fx.gpu.ops->alloc(&g_fx.gpu, sizeof(float) * max_tok * n_kv * d);
  float *dout = g_fx.gpu.ops->alloc(&g_fx.gpu, sizeof(float) * max_tok * n_q * d);
  float *oc = malloc(sizeof(float) * max_tok * n_q * d), *og = malloc(sizeof(float) * max_tok * n_q * d);
  int fails = 0, pos_next[2] = {0, 0};

  /* calls: prefill seq 0, prefill seq 1, then `steps` decode calls of both sequences */
  for (int call = 0; call < 2 + tc->steps && !fails; call++) {
    mk_seq_span_t spans[2];
    int n_spans, n_tok;
    if (call < 2) {
      spans[0] = (mk_seq_span_t){.seq = call, .row = 0, .n = tc->prompt[call], .pos0 = 0, .prefill = true};
      n_spans = 1;
      n_tok = tc->prompt[call];
    } else {
      for (int s = 0; s < 2; s++)
        spans[s] = (mk_seq_span_t){.seq = s, .row = s, .n = 1, .pos0 = pos_next[s], .prefill = false};
      n_spans = 2;
      n_tok = 2;
    }
    for (int L = 0; L < n_layer && !fails; L++) {
      size_t nq = (size_t)n_tok * n_q * d, nk = (size_t)n_tok * n_kv * d;
      float *q = rand_vec(nq, 2.f, &st), *k = rand_vec(nk, 2.f, &st), *v = rand_vec(nk, 1.f, &st);
      float *qs = calloc(nk, sizeof(float));
      for (int t = 0; t < n_tok; t++)
        for (int u = 0; u < n_q; u++)
          for (int i = 0; i < d; i++) qs[((size_t)t * n_kv + q_to_kv[u]) * d + i] += q[((size_t)t * n_q + u) * d + i];
      mk_attn_params_t ap = {.layer = L, .n_tok = n_tok, .n_spans = n_spans, .spans = spans, .q = q, .k = k, .v = v,
                             .qsum = qs, .out = oc, .n_q = n_q, .n_kv = n_kv, .head_dim = d, .q_to_kv = q_to_kv,
                             .cache = &cc};
      if (g_fx.cpu.ops->attention(&g_fx.cpu, &ap, &err) != 0) fail_msg("%s cpu: %s", tc->name, err.msg);
      g_fx.gpu.ops->upload(&g_fx.gpu, dq, q, sizeof(float) * nq, NULL);
      g_fx.gpu.ops->upload(&g_fx.gpu, dk, k, sizeof(float) * nk, NULL);
      g_fx.gpu.ops->upload(&g_fx.gpu, dv, v, sizeof(float) * nk, NULL);
      g_fx.gpu.ops->upload(&g_fx.gpu, dqs, qs, sizeof(float) * nk, NULL);
      ap.q = dq;
      ap.k = dk;
      ap.v = dv;
      ap.qsum = dqs;
      ap.out = dout;
      ap.cache = &cg;
      if (g_fx.gpu.ops->attention(&g_fx.gpu, &ap, &err) != 0) fail_msg("%s cuda: %s", tc->name, err.msg);
      from_dev(og, dout, sizeof(float) * nq);
      gsync();
      char what[128];
      snprintf(what, sizeof what, "%s: call %d layer %d output", tc->name, call, L);
      fails += !mk_gpu_close(what, og, oc, nq, 1e-8);
      snprintf(what, sizeof what, "%s: call %d layer %d cache", tc->name, call, L);
      fails += !caches_equal(what, &cc, &cg);
      free(q);
      free(k);
      free(v);
      free(qs);
    }
    for (int s = 0; s < n_spans; s++) pos_next[spans[s].seq] += spans[s].n;
  }
  float *bufs[] = {dq, dk, dv, dqs, dout};
  for (int i = 0; i < 5; i++) g_fx.gpu.ops->dealloc(&g_fx.gpu, bufs[i]);
  free(oc);
  free(og);
  free(q_to_kv);
  mk_kv_cache_free(&cc);
  mk_kv_cache_free(&cg); /* the backend notices the freed cache by its arena on the next use */
  if (!fails) printf("%s: ok\n", tc->name);
  return fails;
}

static void test_attention_policies(void **state) {
#ifdef MK_GPU_EMU /* the CPU emulator runs each CUDA thread as a coroutine: smaller cases */
  const attn_case_t cases[] = {
      {"full g3 d64",             MK_KV_FULL,     MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 9, 3, 64, 8, 48, {30, 140}, 6},
      {"full g4 d128",            MK_KV_FULL,     MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 8, 2, 128, 8, 48, {20, 9}, 4},
      {"full g12 d256 (2 units)", MK_KV_FULL,     MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 12, 1, 256, 8, 48, {12, 5}, 3},
      {"morphkv sum g3 d64",      MK_KV_MORPHKV,  MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 9, 3, 64, 8, 48, {30, 70}, 30},
      {"morphkv max g4 d128",     MK_KV_MORPHKV,  MK_KV_FUSION_MAX, MK_KV_GQA_LOGIT_SUM, 1, 8, 2, 128, 16, 40, {41, 60}, 12},
      {"morphkv sum W1",          MK_KV_MORPHKV,  MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 9, 3, 64, 1, 20, {5, 30}, 25},
      {"morphkv bursty ea=1.5",   MK_KV_MORPHKV,  MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1.5f, 9, 3, 64, 8, 32, {20, 60}, 30},
      {"morphkv C=300 splits",    MK_KV_MORPHKV,  MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 4, 1, 64, 32, 300, {330, 290}, 14},
      {"morphkv prob_max (host)", MK_KV_MORPHKV,  MK_KV_FUSION_SUM, MK_KV_GQA_PROB_MAX, 1, 9, 3, 64, 8, 48, {30, 70}, 8},
      {"streaming (host)",        MK_KV_STREAMING, MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 9, 3, 64, 8, 48, {30, 70}, 8},
      {"h2o (host)",              MK_KV_H2O,      MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 9, 3, 64, 8, 48, {30, 70}, 8},
      {"snapkv (host)",           MK_KV_SNAPKV,   MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 9, 3, 64, 8, 48, {30, 70}, 8},
  };
#else
  const attn_case_t cases[] = {
      /* name                      policy          fusion            gqa                 ea  nq nkv  d   W   C  prompts  steps */
      {"full g3 d64",             MK_KV_FULL,     MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 9, 3, 64, 8, 48, {30, 70}, 20},
      {"full g4 d128 long",       MK_KV_FULL,     MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 8, 2, 128, 8, 48, {300, 700}, 8},
      {"full g12 d256 (2 units)", MK_KV_FULL,     MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 12, 1, 256, 8, 48, {40, 9}, 6},
      {"morphkv sum g3 d64",      MK_KV_MORPHKV,  MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 9, 3, 64, 8, 48, {30, 70}, 60},
      {"morphkv max g4 d128",     MK_KV_MORPHKV,  MK_KV_FUSION_MAX, MK_KV_GQA_LOGIT_SUM, 1, 8, 2, 128, 16, 40, {41, 100}, 50},
      {"morphkv sum W1",          MK_KV_MORPHKV,  MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 9, 3, 64, 1, 20, {5, 30}, 40},
      {"morphkv bursty ea=1.5",   MK_KV_MORPHKV,  MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1.5f, 9, 3, 64, 8, 32, {20, 60}, 60},
      {"morphkv long C=1000",     MK_KV_MORPHKV,  MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 8, 2, 128, 32, 1000, {1200, 990}, 30},
      {"morphkv prob_max (host)", MK_KV_MORPHKV,  MK_KV_FUSION_SUM, MK_KV_GQA_PROB_MAX, 1, 9, 3, 64, 8, 48, {30, 70}, 30},
      {"streaming (host)",        MK_KV_STREAMING, MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 9, 3, 64, 8, 48, {30, 70}, 30},
      {"h2o (host)",              MK_KV_H2O,      MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 9, 3, 64, 8, 48, {30, 70}, 30},
      {"snapkv (host)",           MK_KV_SNAPKV,   MK_KV_FUSION_SUM, MK_KV_GQA_LOGIT_SUM, 1, 9, 3, 64, 8, 48, {30, 70}, 30},
  };
#endif
  int fails = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) fails += run_attn_case(&cases[i]);
  assert_int_equal(fails, 0);
}

static void test_errors(void **state) {
  /* an unsupported weight type is refused with its name; the backend stays usable */
  uint8_t blk[64] = {0};
  mk_qmat_t m = {.type = MK_TYPE_Q8_1, .data = blk, .rows = 1, .cols = 32, .row_bytes = 36};
  mk_bweight_t w;
  mk_error_t err = {{0}};
  assert_int_equal(g_fx.gpu.ops->weight_prepare(&g_fx.gpu, &m, &w, &err), -1);
  printf("expected error: %s\n", err.msg);
  assert_non_null(strstr(err.msg, "Q8_1"));
  /* a device ordinal past the visible ones */
  mk_backend_t b2;
  mk_backend_params_t p = {.kind = MK_BACKEND_CUDA, .n_threads = 1, .simd = -1, .device = 4096};
  assert_int_equal(mk_backend_cuda_init(&b2, &p, &err), -1);
  printf("expected error: %s\n", err.msg);
  assert_non_null(strstr(err.msg, "4096"));
  gsync();
}

int main(void) {
  mk_gpu_test_init_or_exit(&g_fx.gpu);
  mk_backend_params_t cp = {.kind = MK_BACKEND_CPU, .n_threads = 2, .simd = -1, .device = 0};
  mk_error_t err;
  if (mk_backend_cpu_init(&g_fx.cpu, &cp, &err) != 0) {
    fprintf(stderr, "cpu backend: %s\n", err.msg);
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_weight_dequant), cmocka_unit_test(test_matmul),
      cmocka_unit_test(test_embed),          cmocka_unit_test(test_rmsnorm_add_bias_swiglu),
      cmocka_unit_test(test_rope),           cmocka_unit_test(test_group_qsum),
      cmocka_unit_test(test_attention_policies), cmocka_unit_test(test_errors),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  g_fx.gpu.ops->free(&g_fx.gpu);
  g_fx.cpu.ops->free(&g_fx.cpu);
  return rc;
}
