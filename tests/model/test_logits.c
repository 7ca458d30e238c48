/* End-to-end numerics against llama.cpp (tests/golden/logits, made by make_logits_golden.py):
 * teacher-forced logits at every position of 10 sequences (prompt + llama.cpp's greedy
 * continuation) and greedy continuations of 64 tokens.
 *
 * Tolerances (measured on an AVX2-only machine, Dec 2026; README "Numerics"). Both
 * engines quantize activations to 8 bits per 32-block before every 4-bit matmul, so a last-bit change
 * of an activation (any change of fp32 summation order) can flip an 8-bit code; each summation order
 * is an independent draw of rounding noise that 30 layers amplify to ~0.1 logit on average and ~1 at
 * the worst position. The kernels are not the cause: on the demo model's 211 weight matrices with
 * real activations, the AVX2 and scalar matmuls are both within 4e-7 (relative to the sum of |terms|)
 * of an fp64 evaluation of the same quantized formula, and their activation quantization is bitwise
 * equal. Metric: per position, over llama.cpp's top-20, after removing the per-position mean offset
 * (sampling is shift-invariant); all 10 cases, 792 positions. Against the exact fp64 forward pass
 * (tests/golden/logits/fp64_reference.py, same dequantized weights), worst / mean:
 *   llama.cpp 0.73 / 0.093;  morphkv scalar 1.11 / 0.090,  AVX2 1.02 / 0.091,  three reordered Q4_1
 *   accumulations (4-block partial sums, reversed blocks, 2-block partial sums) 0.86-1.20 /
 *   0.089-0.091.
 * Against llama.cpp (what this test sees): scalar 0.86 / 0.097, AVX2 1.14 / 0.097, reordered
 *   0.63-0.86 / 0.097-0.098. The previous bound (1.0) was set from one machine's (AVX-512)
 *   kernels, which differed from llama.cpp by up to ~0.8.
 * Hence max |diff| <= LOGIT_ATOL = 1.5 (1.3x the worst draw) and mean |diff| <= LOGIT_MEAN_TOL =
 * 0.11 (the mean varies by 0.002 between the five draws). Planted errors (in the AVX2 Q4_1 kernel,
 * one matrix, by a patch in a scratch copy; cases 0 and 3) fail: the min term dropped in layer 0's
 * or 15's ffn_down: worst 9-10, mean 1.1-1.8; ffn_down's last block using the previous block's
 * scale in layer 0 / 29: worst 2.6 / 4.8; one block scale doubled in layer 15's ffn_down: worst 2.1.
 * The subtlest tried, the last-block scale error in layer 15's ffn_down, stays under the max (1.22)
 * but fails the mean (0.1135 over all cases). Our argmax must equal llama.cpp's wherever llama.cpp's
 * top-2 margin exceeds ARGMAX_MARGIN (largest margin at which any draw's argmax differed: 0.36).
 * Greedy: our own greedy continuation must equal llama.cpp's token for token. A difference is
 * accepted only at a near-tie (llama.cpp's own top-2 margin below GREEDY_TIE there); the case then
 * stops. GREEDY_TIE = ARGMAX_MARGIN: the scalar kernels diverge at a margin of 0.261 (case 3), so
 * the former 0.25 held for one kernel order only. Cases whose path has no top-2 margin below
 * GREEDY_TIE (the golden file records each path's smallest margin: only case 4, 1.64) must match for
 * all their tokens (implied by the above; asserted so the check cannot become vacuous). The former
 * "at least 3 of 10 cases" counted near-tie paths that happen to survive: AVX2 4, scalar 6, the
 * three reordered sums 5, 4 and 3, i.e. no margin left. */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

#include "src/engine.h"
#include "tests/testutil/testutil.h"

#define LOGIT_ATOL 1.5f
#define LOGIT_MEAN_TOL 0.11
#define ARGMAX_MARGIN 0.5f
#define GREEDY_TIE 0.5

static json_t *golden;
static mk_engine_t *eng;

static int setup(void **state) {
  const char *model = mk_test_model_path();
  if (!model) return -1;
  json_error_t jerr;
  golden = json_load_file(mk_test_source_path("tests/golden/logits/smollm2_logits.json"), 0, &jerr);
  if (!golden) {
    fprintf(stderr, "golden: %s (line %d)\n", jerr.text, jerr.line);
    return -1;
  }
  /* MK_TEST_SIMD=0/1/2 forces a kernel level (scalar/avx2/avx512) for measurements; default best. */
  const char *simd_env = getenv("MK_TEST_SIMD");
  mk_engine_params_t p = {.model_path = model,
                          .backend = {.kind = MK_BACKEND_CPU, .n_threads = 2, .simd = simd_env ? atoi(simd_env) : -1}};
  mk_error_t err = {{0}};
  if (mk_engine_open(&eng, &p, NULL, &err) != 0) {
    fprintf(stderr, "engine: %s\n", err.msg);
    return -1;
  }
  return 0;
}

static int teardown(void **state) {
  mk_engine_close(eng);
  json_decref(golden);
  return 0;
}

static int32_t *ids_of(json_t *arr, int *n) {
  *n = (int)json_array_size(arr);
  int32_t *ids = malloc(sizeof(int32_t) * (size_t)(*n ? *n : 1));
  for (int i = 0; i < *n; i++) ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
  return ids;
}

static void begin_full(int max_total) {
  mk_kv_config_t kv;
  mk_kv_config_default(&kv);
  mk_error_t err = {{0}};
  int rc = mk_engine_begin(eng, &kv, 1, max_total, max_total, &err);
  if (rc) fprintf(stderr, "%s\n", err.msg);
  assert_int_equal(rc, 0);
}

/* Teacher forcing: the whole sequence in one prefill, logits at every position. */
static void test_teacher_forced_logits(void **state) {
  const int V = mk_engine_n_vocab(eng);
  json_t *cases = json_object_get(golden, "cases");
  assert_true(json_array_size(cases) >= 3);
  double worst = 0, sum_diff = 0;
  int positions = 0, n_diff = 0, n_bad = 0; /* all cases are checked; violations fail at the end */
  for (size_t c = 0; c < json_array_size(cases); c++) {
    json_t *cs = json_array_get(cases, c);
    int np, ng;
    int32_t *pids = ids_of(json_object_get(cs, "prompt_ids"), &np);
    int32_t *gids = ids_of(json_object_get(cs, "greedy_ids"), &ng);
    int n = np + ng;
    int32_t *seq = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < np; i++) seq[i] = pids[i];
    for (int i = 0; i < ng; i++) seq[np + i] = gids[i];
    float *logits = malloc(sizeof(float) * (size_t)n * V);
    begin_full(n);
    mk_error_t err = {{0}};
    int rc = mk_engine_step(eng, 0, seq, n, true, logits, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, 0);
    if (getenv("MK_DUMP")) {
      char fn[256];
      snprintf(fn, sizeof fn, "%s/ours%zu.f32", getenv("MK_DUMP"), c);
      FILE *f = fopen(fn, "wb");
      fwrite(logits, sizeof(float), (size_t)n * V, f);
      fclose(f);
    }
    json_t *top = json_object_get(cs, "top");
    assert_int_equal((int)json_array_size(top), n);
    for (int i = 0; i < n; i++) {
      json_t *pos = json_array_get(top, (size_t)i);
      json_t *tid = json_object_get(pos, "ids"), *tlg = json_object_get(pos, "logits");
      const float *row = logits + (size_t)i * V;
      int k = (int)json_array_size(tid);
      double off = 0;
      for (int j = 0; j < k; j++)
        off += row[json_integer_value(json_array_get(tid, j))] - json_real_value(json_array_get(tlg, j));
      off /= k;
      for (int j = 0; j < k; j++) {
        int id = (int)json_integer_value(json_array_get(tid, j));
        double diff = fabs(row[id] - off - json_real_value(json_array_get(tlg, j)));
        if (diff > worst) worst = diff;
        sum_diff += diff;
        n_diff++;
        if (diff > LOGIT_ATOL) {
          if (n_bad++ < 10)
            fprintf(stderr, "case %zu position %d: token %d logit %.4f (shifted %.4f) vs llama.cpp %.4f (|diff| %.4f > %.2f)\n",
                    c, i, id, row[id], row[id] - off, json_real_value(json_array_get(tlg, j)), diff, LOGIT_ATOL);
        }
      }
      int am = 0;
      for (int t = 1; t < V; t++)
        if (row[t] > row[am]) am = t;
      double margin = json_real_value(json_array_get(tlg, 0)) - json_real_value(json_array_get(tlg, 1));
      int g0 = (int)json_integer_value(json_array_get(tid, 0));
      if (margin > ARGMAX_MARGIN && am != g0 && n_bad++ < 10)
        fprintf(stderr, "case %zu position %d: argmax %d vs llama.cpp %d (margin %.3f)\n", c, i, am, g0, margin);
      positions++;
    }
    free(pids);
    free(gids);
    free(seq);
    free(logits);
  }
  fprintf(stderr, "teacher-forced: %d positions, |logit diff| over llama.cpp's top-20: worst %.4f (bound %.2f), mean %.4f (bound %.3f); %d violations\n",
          positions, worst, LOGIT_ATOL, sum_diff / n_diff, LOGIT_MEAN_TOL, n_bad);
  assert_int_equal(n_bad, 0);
  assert_true(sum_diff / n_diff <= LOGIT_MEAN_TOL);
}

/* Greedy: prefill the prompt, then decode one token at a time (the generation path). */
static void test_greedy_continuations(void **state) {
  const int V = mk_engine_n_vocab(eng);
  json_t *cases = json_object_get(golden, "cases");
  float *logits = malloc(sizeof(float) * (size_t)V);
  int full_cases = 0, robust_cases = 0;
  for (size_t c = 0; c < json_array_size(cases); c++) {
    json_t *cs = json_array_get(cases, c);
    if (json_real_value(json_object_get(cs, "greedy_min_margin")) >= GREEDY_TIE) robust_cases++;
    int np, ng;
    int32_t *pids = ids_of(json_object_get(cs, "prompt_ids"), &np);
    int32_t *gids = ids_of(json_object_get(cs, "greedy_ids"), &ng);
    json_t *top = json_object_get(cs, "top");
    begin_full(np + ng + 1);
    mk_error_t err = {{0}};
    assert_int_equal(mk_engine_step(eng, 0, pids, np, false, logits, &err), 0);
    int matched = 0;
    for (int i = 0; i < ng; i++) {
      int am = 0;
      for (int t = 1; t < V; t++)
        if (logits[t] > logits[am]) am = t;
      if (am != gids[i]) {
        json_t *tl = json_object_get(json_array_get(top, (size_t)(np - 1 + i)), "logits");
        double margin = json_real_value(json_array_get(tl, 0)) - json_real_value(json_array_get(tl, 1));
        fprintf(stderr, "case %zu: greedy token %d is %d, llama.cpp %d (llama.cpp's top-2 margin there %.3f)\n",
                c, i, am, gids[i], margin);
        if (margin >= GREEDY_TIE) fail();
        break;
      }
      matched++;
      if (i + 1 < ng) assert_int_equal(mk_engine_step(eng, 0, &am, 1, false, logits, &err), 0);
    }
    fprintf(stderr, "case %zu: %d of %d greedy tokens identical to llama.cpp\n", c, matched, ng);
    if (matched == ng) full_cases++;
    free(pids);
    free(gids);
  }
  free(logits);
  fprintf(stderr, "%d of %zu cases identical for all their greedy tokens (%d without a near-tie on the path)\n",
          full_cases, json_array_size(cases), robust_cases);
  assert_true(robust_cases >= 1);
  assert_true(full_cases >= robust_cases);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_teacher_forced_logits),
      cmocka_unit_test(test_greedy_continuations),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
