/* Cache policies inside the engine, on the demo model (issue 3):
 *   (a) morphkv with a capacity >= the run's length never evicts, and its logits are bitwise
 *       equal to the full cache's, prefill and 32 decode steps;
 *   (b) morphkv W=32 C=96 over a 300-token greedy generation: the live K/V bytes are constant
 *       from the first eviction on, equal to C or C+1 slots x layers x KV heads x 2 x head_dim x
 *       4 bytes, and the peak does not depend on the length; the full cache grows one slot per
 *       token;
 *   (c) streaming, h2o and snapkv run end to end with a budget smaller than the prompt
 *       (streaming/h2o bounded; snapkv compressed at prefill, then growing one slot per token);
 *   (d) `morphkv eval` on 2 prompts x 40 tokens writes sane numbers: the second full-cache
 *       engine's KL is exactly 0 at every position, every KL >= 0, agreement in [0, 1],
 *       log-likelihoods <= 0, an evicting policy differs from full somewhere; and bad flags are
 *       refused with exit code 2. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "src/engine.h"
#include "tests/testutil/testutil.h"

/* two engines on the same mapped weights; one thread each, so that a busy machine (spinning
 * OpenMP threads) does not stretch the run */
static mk_engine_t *eng_a, *eng_b;

static const char *PROMPT_SHORT =
    "Write a short story about a lighthouse keeper who finds a message in a bottle.";
/* ~150 tokens: longer than the budgets of (c), so that every policy has to evict at prefill */
static const char *PROMPT_LONG =
    "The history of lighthouses goes back to antiquity. The Pharos of Alexandria, built in the "
    "third century BC, stood for over a thousand years and guided ships into the busy harbour. "
    "Medieval towers burned wood or coal in open braziers; later keepers tended oil lamps with "
    "wicks that had to be trimmed through the night. In the nineteenth century the Fresnel lens "
    "changed everything: concentric rings of glass bent the light into a narrow, powerful beam "
    "that could be seen for twenty miles. Keepers and their families lived at the stations, often "
    "on remote rocks, and logged the weather, passing ships and every hour of the light. Write a "
    "detailed essay about the daily life of a lighthouse keeper in that era.";

static mk_engine_t *open_engine(void) {
  const char *model = mk_test_model_path();
  if (!model) return NULL;
  mk_engine_params_t p = {.model_path = model,
                          .backend = {.kind = MK_BACKEND_CPU, .n_threads = 1, .simd = -1}};
  mk_error_t err = {{0}};
  mk_engine_t *e = NULL;
  if (mk_engine_open(&e, &p, NULL, &err) != 0) {
    fprintf(stderr, "engine: %s\n", err.msg);
    return NULL;
  }
  return e;
}

static int setup(void **state) {
  eng_a = open_engine();
  eng_b = open_engine();
  return eng_a && eng_b ? 0 : -1;
}

static int teardown(void **state) {
  mk_engine_close(eng_a);
  mk_engine_close(eng_b);
  return 0;
}

static int32_t *tokenize(mk_engine_t *e, const char *text, int *n) {
  const mk_tokenizer_t *tok = mk_engine_tokenizer(e);
  int cap = (int)strlen(text) + 8;
  int32_t *ids = malloc(sizeof *ids * (size_t)cap);
  assert_non_null(ids);
  mk_error_t err = {{0}};
  *n = mk_tok_encode(tok, text, strlen(text), mk_tok_add_bos(tok), true, ids, cap, &err);
  assert_true(*n > 0 && *n <= cap);
  return ids;
}

static void begin(mk_engine_t *e, mk_kv_policy_kind_t pol, int window, int capacity, int max_prompt,
                  int max_total) {
  mk_kv_config_t kv;
  mk_kv_config_default(&kv);
  kv.policy = pol;
  kv.window = window;
  kv.capacity = capacity;
  mk_error_t err = {{0}};
  int rc = mk_engine_begin(e, &kv, 1, max_prompt, max_total, &err);
  if (rc) fprintf(stderr, "begin %s: %s\n", mk_kv_policy_name(pol), err.msg);
  assert_int_equal(rc, 0);
}

static void step(mk_engine_t *e, const int32_t *ids, int n, float *logits) {
  mk_error_t err = {{0}};
  int rc = mk_engine_step(e, 0, ids, n, false, logits, &err);
  if (rc) fprintf(stderr, "step: %s\n", err.msg);
  assert_int_equal(rc, 0);
}

static int32_t argmax(const float *l, int n) {
  int32_t b = 0;
  for (int i = 1; i < n; i++)
    if (l[i] > l[b]) b = i;
  return b;
}

static size_t live_bytes(mk_engine_t *e) {
  mk_engine_stats_t s;
  mk_engine_get_stats(e, &s);
  return s.kv_live_bytes;
}

static size_t peak_bytes(mk_engine_t *e) {
  mk_engine_stats_t s;
  mk_engine_get_stats(e, &s);
  return s.kv_peak_bytes;
}

/* bytes of one token's K and V over all layers and KV heads (f32) */
static size_t token_bytes(mk_engine_t *e) {
  const mk_model_config_t *c = mk_engine_config(e);
  return (size_t)c->n_layer * c->n_kv_head * 2 * c->head_dim * sizeof(float);
}

/* (a) */
static void test_morphkv_large_capacity_bitwise_full(void **state) {
  const int V = mk_engine_n_vocab(eng_a), STEPS = 32;
  int np;
  int32_t *ids = tokenize(eng_a, PROMPT_SHORT, &np);
  const int total = np + STEPS + 1;
  begin(eng_a, MK_KV_FULL, 32, 2048, np, total);
  begin(eng_b, MK_KV_MORPHKV, 8, total, np, total); /* capacity >= length: never evicts */
  float *la = malloc(sizeof(float) * (size_t)V), *lb = malloc(sizeof(float) * (size_t)V);
  assert_non_null(la);
  assert_non_null(lb);
  step(eng_a, ids, np, la);
  step(eng_b, ids, np, lb);
  assert_memory_equal(la, lb, sizeof(float) * (size_t)V);
  for (int t = 0; t < STEPS; t++) {
    int32_t y = argmax(la, V);
    step(eng_a, &y, 1, la);
    step(eng_b, &y, 1, lb);
    if (memcmp(la, lb, sizeof(float) * (size_t)V) != 0) fail_msg("logits differ at decode step %d", t);
    assert_int_equal(live_bytes(eng_a), live_bytes(eng_b));
  }
  assert_int_equal(live_bytes(eng_b), (size_t)(np + STEPS) * token_bytes(eng_b));
  /* the policy did run: it keeps a logit ring */
  mk_engine_stats_t s;
  mk_engine_get_stats(eng_b, &s);
  assert_true(s.policy_state_bytes > 0);
  free(la);
  free(lb);
  free(ids);
}

/* Greedy generation of n_new tokens with engine e (already begun); live bytes after each step
 * into live[] (index = tokens fed so far - prompt). Returns the generated ids (malloc'd). */
static int32_t *generate(mk_engine_t *e, const int32_t *prompt, int np, int n_new, size_t *live) {
  const int V = mk_engine_n_vocab(e);
  float *l = malloc(sizeof(float) * (size_t)V);
  int32_t *out = malloc(sizeof(int32_t) * (size_t)n_new);
  assert_non_null(l);
  assert_non_null(out);
  step(e, prompt, np, l);
  if (live) live[0] = live_bytes(e);
  for (int t = 0; t < n_new; t++) {
    for (int i = 0; i < V; i++) assert_true(isfinite(l[i]));
    out[t] = argmax(l, V);
    if (t == n_new - 1) break;
    step(e, &out[t], 1, l);
    if (live) live[t + 1] = live_bytes(e);
  }
  free(l);
  return out;
}

/* (b) */
static void test_morphkv_constant_memory(void **state) {
  const int W = 32, C = 96, N = 300;
  int np;
  int32_t *ids = tokenize(eng_a, PROMPT_SHORT, &np);
  assert_true(np < C);
  const size_t tb = token_bytes(eng_a);
  size_t *live_m = calloc((size_t)N, sizeof(size_t)), *live_f = calloc((size_t)N, sizeof(size_t));
  assert_non_null(live_m);
  assert_non_null(live_f);

  begin(eng_a, MK_KV_MORPHKV, W, C, np, np + N);
  int32_t *gm = generate(eng_a, ids, np, N, live_m);
  size_t peak_m = peak_bytes(eng_a);
  /* the same generation cut at 150 tokens: the same peak */
  begin(eng_b, MK_KV_MORPHKV, W, C, np, np + 150);
  int32_t *gm150 = generate(eng_b, ids, np, 150, NULL);
  assert_memory_equal(gm, gm150, sizeof(int32_t) * 150);
  assert_int_equal(peak_bytes(eng_b), peak_m);
  free(gm150);

  /* live bytes: tokens seen until the budget is reached, then constant */
  int first = -1;
  for (int t = 0; t < N; t++) {
    size_t tokens = (size_t)np + (size_t)t;
    if (first < 0 && live_m[t] < tokens * tb) first = t;
    if (first < 0) assert_int_equal(live_m[t], tokens * tb);
  }
  assert_true(first > 0);
  size_t steady = live_m[first];
  assert_true(steady == (size_t)C * tb || steady == (size_t)(C + 1) * tb);
  for (int t = first; t < N; t++)
    if (live_m[t] != steady) fail_msg("morphkv live bytes %zu at step %d, %zu from step %d on", live_m[t], t, steady, first);
  assert_true(peak_m <= (size_t)(C + 1) * tb);
  assert_true(peak_m >= steady);

  /* full: one slot per token */
  begin(eng_a, MK_KV_FULL, W, 2048, np, np + N);
  int32_t *gf = generate(eng_a, ids, np, N, live_f);
  for (int t = 0; t < N; t++) assert_int_equal(live_f[t], ((size_t)np + (size_t)t) * tb);
  assert_true(peak_bytes(eng_a) >= (size_t)(np + N - 1) * tb);
  assert_true(peak_bytes(eng_a) > 2 * peak_m);
  /* both start the same way (no eviction before the budget is reached) */
  assert_memory_equal(gf, gm, sizeof(int32_t) * (size_t)(C - np));
  free(gf);
  free(gm);
  free(live_m);
  free(live_f);
  free(ids);
}

/* (c) */
static void test_baselines_end_to_end(void **state) {
  const int W = 16, C = 64, N = 100;
  int np;
  int32_t *ids = tokenize(eng_a, PROMPT_LONG, &np);
  assert_true(np > C + 20);
  const size_t tb = token_bytes(eng_a);
  size_t *live = calloc((size_t)N, sizeof(size_t));
  assert_non_null(live);
  const mk_kv_policy_kind_t pols[] = {MK_KV_STREAMING, MK_KV_H2O, MK_KV_SNAPKV};
  for (size_t p = 0; p < sizeof pols / sizeof pols[0]; p++) {
    begin(eng_a, pols[p], W, C, np, np + N);
    int32_t *g = generate(eng_a, ids, np, N, live);
    const int V = mk_engine_n_vocab(eng_a);
    for (int t = 0; t < N; t++) assert_true(g[t] >= 0 && g[t] < V);
    mk_engine_stats_t s;
    mk_engine_get_stats(eng_a, &s);
    if (pols[p] == MK_KV_SNAPKV) {
      /* compressed to C at prefill, then one more slot per token */
      for (int t = 0; t < N; t++)
        if (live[t] != ((size_t)C + (size_t)t) * tb)
          fail_msg("snapkv live %zu at step %d, want %zu", live[t], t, ((size_t)C + t) * tb);
    } else {
      for (int t = 0; t < N; t++)
        if (live[t] > (size_t)(C + 1) * tb)
          fail_msg("%s live %zu at step %d exceeds C+1 slots", mk_kv_policy_name(pols[p]), live[t], t);
      assert_int_equal(live[N - 1], live[N / 2]);
      /* the peak is the prompt's transient, not the run's length */
      assert_true(s.kv_peak_bytes <= (size_t)np * tb);
    }
    free(g);
  }
  free(live);
  free(ids);
}

/* ---- (d) the eval harness through the binary ------------------------------------------------ */

#define RUN(log, ...) mk_test_run_binary((const char *const[]){__VA_ARGS__, NULL}, log)

typedef struct csv_row {
  char prompt[16], policy[16], budget[16];
  int positions;
  double kl, agree, ll;
} csv_row_t;

static void test_eval_tiny(void **state) {
  char dir[] = "/tmp/mk_eval_test_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char out[512], log[512];
  snprintf(out, sizeof out, "%s/out", dir);
  snprintf(log, sizeof log, "%s/stderr.txt", dir);
  const char *prompts = mk_test_source_path("tests/golden/longwriter/longbench_write_en.jsonl");
  char prompts_copy[4096];
  snprintf(prompts_copy, sizeof prompts_copy, "%s", prompts);
  int rc = RUN(log, "eval", "--model", mk_test_model_path(), "--prompts", prompts_copy, "--new-tokens",
               "40", "--n-prompts", "2", "--min-words", "2000", "--policies",
               "full,morphkv,streaming", "--capacity", "40", "--window", "16", "--threads", "1",
               "--out", out, "--no-plot");
  if (rc != 0) {
    char *l = mk_test_read_file(log, NULL);
    fprintf(stderr, "%s\n", l ? l : "(no log)");
    free(l);
  }
  assert_int_equal(rc, 0);

  char path[1024];
  snprintf(path, sizeof path, "%s/summary.csv", out);
  char *csv = mk_test_read_file(path, NULL);
  assert_non_null(csv);
  int n_rows = 0, n_full = 0, n_evicting_diff = 0;
  char *save = NULL;
  char *line = strtok_r(csv, "\n", &save); /* header */
  assert_non_null(strstr(line, "mean_kl"));
  while ((line = strtok_r(NULL, "\n", &save))) {
    csv_row_t r;
    char cap_s[16];
    int ptok;
    /* prompt,policy,budget,prompt_tokens,positions,capacity,mean_kl,top1_agree,mean_loglik,... */
    int got = sscanf(line, "%15[^,],%15[^,],%15[^,],%d,%d,%15[^,],%lf,%lf,%lf", r.prompt, r.policy,
                     r.budget, &ptok, &r.positions, cap_s, &r.kl, &r.agree, &r.ll);
    assert_int_equal(got, 9);
    n_rows++;
    assert_int_equal(r.positions, 40);
    assert_true(r.kl >= 0.0);
    assert_true(r.agree >= 0.0 && r.agree <= 1.0);
    assert_true(r.ll <= 0.0);
    if (!strcmp(r.policy, "full")) {
      assert_true(r.kl == 0.0);
      assert_true(r.agree == 1.0);
      n_full++;
    } else if (r.kl > 0.0) {
      n_evicting_diff++;
    }
  }
  free(csv);
  /* per prompt: the reference row, full, morphkv, streaming */
  assert_int_equal(n_rows, 2 * 4);
  assert_int_equal(n_full, 2 * 2);
  assert_true(n_evicting_diff >= 1);

  /* the per-position file of the second full engine: every KL exactly 0; morphkv's: 40 rows */
  snprintf(path, sizeof path, "%s/p37_full_all.csv", out);
  char *pos = mk_test_read_file(path, NULL);
  assert_non_null(pos);
  int rows = 0;
  save = NULL;
  line = strtok_r(pos, "\n", &save);
  assert_string_equal(line, "position,kl,top1_agree,loglik,kv_bytes,distance,ngram,long_range,in_loop");
  while ((line = strtok_r(NULL, "\n", &save))) {
    int p, ag, dist, ng, lr, lp;
    double kl, ll;
    unsigned long long kvb;
    assert_int_equal(sscanf(line, "%d,%lf,%d,%lf,%llu,%d,%d,%d,%d", &p, &kl, &ag, &ll, &kvb, &dist, &ng,
                            &lr, &lp), 9);
    assert_int_equal(p, rows);
    assert_int_equal(lr, 0); /* the full cache holds every distance */
    assert_true(dist == -1 ? ng == 0 : dist >= 1 && ng >= 2);
    assert_true(kl == 0.0);
    assert_int_equal(ag, 1);
    rows++;
  }
  assert_int_equal(rows, 40);
  free(pos);
  snprintf(path, sizeof path, "%s/p37_morphkv_c40.csv", out);
  pos = mk_test_read_file(path, NULL);
  assert_non_null(pos);
  int lines = 0;
  for (char *c = pos; *c; c++) lines += *c == '\n';
  assert_int_equal(lines, 41);
  free(pos);
  snprintf(path, sizeof path, "%s/summary.md", out);
  char *md = mk_test_read_file(path, NULL);
  assert_non_null(md);
  assert_non_null(strstr(md, "morphkv eval --model"));
  assert_non_null(strstr(md, "| morphkv | C=40 |"));
  free(md);

  /* bad flags: exit code 2 before any model is loaded */
  assert_int_equal(RUN(log, "eval", "--model", mk_test_model_path(), "--prompts", prompts_copy,
                       "--new-tokens", "4", "--policies", "morphkv,lru", "--capacity", "64", "--out", out),
                   2);
  assert_int_equal(RUN(log, "eval", "--model", mk_test_model_path(), "--prompts", prompts_copy,
                       "--new-tokens", "4", "--policies", "morphkv", "--capacity", "16", "--window",
                       "32", "--out", out),
                   2);
  char *l = mk_test_read_file(log, NULL);
  assert_non_null(l);
  assert_non_null(strstr(l, "must exceed kv window"));
  free(l);
  assert_int_equal(RUN(log, "eval", "--model", mk_test_model_path(), "--prompts", prompts_copy,
                       "--new-tokens", "4", "--policies", "morphkv", "--budget-frac", "1.5", "--out", out),
                   2);
  assert_int_equal(RUN(log, "eval", "--model", mk_test_model_path(), "--prompts", prompts_copy,
                       "--new-tokens", "4", "--policies", "morphkv", "--out", out),
                   2);
  assert_int_equal(RUN(log, "eval", "--bogus", "1"), 2);
  assert_int_equal(RUN(log, "eval", "--help"), 0);
  /* a fraction budget that leaves no room beyond the window is refused per prompt (exit 1) */
  assert_int_equal(RUN(log, "eval", "--model", mk_test_model_path(), "--prompts", prompts_copy,
                       "--new-tokens", "8", "--n-prompts", "1", "--policies", "morphkv",
                       "--budget-frac", "0.05", "--window", "32", "--out", out, "--no-plot"),
                   1);
  l = mk_test_read_file(log, NULL);
  assert_non_null(l);
  assert_non_null(strstr(l, "budget 0.05"));
  free(l);
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_morphkv_large_capacity_bitwise_full),
      cmocka_unit_test(test_morphkv_constant_memory),
      cmocka_unit_test(test_baselines_end_to_end),
      cmocka_unit_test(test_eval_tiny),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
