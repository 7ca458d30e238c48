/* Sampler: greedy, top-k, top-p, min-p, temperature, repetition penalty, seeding.
 * Expected values are computed here from the definitions (softmax of known probabilities), and
 * the distribution check is a chi-square bound over many seeded draws. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "src/sampler.h"
#include "tests/testutil/testutil.h"

static mk_sampler_params_t plain(float temperature) {
  mk_sampler_params_t p;
  mk_sampler_params_default(&p);
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.repeat_penalty = 1.0f;
  p.seed = 1234;
  return p;
}

static mk_sampler_t *make(const mk_sampler_params_t *p, int n) {
  mk_sampler_t *s = NULL;
  mk_error_t err = {{0}};
  int rc = mk_sampler_new(p, n, &s, &err);
  if (rc != 0) fail_msg("mk_sampler_new: %s", err.msg);
  assert_non_null(s);
  return s;
}

/* Draws n tokens from fixed logits, counting them into counts (n_vocab). */
static void draw_counts(mk_sampler_t *s, const float *logits, int n_vocab, int n, int *counts) {
  float *work = malloc((size_t)n_vocab * sizeof *work);
  assert_non_null(work);
  memset(counts, 0, (size_t)n_vocab * sizeof *counts);
  for (int i = 0; i < n; i++) {
    memcpy(work, logits, (size_t)n_vocab * sizeof *work);
    int32_t id = mk_sampler_sample(s, work, NULL, 0);
    assert_true(id >= 0 && id < n_vocab);
    counts[id]++;
  }
  free(work);
}

static void test_greedy_argmax(void **state) {
  (void)state;
  enum { N = 3000 };
  static float logits[N];
  uint64_t rs = 7;
  for (int trial = 0; trial < 20; trial++) {
    int32_t want = 0;
    for (int i = 0; i < N; i++) {
      logits[i] = mk_test_rand_f32(&rs) * 10.0f;
      if (logits[i] > logits[want]) want = i;
    }
    mk_sampler_params_t p = plain(0.0f);
    mk_sampler_t *s = make(&p, N);
    assert_int_equal(mk_sampler_sample(s, logits, NULL, 0), want);
    mk_sampler_free(s);
  }
  /* ties go to the lowest id */
  float tie[6] = {0.5f, 3.0f, -1.0f, 3.0f, 3.0f, 2.9f};
  mk_sampler_params_t p = plain(0.0f);
  mk_sampler_t *s = make(&p, 6);
  assert_int_equal(mk_sampler_sample(s, tie, NULL, 0), 1);
  /* negative temperature is greedy too */
  mk_sampler_free(s);
  p = plain(-1.0f);
  s = make(&p, 6);
  assert_int_equal(mk_sampler_sample(s, tie, NULL, 0), 1);
  mk_sampler_free(s);
}

static void test_top_k1_is_greedy(void **state) {
  (void)state;
  enum { N = 2000 };
  static float logits[N], work[N];
  uint64_t rs = 99;
  mk_sampler_params_t p = plain(1.5f);
  p.top_k = 1;
  mk_sampler_t *s = make(&p, N);
  mk_sampler_params_t g = plain(0.0f);
  mk_sampler_t *sg = make(&g, N);
  for (int trial = 0; trial < 200; trial++) {
    for (int i = 0; i < N; i++) logits[i] = mk_test_rand_f32(&rs) * 4.0f;
    if (trial % 10 == 0) logits[N - 1] = logits[N / 2] = 100.0f; /* a tie */
    memcpy(work, logits, sizeof logits);
    int32_t a = mk_sampler_sample(s, work, NULL, 0);
    memcpy(work, logits, sizeof logits);
    int32_t b = mk_sampler_sample(sg, work, NULL, 0);
    assert_int_equal(a, b);
  }
  mk_sampler_free(s);
  mk_sampler_free(sg);
}

static void test_top_k_set(void **state) {
  (void)state;
  enum { N = 5000, K = 10 };
  static float logits[N];
  static int counts[N];
  uint64_t rs = 5;
  for (int i = 0; i < N; i++) logits[i] = mk_test_rand_f32(&rs);
  /* plant the 10 best ids with known logits (all others are < 1) */
  int best[K] = {17, 4999, 0, 2500, 123, 777, 3001, 42, 1000, 4321};
  for (int j = 0; j < K; j++) logits[best[j]] = 1.5f + 0.01f * (float)j;
  logits[5] = NAN;
  logits[6] = -INFINITY;
  mk_sampler_params_t p = plain(100.0f); /* nearly uniform over the kept set */
  p.top_k = K;
  mk_sampler_t *s = make(&p, N);
  draw_counts(s, logits, N, 20000, counts);
  int total = 0;
  for (int j = 0; j < K; j++) {
    assert_true(counts[best[j]] > 1500); /* ~2000 each */
    total += counts[best[j]];
  }
  assert_int_equal(total, 20000); /* nothing outside the top-k */
  mk_sampler_free(s);
}

/* probs 0.5, 0.3, 0.15, 0.05 as logits */
static const float P4[4] = {0.5f, 0.3f, 0.15f, 0.05f};
static void logits_of(const float *prob, int n, float *out) {
  for (int i = 0; i < n; i++) out[i] = logf(prob[i]);
}

static void test_top_p_cut(void **state) {
  (void)state;
  float logits[4];
  int counts[4];
  logits_of(P4, 4, logits);
  struct { float top_p; int kept; } cases[] = {{0.45f, 1}, {0.7f, 2}, {0.9f, 3}, {0.99f, 4}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    mk_sampler_params_t p = plain(1.0f);
    p.top_p = cases[c].top_p;
    mk_sampler_t *s = make(&p, 4);
    draw_counts(s, logits, 4, 20000, counts);
    for (int i = 0; i < 4; i++) {
      if (i < cases[c].kept) assert_true(counts[i] > 0);
      else assert_int_equal(counts[i], 0);
    }
    /* kept tokens keep their relative odds: 0.5 : 0.3 */
    if (cases[c].kept >= 2) {
      double ratio = (double)counts[0] / counts[1];
      assert_true(fabs(ratio - 0.5 / 0.3) < 0.12);
    }
    mk_sampler_free(s);
  }
}

static void test_min_p_cut(void **state) {
  (void)state;
  float logits[4];
  int counts[4];
  logits_of(P4, 4, logits);
  /* min_p 0.2 -> keep prob >= 0.1: ids 0,1,2;  min_p 0.5 -> >= 0.25: ids 0,1;  0.9 -> id 0 */
  struct { float min_p; int kept; } cases[] = {{0.05f, 4}, {0.2f, 3}, {0.5f, 2}, {0.9f, 1}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    mk_sampler_params_t p = plain(1.0f);
    p.min_p = cases[c].min_p;
    mk_sampler_t *s = make(&p, 4);
    draw_counts(s, logits, 4, 20000, counts);
    for (int i = 0; i < 4; i++) {
      if (i < cases[c].kept) assert_true(counts[i] > 0);
      else assert_int_equal(counts[i], 0);
    }
    mk_sampler_free(s);
  }
}

static void test_repeat_penalty(void **state) {
  (void)state;
  mk_sampler_params_t p = plain(0.0f);
  p.repeat_penalty = 1.5f;
  p.repeat_last_n = 3;
  mk_sampler_t *s = make(&p, 5);
  float logits[5] = {2.0f, 1.9f, -1.0f, 0.5f, 0.0f};
  /* id 0 seen twice (penalised once), id 2 seen, id 3 outside the window of 3 */
  int32_t hist[] = {3, 0, 2, 0};
  int32_t id = mk_sampler_sample(s, logits, hist, 4);
  assert_int_equal(id, 1); /* 2.0/1.5 = 1.33 < 1.9 */
  assert_float_equal(logits[0], 2.0f / 1.5f, 1e-6);
  assert_float_equal(logits[1], 1.9f, 0.0);
  assert_float_equal(logits[2], -1.5f, 1e-6); /* negative logits are multiplied */
  assert_float_equal(logits[3], 0.5f, 0.0);   /* outside the window */
  assert_float_equal(logits[4], 0.0f, 0.0);
  /* a second call penalises afresh (stamps are per call, not cumulative) */
  float again[5] = {2.0f, 1.9f, -1.0f, 0.5f, 0.0f};
  mk_sampler_sample(s, again, hist, 4);
  assert_float_equal(again[0], 2.0f / 1.5f, 1e-6);
  mk_sampler_free(s);

  /* penalty 1 is off; repeat_last_n -1 covers the whole history */
  p.repeat_penalty = 1.0f;
  s = make(&p, 5);
  float l2[5] = {2.0f, 1.9f, -1.0f, 0.5f, 0.0f};
  assert_int_equal(mk_sampler_sample(s, l2, hist, 4), 0);
  mk_sampler_free(s);
  p.repeat_penalty = 2.0f;
  p.repeat_last_n = -1;
  s = make(&p, 5);
  float l3[5] = {2.0f, 1.9f, -1.0f, 0.5f, 0.0f};
  mk_sampler_sample(s, l3, hist, 4);
  assert_float_equal(l3[3], 0.25f, 1e-6);
  mk_sampler_free(s);
}

static void test_seed_reproducible(void **state) {
  (void)state;
  enum { N = 300, STEPS = 200 };
  static float logits[N], work[N];
  uint64_t rs = 3;
  for (int i = 0; i < N; i++) logits[i] = mk_test_rand_f32(&rs) * 3.0f;
  mk_sampler_params_t p = plain(1.0f);
  p.top_k = 50;
  p.top_p = 0.9f;
  p.min_p = 0.01f;
  int32_t seq[3][STEPS];
  uint64_t seeds[3] = {42, 42, 43};
  for (int r = 0; r < 3; r++) {
    p.seed = seeds[r];
    mk_sampler_t *s = make(&p, N);
    for (int t = 0; t < STEPS; t++) {
      memcpy(work, logits, sizeof logits);
      seq[r][t] = mk_sampler_sample(s, work, NULL, 0);
    }
    mk_sampler_free(s);
  }
  assert_memory_equal(seq[0], seq[1], sizeof seq[0]);
  assert_memory_not_equal(seq[0], seq[2], sizeof seq[0]);
}

/* Empirical frequencies against softmax(logits / T): chi-square with 7 degrees of freedom.
 * P(chi2 > 30) ~ 1e-4 under the right distribution; draws are seeded, so the test is stable. */
static void test_distribution_chi_square(void **state) {
  (void)state;
  enum { V = 8, DRAWS = 200000 };
  const float logits[V] = {1.0f, 0.2f, -0.5f, 2.0f, 0.0f, 1.5f, -2.0f, 0.7f};
  const float temps[] = {1.0f, 0.6f, 2.0f};
  int counts[V];
  for (size_t ti = 0; ti < sizeof temps / sizeof temps[0]; ti++) {
    float T = temps[ti];
    double prob[V], sum = 0.0;
    for (int i = 0; i < V; i++) sum += prob[i] = exp(logits[i] / T);
    for (int i = 0; i < V; i++) prob[i] /= sum;
    mk_sampler_params_t p = plain(T);
    p.seed = 1000 + ti;
    mk_sampler_t *s = make(&p, V);
    draw_counts(s, logits, V, DRAWS, counts);
    double chi2 = 0.0;
    for (int i = 0; i < V; i++) {
      double e = prob[i] * DRAWS;
      chi2 += (counts[i] - e) * (counts[i] - e) / e;
    }
    if (chi2 > 30.0) fail_msg("T=%g: chi-square %.2f > 30 over %d draws", (double)T, chi2, DRAWS);
    mk_sampler_free(s);
  }
  /* a wrong distribution (T=1 expected, sampled at T=2) must fail the same bound */
  double prob[V], sum = 0.0;
  for (int i = 0; i < V; i++) sum += prob[i] = exp(logits[i]);
  mk_sampler_params_t p = plain(2.0f);
  mk_sampler_t *s = make(&p, V);
  draw_counts(s, logits, V, DRAWS, counts);
  double chi2 = 0.0;
  for (int i = 0; i < V; i++) {
    double e = prob[i] / sum * DRAWS;
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
  }
  assert_true(chi2 > 30.0);
  mk_sampler_free(s);
}

static void test_bad_params(void **state) {
  (void)state;
  mk_sampler_params_t p = plain(1.0f);
  mk_sampler_t *s = (mk_sampler_t *)0x1;
  mk_error_t err = {{0}};
  assert_int_equal(mk_sampler_new(&p, 0, &s, &err), -1);
  assert_null(s);
  assert_non_null(strstr(err.msg, "vocabulary"));
  p.top_p = 0.0f;
  assert_int_equal(mk_sampler_new(&p, 10, &s, &err), -1);
  assert_non_null(strstr(err.msg, "top-p"));
  p = plain(1.0f);
  p.repeat_penalty = 0.0f;
  assert_int_equal(mk_sampler_new(&p, 10, &s, &err), -1);
  assert_non_null(strstr(err.msg, "penalty"));
}

/* Distributed sampling (sampler.h): T ranks' slices simulated in-process, the vocabulary cut into
 * contiguous uneven slices as the tensor-parallel plan does; every rank's mk_sampler_local, the
 * rank-major exchange, mk_sampler_merge. On 10,000 random logit vectors per setting and T = 1..4
 * the token must equal mk_sampler_sample's on the whole vector (same seed, so the RNG streams stay
 * in step). The vectors mix plain values with ties (coarse rounding), NaN, -inf and +inf. */
static float rand_logit(uint64_t *x) {
  uint64_t r = *x = *x * 6364136223846793005ull + 1442695040888963407ull;
  double u = (double)(r >> 11) * (1.0 / 9007199254740992.0);
  unsigned sel = (unsigned)(r >> 3) & 1023u;
  if (sel == 0) return NAN;
  if (sel == 1) return -INFINITY;
  if (sel == 2 && ((r >> 20) & 15u) == 0) return INFINITY;
  float v = (float)(u * 16.0 - 8.0);
  return ((r >> 13) & 3u) == 0 ? roundf(v * 2.0f) / 2.0f : v; /* a quarter on a coarse grid: ties */
}

static void test_distributed_equals_full(void **state) {
  (void)state;
  enum { V = 320, N_VEC = 10000, N_HIST = 40 };
  mk_sampler_params_t set[8];
  for (int i = 0; i < 8; i++) mk_sampler_params_default(&set[i]);
  set[0].temperature = 0.0f;                                                     /* greedy */
  set[1].seed = 3;                                                               /* defaults */
  set[2].top_k = 1, set[2].temperature = 1.0f;                                   /* k = 1 */
  set[3].top_k = 5, set[3].top_p = 1.0f, set[3].min_p = 0.0f, set[3].temperature = 1.5f;
  set[4].top_k = 12, set[4].repeat_penalty = 1.3f, set[4].temperature = 1.2f;     /* penalty */
  set[5].top_k = 4096, set[5].top_p = 1.0f, set[5].min_p = 0.0f;                 /* k >= vocabulary */
  set[6].top_k = 100, set[6].top_p = 0.5f, set[6].min_p = 0.0f, set[6].temperature = 2.0f;
  set[7].top_k = 64, set[7].top_p = 1.0f, set[7].min_p = 0.2f, set[7].repeat_penalty = 0.8f;
  float *whole = malloc(sizeof(float) * V), *sliced = malloc(sizeof(float) * V);
  mk_sample_cand_t *all = malloc(sizeof(mk_sample_cand_t) * 4 * (1 + MK_SAMPLER_MAX_K));
  int32_t hist[N_HIST];
  assert_non_null(whole);
  assert_non_null(sliced);
  assert_non_null(all);
  for (int k = 0; k < 8; k++)
    for (int T = 1; T <= 4; T++) {
      mk_sampler_t *full = make(&set[k], V), *dist = make(&set[k], V);
      const int per = mk_sampler_cand_count(dist);
      assert_true(per >= 1 && per <= 1 + set[k].top_k + (set[k].temperature <= 0.0f));
      int v0[5];
      for (int r = 0; r <= T; r++) v0[r] = (int)((long)V * r / T) - (r > 0 && r < T ? r : 0); /* uneven */
      uint64_t x = 0x1234567ull * (uint64_t)(k * 8 + T);
      int mismatches = 0, nonzero = 0;
      for (int it = 0; it < N_VEC; it++) {
        for (int i = 0; i < V; i++) whole[i] = rand_logit(&x);
        for (int i = 0; i < N_HIST; i++) hist[i] = (int32_t)((x = x * 6364136223846793005ull + 1) >> 33) % V;
        memcpy(sliced, whole, sizeof(float) * V);
        int32_t want = mk_sampler_sample(full, whole, hist, N_HIST);
        for (int r = 0; r < T; r++)
          mk_sampler_local(dist, sliced + v0[r], v0[r], v0[r + 1] - v0[r], hist, N_HIST, all + (size_t)r * per);
        int32_t got = mk_sampler_merge(dist, all, T);
        nonzero += want != 0;
        if (got != want && mismatches++ < 3)
          print_error("setting %d T=%d vector %d: distributed %d, full %d\n", k, T, it, got, want);
      }
      assert_int_equal(mismatches, 0);
      assert_true(nonzero > N_VEC / 2); /* the vectors really vary the answer */
      mk_sampler_free(full);
      mk_sampler_free(dist);
    }
  free(whole);
  free(sliced);
  free(all);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_greedy_argmax),
      cmocka_unit_test(test_top_k1_is_greedy),
      cmocka_unit_test(test_top_k_set),
      cmocka_unit_test(test_top_p_cut),
      cmocka_unit_test(test_min_p_cut),
      cmocka_unit_test(test_repeat_penalty),
      cmocka_unit_test(test_seed_reproducible),
      cmocka_unit_test(test_distribution_chi_square),
      cmocka_unit_test(test_bad_params),
      cmocka_unit_test(test_distributed_equals_full),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
