/* Both architectures the engine claims (llama, qwen2) end to end against an independent fp64
 * implementation: synthetic models written by tests/testutil/synth_model.c, golden logits from
 * tests/golden/arch/make_arch_golden.py (NumPy, written from the architecture definitions, same
 * weights regenerated bit for bit from the documented rule; llama.cpp agrees with those logits to
 * 8e-6, see the script). Configs:
 *   llama_tied               normal RoPE, output = token_embd, 8 query / 2 KV heads
 *   llama_rope_freqs_output  normal RoPE with Llama-3 rope_freqs factors, separate output.weight,
 *                            6 query / 3 KV heads, head_dim 32
 *   qwen2                    attn_q/k/v biases, NeoX RoPE, theta 1e6, eps 1e-6
 * For each, on every SIMD level this CPU has (scalar, AVX2, AVX-512): the loaded config (arch,
 * RoPE style, biases, tied output, head layout) and
 *   1. one prefill of the 24 tokens with logits at every position;
 *   2. the decode paths: sequence 0 prefills 8 tokens and sequence 1 prefills 4, both are then fed
 *      one token per step in a two-sequence batch (mk_engine_decode_batch) until sequence 0 has
 *      all 24, then sequence 1 finishes with single-token mk_engine_step calls;
 * every logit of every returned row must be within LOGIT_ATOL of the golden value.
 *
 * Tolerance. Weights are F32, which the matmul kernels multiply with the fp32 activations directly
 * (src/quant_internal.h: no 8-bit activation quantization for F32/F16/BF16), so the engine differs
 * from fp64 only by fp32 rounding in dot products, norms, RoPE and softmax. Measured worst
 * |logit - golden| (logits up to ~50 in llama_tied, ~4 in the others): 4.5e-6 scalar, 7.2e-6
 * AVX2, 7.4e-6 AVX-512 (llama_tied); about 1e-6 in the other two configs. LOGIT_ATOL = 1e-4
 * (absolute) leaves a 13x margin for other summation orders and is far below what a wrong
 * architecture feature changes: the golden file records, per config, the max logit change when the RoPE style is
 * swapped, rope_freqs ignored, biases ignored or the output matrix swapped (smallest: 1.18, rope
 * factors ignored); the test asserts every such figure exceeds 1000 x LOGIT_ATOL, so that it can
 * fail on each. Checked by hand: writing the llama configs as qwen2 with zero biases (only the
 * RoPE style differs) fails at position 1 by 0.34 and 0.014; a golden computed with the RoPE
 * styles swapped fails all three configs; dropping rope_freqs.weight or zeroing the qwen2 biases
 * in the writer fails those configs.
 *
 * MK_ARCH_KEEP_DIR=dir keeps the written models as dir/<config>.gguf (for the golden script's
 * --check of the weight generator). */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "src/engine.h"
#include "tests/testutil/synth_model.h"
#include "tests/testutil/testutil.h"

#define LOGIT_ATOL 1e-4
#define N_PRE0 8 /* sequence 0's prefill in the decode check */
#define N_PRE1 4 /* sequence 1's */

static json_t *golden;

static int setup(void **state) {
  json_error_t jerr;
  golden = json_load_file(mk_test_source_path("tests/golden/arch/arch_logits.json"), 0, &jerr);
  if (!golden) {
    fprintf(stderr, "golden: %s (line %d)\n", jerr.text, jerr.line);
    return -1;
  }
  return 0;
}

static int teardown(void **state) {
  json_decref(golden);
  return 0;
}

static json_t *config_named(const char *name) {
  json_t *cs = json_object_get(golden, "configs");
  for (size_t i = 0; i < json_array_size(cs); i++) {
    json_t *c = json_array_get(cs, i);
    if (strcmp(json_string_value(json_object_get(c, "name")), name) == 0) return c;
  }
  fprintf(stderr, "golden has no config '%s'\n", name);
  fail();
  return NULL;
}

static int get_int(json_t *c, const char *k) {
  json_t *v = json_object_get(c, k);
  assert_true(json_is_integer(v));
  return (int)json_integer_value(v);
}

static double get_num(json_t *c, const char *k) {
  json_t *v = json_object_get(c, k);
  assert_true(json_is_number(v));
  return json_number_value(v);
}

static bool get_bool(json_t *c, const char *k) {
  json_t *v = json_object_get(c, k);
  assert_true(json_is_boolean(v));
  return json_is_true(v);
}

static void params_of(json_t *c, mk_synth_params_t *p) {
  mk_synth_params_default(p);
  const char *arch = json_string_value(json_object_get(c, "arch"));
  assert_non_null(arch);
  assert_true(strcmp(arch, "llama") == 0 || strcmp(arch, "qwen2") == 0);
  p->arch = strcmp(arch, "qwen2") == 0 ? MK_SYNTH_QWEN2 : MK_SYNTH_LLAMA;
  p->n_layer = get_int(c, "n_layer");
  p->n_head = get_int(c, "n_head");
  p->n_kv_head = get_int(c, "n_kv_head");
  p->head_dim = get_int(c, "head_dim");
  p->n_ff = get_int(c, "n_ff");
  p->n_ctx = get_int(c, "n_ctx");
  p->tied_output = get_bool(c, "tied_output");
  p->with_rope_freqs = get_bool(c, "with_rope_freqs");
  p->rope_theta = (float)get_num(c, "rope_theta");
  p->norm_eps = (float)get_num(c, "norm_eps");
  p->seed = (uint64_t)json_integer_value(json_object_get(c, "seed"));
  p->wtype = MK_TYPE_F32;
}

/* Compares one engine row with golden row `pos`; returns the worst |diff| (fails past the bound). */
static double compare_row(const char *what, const float *row, json_t *grow, int V, int pos) {
  assert_int_equal((int)json_array_size(grow), V);
  double worst = 0;
  for (int t = 0; t < V; t++) {
    double g = json_number_value(json_array_get(grow, (size_t)t));
    double d = fabs((double)row[t] - g);
    if (!(d <= LOGIT_ATOL)) {
      fprintf(stderr, "%s: position %d token %d: logit %.6f, golden %.6f (|diff| %.3g > %.0e)\n", what, pos, t,
              row[t], g, d, LOGIT_ATOL);
      fail();
    }
    if (d > worst) worst = d;
  }
  return worst;
}

static void begin(mk_engine_t *e, int n_seq, int n) {
  mk_kv_config_t kv;
  mk_kv_config_default(&kv); /* full cache */
  mk_error_t err = {{0}};
  int rc = mk_engine_begin(e, &kv, n_seq, n, n, &err);
  if (rc) fprintf(stderr, "mk_engine_begin: %s\n", err.msg);
  assert_int_equal(rc, 0);
}

static void check_step(int rc, const mk_error_t *err) {
  if (rc) fprintf(stderr, "engine: %s\n", err->msg);
  assert_int_equal(rc, 0);
}

static void run_config(const char *name) {
  json_t *c = config_named(name);
  mk_synth_params_t sp;
  params_of(c, &sp);
  const int V = mk_synth_n_vocab();
  assert_int_equal(get_int(golden, "n_vocab"), V);
  json_t *tokens = json_object_get(golden, "tokens"), *gl = json_object_get(c, "logits");
  const int n = (int)json_array_size(tokens);
  assert_true(n > N_PRE0 + 1 && n <= 64);
  assert_int_equal((int)json_array_size(gl), n);
  int32_t ids[64];
  for (int i = 0; i < n; i++) ids[i] = (int32_t)json_integer_value(json_array_get(tokens, (size_t)i));

  /* the test can only fail on a wrong feature if that feature moves the logits well past the bound */
  json_t *sens = json_object_get(c, "sensitivity");
  const char *key;
  json_t *val;
  assert_true(json_object_size(sens) >= 2);
  json_object_foreach(sens, key, val) {
    fprintf(stderr, "%s: golden max |change| if %s: %.3f\n", name, key, json_number_value(val));
    assert_true(json_number_value(val) > 1000 * LOGIT_ATOL);
  }

  char path[512];
  const char *keep = getenv("MK_ARCH_KEEP_DIR");
  if (keep && *keep) {
    snprintf(path, sizeof path, "%s/%s.gguf", keep, name);
  } else {
    const char *tmp = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/mk_arch_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
  }
  assert_int_equal(mk_synth_model_write(path, &sp), 0);

  float *logits = malloc(sizeof(float) * (size_t)n * V);
  assert_non_null(logits);
  for (int level = MK_SIMD_SCALAR; level <= MK_SIMD_AVX512; level++) {
    if (!mk_cpu_kernels_get((mk_simd_t)level)) continue; /* this CPU lacks it */
    mk_engine_params_t ep = {.model_path = path, .backend = {.kind = MK_BACKEND_CPU, .n_threads = 2, .simd = level}};
    mk_engine_t *e = NULL;
    mk_error_t err = {{0}};
    int rc = mk_engine_open(&e, &ep, NULL, &err);
    if (rc) fprintf(stderr, "mk_engine_open %s: %s\n", path, err.msg);
    assert_int_equal(rc, 0);
    const mk_model_config_t *cfg = mk_engine_config(e);
    const bool qwen = sp.arch == MK_SYNTH_QWEN2;
    assert_string_equal(cfg->arch_name, qwen ? "qwen2" : "llama");
    assert_int_equal(cfg->arch, qwen ? MK_ARCH_QWEN2 : MK_ARCH_LLAMA);
    assert_int_equal(cfg->rope_neox, qwen);
    assert_int_equal(cfg->qkv_bias, qwen);
    assert_int_equal(cfg->tied_output, sp.tied_output);
    assert_int_equal(cfg->n_head, sp.n_head);
    assert_int_equal(cfg->n_kv_head, sp.n_kv_head);
    assert_int_equal(cfg->head_dim, sp.head_dim);
    assert_int_equal(cfg->rope_dim, sp.head_dim);
    assert_int_equal(cfg->n_vocab, V);
    assert_true(cfg->rope_theta == sp.rope_theta && cfg->norm_eps == sp.norm_eps);
    const char *simd = mk_simd_name((mk_simd_t)level);
    char what[128];

    /* 1. one prefill, logits at every position */
    begin(e, 1, n);
    check_step(mk_engine_step(e, 0, ids, n, true, logits, &err), &err);
    double worst_pre = 0, worst_dec = 0;
    snprintf(what, sizeof what, "%s/%s prefill", name, simd);
    for (int i = 0; i < n; i++) {
      double w = compare_row(what, logits + (size_t)i * V, json_array_get(gl, (size_t)i), V, i);
      if (w > worst_pre) worst_pre = w;
    }

    /* 2. decode: two sequences at different positions batched, then single steps */
    begin(e, 2, n);
    snprintf(what, sizeof what, "%s/%s decode", name, simd);
    check_step(mk_engine_step(e, 0, ids, N_PRE0, false, logits, &err), &err);
    worst_dec = compare_row(what, logits, json_array_get(gl, N_PRE0 - 1), V, N_PRE0 - 1);
    check_step(mk_engine_step(e, 1, ids, N_PRE1, false, logits, &err), &err);
    double w = compare_row(what, logits, json_array_get(gl, N_PRE1 - 1), V, N_PRE1 - 1);
    if (w > worst_dec) worst_dec = w;
    int p0 = N_PRE0, p1 = N_PRE1;
    while (p0 < n) {
      const int seqs[2] = {0, 1};
      const int32_t bid[2] = {ids[p0], ids[p1]};
      check_step(mk_engine_decode_batch(e, seqs, bid, 2, logits, &err), &err);
      w = compare_row(what, logits, json_array_get(gl, (size_t)p0), V, p0);
      if (w > worst_dec) worst_dec = w;
      w = compare_row(what, logits + V, json_array_get(gl, (size_t)p1), V, p1);
      if (w > worst_dec) worst_dec = w;
      p0++;
      p1++;
    }
    for (; p1 < n; p1++) {
      check_step(mk_engine_step(e, 1, &ids[p1], 1, false, logits, &err), &err);
      w = compare_row(what, logits, json_array_get(gl, (size_t)p1), V, p1);
      if (w > worst_dec) worst_dec = w;
    }
    assert_int_equal(mk_engine_n_past(e, 0), n);
    assert_int_equal(mk_engine_n_past(e, 1), n);
    fprintf(stderr, "%s (%s): worst |logit - golden| prefill %.2e, decode %.2e (bound %.0e)\n", name, simd,
            worst_pre, worst_dec, LOGIT_ATOL);
    mk_engine_close(e);
  }
  free(logits);
  if (!(keep && *keep)) unlink(path);
}

static void test_llama_tied(void **state) { run_config("llama_tied"); }
static void test_llama_rope_freqs_output(void **state) { run_config("llama_rope_freqs_output"); }
static void test_qwen2(void **state) { run_config("qwen2"); }

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_llama_tied),
      cmocka_unit_test(test_llama_rope_freqs_output),
      cmocka_unit_test(test_qwen2),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
