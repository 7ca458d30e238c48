/* MorphKV against the independent NumPy reference (tests/golden/morphkv/morphkv_ref.py): the
 * golden files hold random post-RoPE q (g heads) and k per position and, per decode step, the
 * positions the reference attends over. The same q/k go through the C policy via the simulated
 * engine (acquire/write, attend, observe, evict) and the attention sets must be equal at every
 * step. The cases cover sum and max fusion, logit_sum and prob_max, P < W, P < C, P = C, P > C,
 * W = 1 and bursty eviction. */
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

typedef struct cursor {
  const char *p;
} cursor_t;

/* Next whitespace-separated token (comment lines skipped) into buf; false at the end. */
static bool next_tok(cursor_t *c, char *buf, size_t cap) {
  for (;;) {
    while (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t') c->p++;
    if (*c->p == '#') {
      while (*c->p && *c->p != '\n') c->p++;
      continue;
    }
    break;
  }
  if (!*c->p) return false;
  size_t n = 0;
  while (*c->p && *c->p != ' ' && *c->p != '\n' && *c->p != '\r' && *c->p != '\t') {
    if (n + 1 < cap) buf[n++] = *c->p;
    c->p++;
  }
  buf[n] = 0;
  return true;
}

static long tok_long(cursor_t *c) {
  char b[64];
  assert_true(next_tok(c, b, sizeof b));
  char *end;
  long v = strtol(b, &end, 10);
  assert_true(*end == 0);
  return v;
}

static float tok_float(cursor_t *c) {
  char b[64];
  assert_true(next_tok(c, b, sizeof b));
  char *end;
  float v = strtof(b, &end);
  assert_true(*end == 0);
  return v;
}

static void expect_tok(cursor_t *c, const char *want) {
  char b[64];
  assert_true(next_tok(c, b, sizeof b));
  assert_string_equal(b, want);
}

static void run_golden(const char *name) {
  char rel[256];
  snprintf(rel, sizeof rel, "tests/golden/morphkv/%s.txt", name);
  char *text = mk_test_read_file(mk_test_source_path(rel), NULL);
  if (!text) fprintf(stderr, "cannot read %s\n", mk_test_source_path(rel));
  assert_non_null(text);
  cursor_t c = {text};
  char key[64], val[64];
  int W = 0, C = 0, P = 0, T = 0, g = 0, d = 0;
  mk_kv_config_t cfg;
  mk_kv_config_default(&cfg);
  cfg.policy = MK_KV_MORPHKV;
  for (;;) {
    assert_true(next_tok(&c, key, sizeof key));
    if (strcmp(key, "q") == 0) break;
    assert_true(next_tok(&c, val, sizeof val));
    if (!strcmp(key, "W")) W = atoi(val);
    else if (!strcmp(key, "C")) C = atoi(val);
    else if (!strcmp(key, "P")) P = atoi(val);
    else if (!strcmp(key, "T")) T = atoi(val);
    else if (!strcmp(key, "g")) g = atoi(val);
    else if (!strcmp(key, "d")) d = atoi(val);
    else if (!strcmp(key, "fusion")) cfg.fusion = !strcmp(val, "max") ? MK_KV_FUSION_MAX : MK_KV_FUSION_SUM;
    else if (!strcmp(key, "gqa")) cfg.gqa = !strcmp(val, "prob_max") ? MK_KV_GQA_PROB_MAX : MK_KV_GQA_LOGIT_SUM;
    else if (!strcmp(key, "ea")) cfg.evict_after = strtof(val, NULL);
  }
  assert_true(W > 0 && C > W && P > 0 && T > 0 && g > 0 && g <= KVSIM_MAX_G && d > 0);
  cfg.window = W;
  cfg.capacity = C;
  int N = P + T;
  float *q = malloc(sizeof(float) * N * g * d), *k = malloc(sizeof(float) * N * d);
  for (int i = 0; i < N * g * d; i++) q[i] = tok_float(&c);
  expect_tok(&c, "k");
  for (int i = 0; i < N * d; i++) k[i] = tok_float(&c);
  expect_tok(&c, "kept");

  kvsim_t s;
  assert_int_equal(kvsim_init(&s, &cfg, g, d, P, N, q, k), 0);
  assert_int_equal(kvsim_prefill(&s, P), 0);
  int32_t *att = malloc(sizeof(int32_t) * s.h->n_slots), *want = malloc(sizeof(int32_t) * N);
  int evicting_steps = 0;
  for (int t = P; t < N; t++) {
    int n_att = 0;
    assert_int_equal(kvsim_step(&s, t, att, &n_att), 0);
    assert_int_equal(tok_long(&c), t);
    int n = (int)tok_long(&c);
    for (int i = 0; i < n; i++) want[i] = (int32_t)tok_long(&c);
    if (n != n_att || memcmp(att, want, sizeof(int32_t) * n) != 0) {
      fprintf(stderr, "%s step %d:\n  C:    ", name, t);
      for (int i = 0; i < n_att; i++) fprintf(stderr, " %d", att[i]);
      fprintf(stderr, "\n  NumPy:");
      for (int i = 0; i < n; i++) fprintf(stderr, " %d", want[i]);
      fprintf(stderr, "\n");
    }
    assert_int_equal(n_att, n);
    assert_memory_equal(att, want, sizeof(int32_t) * n);
    evicting_steps += n < t + 1;
  }
  expect_tok(&c, "end");
  assert_true(evicting_steps > 0);
  kvsim_free(&s);
  free(att);
  free(want);
  free(q);
  free(k);
  free(text);
}

static void test_golden_cases(void **unused) {
  char *idx = mk_test_read_file(mk_test_source_path("tests/golden/morphkv/cases.txt"), NULL);
  assert_non_null(idx);
  cursor_t c = {idx};
  char name[128];
  int n = 0;
  while (next_tok(&c, name, sizeof name)) {
    run_golden(name);
    n++;
  }
  assert_true(n >= 8);
  free(idx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_golden_cases),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
