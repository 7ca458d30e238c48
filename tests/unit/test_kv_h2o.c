/* H2O policy (kvcache/policy_h2o.c), canonical form: C-W heavy hitters by accumulated attention
 * + the W+1 most recent, checked at every step against accumulators recomputed in double from the
 * stored q/k over the sets each query actually attended. */
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

static mk_kv_config_t h2o_cfg(int W, int C) {
  mk_kv_config_t cfg;
  mk_kv_config_default(&cfg);
  cfg.policy = MK_KV_H2O;
  cfg.window = W;
  cfg.capacity = C;
  return cfg;
}

static void test_validate(void **unused) {
  const mk_kv_policy_ops_t *ops = mk_kv_policy_get(MK_KV_H2O);
  assert_non_null(ops);
  assert_string_equal(ops->name, "h2o");
  mk_error_t err = {{0}};
  mk_kv_config_t cfg = h2o_cfg(32, 32);
  assert_int_equal(ops->validate(&cfg, &err), -1);
  assert_non_null(strstr(err.msg, "kv capacity 32 must exceed kv window 32"));
  cfg = h2o_cfg(-1, 8);
  assert_int_equal(ops->validate(&cfg, &err), -1);
  cfg = h2o_cfg(0, 8);
  assert_int_equal(ops->validate(&cfg, &err), 0);
  assert_int_equal(ops->prefill_rows(&cfg), INT32_MAX);
  assert_true(ops->needs(&cfg) & MK_KV_NEED_PROB_SUM);
  cfg.h2o_mode = MK_KV_H2O_PER_HEAD;
  assert_true(ops->needs(&cfg) & MK_KV_NEED_PER_HEAD);
  /* constant size */
  cfg = h2o_cfg(32, 256);
  assert_int_equal(ops->slots_needed(&cfg, 100, 4100), 257);
  assert_int_equal(ops->slots_needed(&cfg, 100, 100100), 257);
  assert_int_equal(ops->slots_needed(&cfg, 600, 100100), 600);
  assert_true(ops->state_bytes(&cfg, 257, 64, 3) >= 257 * 4);
}

/* Runs the policy; refacc[pos] follows every observed query over the set it attended. */
static void run(int W, int C, int P, int T, int g, mk_kv_h2o_mode_t mode, bool random_slots,
                uint64_t seed, int32_t *traj, int stride) {
  const int d = 16;
  const double tol = 1e-4;
  int n_pos = P + T;
  float *q, *k;
  kvsim_random_qk(seed, n_pos, g, d, 6.0f, &q, &k);
  mk_kv_config_t cfg = h2o_cfg(W, C);
  cfg.h2o_mode = mode;
  kvsim_t s;
  assert_int_equal(kvsim_init(&s, &cfg, g, d, P, n_pos, q, k), 0);
  s.random_slots = random_slots;
  double *refacc = calloc((size_t)n_pos, sizeof(double));
  double *pr = malloc(sizeof(double) * n_pos);
  int32_t *set = malloc(sizeof(int32_t) * n_pos), *after = malloc(sizeof(int32_t) * n_pos);
  int n_evict = 0, n_clear = 0;
  for (int64_t step = P - 1; step < n_pos; step++) {
    int64_t next_pos = step + 1;
    int nb = 0;
    if (step == P - 1) { /* prefill: every prompt query, causal */
      for (int i = 0; i < P; i++) {
        int n = 0;
        for (int p = 0; p <= i; p++) set[n++] = p;
        kvsim_ref_prob_sum(q, k, g, d, i, set, n, pr);
        for (int j = 0; j < n; j++) refacc[set[j]] += pr[j];
      }
      int rc = kvsim_prefill(&s, P); /* every prompt row observed, then evict */
      nb = s.n_att;
      memcpy(set, s.att, sizeof(int32_t) * (size_t)nb);
      if (mode == MK_KV_H2O_PER_HEAD && g > 1) { /* refused, with a message */
        assert_int_equal(rc, -1);
        assert_non_null(strstr(s.err.msg, "3 query heads"));
        break;
      }
      assert_int_equal(rc, 0);
    } else {
      assert_int_equal(kvsim_step(&s, step, set, &nb), 0); /* set: the slots at attention */
      assert_int_equal(nb, step + 1 < C + 1 ? step + 1 : C + 1); /* C+1 at attention */
      for (int64_t r = step - W; r <= step; r++)
        if (r >= 0) assert_true(kvsim_contains(set, nb, (int32_t)r));
      if (traj) {
        memset(traj + (size_t)(step - P) * stride, 0xff, sizeof(int32_t) * stride);
        memcpy(traj + (size_t)(step - P) * stride, set, sizeof(int32_t) * nb);
      }
      kvsim_ref_prob_sum(q, k, g, d, step, set, nb, pr);
      for (int j = 0; j < nb; j++) refacc[set[j]] += pr[j];
    }
    int na = kvsim_kept(&s, after);
    int ncand = 0;
    for (int i = 0; i < nb; i++) ncand += set[i] < next_pos - W;
    if (nb < C || ncand <= C - W) {
      assert_int_equal(na, nb);
      continue;
    }
    n_evict++;
    assert_int_equal(na, C);
    if (nb == C + 1) assert_int_equal(na, nb - 1); /* steady state: one per step */
    double min_kept = INFINITY, max_drop = -INFINITY;
    for (int i = 0; i < nb; i++) {
      bool kept = kvsim_contains(after, na, set[i]);
      if (set[i] >= next_pos - W) {
        assert_true(kept);
        continue;
      }
      if (kept)
        min_kept = fmin(min_kept, refacc[set[i]]);
      else
        max_drop = fmax(max_drop, refacc[set[i]]);
    }
    if (min_kept < max_drop - tol)
      fprintf(stderr, "h2o step %lld: kept acc %.6f < released %.6f\n", (long long)step,
              min_kept, max_drop);
    assert_true(min_kept >= max_drop - tol);
    n_clear += min_kept > max_drop + tol;
  }
  if (!(mode == MK_KV_H2O_PER_HEAD && g > 1)) {
    assert_true(n_evict > T / 2);
    assert_true(n_clear * 10 >= n_evict * 9);
  }
  free(refacc);
  free(pr);
  free(set);
  free(after);
  kvsim_free(&s);
  free(q);
  free(k);
}

static void test_group(void **unused) {
  run(4, 12, 8, 200, 3, MK_KV_H2O_GROUP, false, 1, NULL, 0);  /* P < C */
  run(4, 12, 12, 200, 3, MK_KV_H2O_GROUP, false, 2, NULL, 0); /* P = C */
  run(4, 12, 40, 200, 3, MK_KV_H2O_GROUP, false, 3, NULL, 0); /* P > C: all prompt rows count */
  run(0, 10, 20, 200, 2, MK_KV_H2O_GROUP, false, 4, NULL, 0); /* W = 0: recent = current only */
  run(8, 30, 50, 200, 1, MK_KV_H2O_GROUP, true, 5, NULL, 0);  /* random slot reuse */
}

/* Slot reuse must not carry an evicted token's acc over to the new tenant: the kept sets do not
 * depend on which free slot a token takes. */
static void test_slot_order(void **unused) {
  enum { T = 200, S = 64 };
  int32_t *a = malloc(sizeof(int32_t) * S * T), *b = malloc(sizeof(int32_t) * S * T);
  run(4, 16, 30, T, 3, MK_KV_H2O_GROUP, false, 9, a, S);
  run(4, 16, 30, T, 3, MK_KV_H2O_GROUP, true, 9, b, S);
  assert_memory_equal(a, b, sizeof(int32_t) * S * T);
  free(a);
  free(b);
}

/* per_head: one query head per stored head is the same selection as group; a larger group is
 * refused (this cache keeps one set per stored KV head). */
static void test_per_head(void **unused) {
  enum { T = 120, S = 64 };
  int32_t *a = malloc(sizeof(int32_t) * S * T), *b = malloc(sizeof(int32_t) * S * T);
  run(4, 16, 20, T, 1, MK_KV_H2O_GROUP, false, 11, a, S);
  run(4, 16, 20, T, 1, MK_KV_H2O_PER_HEAD, false, 11, b, S);
  assert_memory_equal(a, b, sizeof(int32_t) * S * T);
  run(4, 16, 20, T, 3, MK_KV_H2O_PER_HEAD, false, 11, NULL, 0);
  free(a);
  free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_validate),
      cmocka_unit_test(test_group),
      cmocka_unit_test(test_slot_order),
      cmocka_unit_test(test_per_head),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
