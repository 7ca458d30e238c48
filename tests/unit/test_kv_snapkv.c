/* SnapKV policy (kvcache/policy_snapkv.c): one selection at prefill end from the pooled votes of
 * the last w prompt queries (group-summed causal probabilities), recomputed here in double from
 * q/k; no eviction during decode. */
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
#include "tests/unit/test_kv_sim.h"

static mk_kv_config_t snap_cfg(int w, int B, int pool, bool maxpool) {
  mk_kv_config_t cfg;
  mk_kv_config_default(&cfg);
  cfg.policy = MK_KV_SNAPKV;
  cfg.window = w;
  cfg.capacity = B;
  cfg.snapkv_pool = pool;
  cfg.snapkv_maxpool = maxpool;
  return cfg;
}

static void test_validate(void **unused) {
  const mk_kv_policy_ops_t *ops = mk_kv_policy_get(MK_KV_SNAPKV);
  assert_non_null(ops);
  assert_string_equal(ops->name, "snapkv");
  mk_error_t err = {{0}};
  mk_kv_config_t cfg = snap_cfg(32, 32, 5, false);
  assert_int_equal(ops->validate(&cfg, &err), -1);
  assert_non_null(strstr(err.msg, "kv capacity 32 must exceed kv window 32"));
  cfg = snap_cfg(8, 32, 4, false);
  assert_int_equal(ops->validate(&cfg, &err), -1);
  assert_non_null(strstr(err.msg, "pooling kernel 4"));
  cfg = snap_cfg(0, 32, 5, false);
  assert_int_equal(ops->validate(&cfg, &err), -1);
  cfg = snap_cfg(8, 32, 5, false);
  assert_int_equal(ops->validate(&cfg, &err), 0);
  assert_int_equal(ops->prefill_rows(&cfg), 8);
  /* grows during decode: slots for the whole run */
  assert_int_equal(ops->slots_needed(&cfg, 100, 400), 400);
}

/* Reference pooled votes of the prefix positions [0, P-w). */
static void ref_select(const float *q, const float *k, int g, int d, int P, int w, int B, int ks,
                       bool maxpool, double *pooled) {
  int L = P - w;
  double *vote = calloc((size_t)P, sizeof(double)), *pr = malloc(sizeof(double) * P);
  int32_t *set = malloc(sizeof(int32_t) * P);
  for (int i = P - w; i < P; i++) {
    for (int p = 0; p <= i; p++) set[p] = p;
    kvsim_ref_prob_sum(q, k, g, d, i, set, i + 1, pr);
    for (int p = 0; p <= i; p++) vote[p] += pr[p];
  }
  for (int p = 0; p < L; p++) {
    double a = maxpool ? -INFINITY : 0;
    for (int j = p - ks / 2; j <= p + ks / 2; j++) {
      double x = (j >= 0 && j < L) ? vote[j] : (maxpool ? -INFINITY : 0.0); /* zero padding */
      a = maxpool ? fmax(a, x) : a + x;
    }
    pooled[p] = maxpool ? a : a / ks;
  }
  free(vote);
  free(pr);
  free(set);
}

static void run(int w, int B, int ks, bool maxpool, int P, int T, int g, bool random_slots,
                uint64_t seed) {
  const int d = 16;
  const double tol = 1e-5;
  float *q, *k;
  kvsim_random_qk(seed, P + T, g, d, 6.0f, &q, &k);
  mk_kv_config_t cfg = snap_cfg(w, B, ks, maxpool);
  kvsim_t s;
  assert_int_equal(kvsim_init(&s, &cfg, g, d, P, P + T, q, k), 0);
  s.random_slots = random_slots;
  assert_int_equal(kvsim_prefill(&s, P), 0);
  int32_t *kept = malloc(sizeof(int32_t) * (P + T));
  int n = kvsim_kept(&s, kept);
  if (P <= B) {
    assert_int_equal(n, P);
  } else {
    assert_int_equal(n, B);
    for (int p = P - w; p < P; p++) assert_true(kvsim_contains(kept, n, p)); /* the window */
    double *pooled = malloc(sizeof(double) * P);
    ref_select(q, k, g, d, P, w, B, ks, maxpool, pooled);
    double min_kept = INFINITY, max_drop = -INFINITY;
    for (int p = 0; p < P - w; p++) {
      if (kvsim_contains(kept, n, p))
        min_kept = fmin(min_kept, pooled[p]);
      else
        max_drop = fmax(max_drop, pooled[p]);
    }
    if (!(min_kept >= max_drop - tol))
      fprintf(stderr, "snapkv: kept %.8f < dropped %.8f\n", min_kept, max_drop);
    assert_true(min_kept >= max_drop - tol);
    if (!maxpool) assert_true(min_kept > max_drop + tol); /* these seeds are tie-free */
    /* max pooling repeats a vote over neighbours: exact ties, where the older token wins */
    int ties = 0;
    for (int a = 0; a < P - w; a++)
      for (int b = a + 1; b < P - w; b++)
        if (pooled[a] == pooled[b] && kvsim_contains(kept, n, b)) {
          assert_true(kvsim_contains(kept, n, a));
          ties++;
        }
    if (maxpool) assert_true(ties > 0);
    free(pooled);
  }
  /* decode: never evicts; grows by one per token */
  for (int t = P; t < P + T; t++) {
    int n_att = 0;
    assert_int_equal(kvsim_step(&s, t, kept, &n_att), 0);
    assert_int_equal(n_att, n + (t - P) + 1);
    assert_int_equal(s.h->n_used, n_att);
  }
  free(kept);
  kvsim_free(&s);
  free(q);
  free(k);
}

static void test_select(void **unused) {
  run(8, 24, 5, false, 20, 10, 3, false, 1);  /* P < B: everything kept */
  run(8, 24, 5, false, 24, 10, 3, false, 2);  /* P = B */
  run(8, 24, 5, false, 90, 30, 3, false, 3);  /* avg pool */
  run(8, 24, 5, true, 90, 30, 3, true, 4);    /* max pool, random slots */
  run(4, 20, 1, false, 60, 10, 1, false, 5);  /* no pooling, MHA */
  run(16, 40, 7, false, 200, 10, 2, false, 6);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_validate),
      cmocka_unit_test(test_select),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
