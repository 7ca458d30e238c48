/* StreamingLLM policy (kvcache/policy_streaming.c): S sinks + the most recent tokens, C+1 at
 * attention time, the oldest non-sink released, positions original. */
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

static mk_kv_config_t st_cfg(int S, int C) {
  mk_kv_config_t cfg;
  mk_kv_config_default(&cfg);
  cfg.policy = MK_KV_STREAMING;
  cfg.sinks = S;
  cfg.capacity = C;
  return cfg;
}

static void test_validate(void **unused) {
  const mk_kv_policy_ops_t *ops = mk_kv_policy_get(MK_KV_STREAMING);
  assert_non_null(ops);
  assert_string_equal(ops->name, "streaming");
  mk_error_t err = {{0}};
  mk_kv_config_t cfg = st_cfg(4, 4);
  assert_int_equal(ops->validate(&cfg, &err), -1);
  assert_non_null(strstr(err.msg, "kv capacity 4 must exceed kv sinks 4"));
  cfg = st_cfg(-2, 8); /* -1 is MK_KV_SINKS_DEFAULT: the policy's own 4 */
  assert_int_equal(ops->validate(&cfg, &err), -1);
  assert_non_null(strstr(err.msg, "-2"));
  cfg = st_cfg(MK_KV_SINKS_DEFAULT, 4);
  assert_int_equal(ops->validate(&cfg, &err), -1);
  assert_non_null(strstr(err.msg, "kv capacity 4 must exceed kv sinks 4"));
  cfg = st_cfg(4, 5);
  assert_int_equal(ops->validate(&cfg, &err), 0);
  cfg = st_cfg(0, 5);
  assert_int_equal(ops->validate(&cfg, &err), 0);
  /* constant size: slots and state do not depend on the output length */
  cfg = st_cfg(4, 256);
  assert_int_equal(ops->slots_needed(&cfg, 100, 4100), 257);
  assert_int_equal(ops->slots_needed(&cfg, 100, 100100), 257);
  assert_int_equal(ops->slots_needed(&cfg, 100, 200), 200);
  assert_int_equal(ops->slots_needed(&cfg, 500, 100100), 500);
  assert_int_equal((int)ops->state_bytes(&cfg, 257, 64, 3), 0);
}

/* Expected attention set at step t: [0, S) and [t - (C - S), t], or everything while it fits. */
static int expected_set(int S, int C, int t, int32_t *out) {
  int n = 0;
  if (t + 1 <= C + 1) {
    for (int p = 0; p <= t; p++) out[n++] = p;
    return n;
  }
  for (int p = 0; p < S; p++) out[n++] = p;
  for (int p = t - (C - S); p <= t; p++) out[n++] = p;
  return n;
}

static void run(int S, int C, int P, int T, bool random_slots) {
  const int g = 3, d = 8;
  float *q, *k;
  kvsim_random_qk(3, P + T, g, d, 6.0f, &q, &k);
  mk_kv_config_t cfg = st_cfg(S, C);
  kvsim_t s;
  assert_int_equal(kvsim_init(&s, &cfg, g, d, P, P + T, q, k), 0);
  s.random_slots = random_slots;
  assert_int_equal(kvsim_prefill(&s, P), 0);
  int32_t got[512], want[512];
  int n = kvsim_kept(&s, got);
  if (P > C) { /* cut to C at prefill end: sinks + the last C - S prompt tokens */
    assert_int_equal(n, C);
    int m = expected_set(S, C, P, want); /* the set step P will attend, minus P itself */
    assert_int_equal(m - 1, n);
    assert_memory_equal(got, want, sizeof(int32_t) * n);
  } else {
    assert_int_equal(n, P);
  }
  for (int t = P; t < P + T; t++) {
    int n_att = 0;
    assert_int_equal(kvsim_step(&s, t, got, &n_att), 0);
    int m = expected_set(S, C, t, want);
    assert_int_equal(n_att, m);
    assert_memory_equal(got, want, sizeof(int32_t) * m);
    if (n_att == C + 1) assert_int_equal(s.h->n_used, C); /* exactly one released */
  }
  assert_int_equal(s.cache.peak_used_slots, (size_t)C + 1); /* noted after evictions */
  kvsim_free(&s);
  free(q);
  free(k);
}

static void test_windows(void **unused) {
  run(4, 16, 6, 60, false);   /* P < C */
  run(4, 16, 16, 60, false);  /* P = C */
  run(4, 16, 40, 60, true);   /* P > C: cut at prefill end; random slot order */
  run(0, 10, 30, 40, false);  /* no sinks: a pure sliding window */
  run(2, 3, 2, 30, true);     /* one recent token besides the current one */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_validate),
      cmocka_unit_test(test_windows),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
