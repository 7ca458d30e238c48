/* The modes of `morphkv eval` added for issue 13, each run end to end through the binary on the
 * demo model with a few tokens (seconds each): policy variants and the distance strata, --task
 * recall, --task free, and a reference decoded with a repetition penalty. The numbers are checked
 * where they are known exactly: a second full-cache engine must match the reference bit for bit
 * in every mode; strata counts must add up to the positions; a variant that cannot fit the
 * budget must be reported as skipped. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/testutil/testutil.h"

#define RUN(log, ...) mk_test_run_binary((const char *const[]){__VA_ARGS__, NULL}, log)

static char dir[64], out[128], log_path[128];

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/mk_eval_modes_XXXXXX");
  if (!mkdtemp(dir)) return -1;
  snprintf(out, sizeof out, "%s/out", dir);
  snprintf(log_path, sizeof log_path, "%s/stderr.txt", dir);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void expect_ok(int rc) {
  if (rc != 0) {
    char *l = mk_test_read_file(log_path, NULL);
    fprintf(stderr, "%s\n", l ? l : "(no log)");
    free(l);
  }
  assert_int_equal(rc, 0);
}

static char *read_out(const char *name) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", out, name);
  char *s = mk_test_read_file(path, NULL);
  if (!s) fail_msg("%s was not written", path);
  return s;
}

/* The comma-separated fields of a CSV line (in place); returns the count. */
static int fields(char *line, char **f, int cap) {
  int n = 0;
  for (char *p = line; n < cap;) {
    f[n++] = p;
    char *c = strchr(p, ',');
    if (!c) break;
    *c = 0;
    p = c + 1;
  }
  return n;
}

static void test_variants_and_strata(void **state) {
  (void)state;
  const char *prompts = mk_test_source_path("tests/golden/longwriter/longbench_write_en.jsonl");
  char pr[4096];
  snprintf(pr, sizeof pr, "%s", prompts);
  expect_ok(RUN(log_path, "eval", "--model", mk_test_model_path(), "--prompts", pr, "--min-words", "2000",
                "--n-prompts", "1", "--new-tokens", "24", "--policies",
                "full,morphkv,morphkv:s4,morphkv:fmax,morphkv:w64", "--capacity", "40", "--window", "8",
                "--threads", "1", "--out", out, "--no-plot", "--quiet"));
  char *md = read_out("summary.md");
  assert_non_null(strstr(md, "| morphkv-s4 | C=40 |"));
  assert_non_null(strstr(md, "| morphkv-fmax | C=40 |"));
  assert_non_null(strstr(md, "morphkv-w64 at budget c40 skipped 1 prompt(s)")); /* W = 64 >= C */
  assert_non_null(strstr(md, "| n long | KL long |"));
  free(md);
  char *csv = read_out("summary.csv"), *save = NULL, *f[64] = {0};
  char *line = strtok_r(csv, "\n", &save);
  assert_non_null(strstr(line, "n_novel,kl_novel,agree_novel,loglik_novel,n_local"));
  int rows = 0;
  while ((line = strtok_r(NULL, "\n", &save))) {
    int n = fields(line, f, 64);
    assert_int_equal(n, 28);
    if (!strcmp(f[2], "reference")) continue;
    rows++;
    /* novel + local + long = positions; noloop <= positions */
    int pos = atoi(f[4]), nn = atoi(f[12]), nl = atoi(f[16]), ng = atoi(f[20]), nk = atoi(f[24]);
    assert_int_equal(nn + nl + ng, pos);
    assert_true(nk <= pos);
    if (!strcmp(f[1], "full")) assert_int_equal(ng, 0); /* the full cache holds every distance */
  }
  assert_int_equal(rows, 4); /* full, morphkv, morphkv-s4, morphkv-fmax (w64 skipped) */
  free(csv);
  /* the sink run kept positions 0..3: its per-position file exists and has 24 rows */
  char *pos = read_out("p37_morphkv-s4_c40.csv");
  int lines = 0;
  for (char *c = pos; *c; c++) lines += *c == '\n';
  assert_int_equal(lines, 25);
  free(pos);
  /* a setting a variant does not know, and settings on the full cache, are usage errors */
  assert_int_equal(RUN(log_path, "eval", "--model", mk_test_model_path(), "--prompts", pr, "--new-tokens", "4",
                       "--policies", "morphkv:z3", "--capacity", "40", "--out", out), 2);
  assert_int_equal(RUN(log_path, "eval", "--model", mk_test_model_path(), "--prompts", pr, "--new-tokens", "4",
                       "--policies", "full:w8", "--out", out), 2);
}

static void test_recall(void **state) {
  (void)state;
  const char *prompts = mk_test_source_path("tests/golden/recall/recall_prompts.jsonl");
  char pr[4096];
  snprintf(pr, sizeof pr, "%s", prompts);
  expect_ok(RUN(log_path, "eval", "--model", mk_test_model_path(), "--prompts", pr, "--task", "recall",
                "--n-prompts", "1", "--new-tokens", "8", "--policies", "full,morphkv:s2", "--capacity", "24",
                "--window", "4", "--threads", "1", "--out", out, "--no-plot", "--quiet"));
  char *csv = read_out("recall.csv"), *save = NULL, *f[16] = {0};
  char *line = strtok_r(csv, "\n", &save);
  assert_string_equal(line, "prompt,question,policy,budget,capacity,distance,answer_tokens,answer_loglik,"
                            "exact,full_answer_loglik,full_exact,nearest");
  int rows = 0, ref_exact = 0;
  while ((line = strtok_r(NULL, "\n", &save))) {
    assert_int_equal(fields(line, f, 16), 12);
    rows++;
    assert_true(atoi(f[5]) > 8);  /* the fact lies in the prompt, before the 8 new tokens */
    /* the answer's last copy: the fact itself, or a restatement in the 8 new tokens (nearer) */
    assert_true(atoi(f[11]) > 0 && atoi(f[11]) <= atoi(f[5]));
    assert_true(atoi(f[6]) >= 1); /* answer tokens */
    assert_true(atof(f[7]) <= 0.0);
    if (!strcmp(f[2], "full")) { /* the reference and the second full engine: the same, exactly */
      assert_string_equal(f[7], f[9]);
      assert_string_equal(f[8], f[10]);
      if (!strcmp(f[3], "reference")) ref_exact += atoi(f[8]);
    }
  }
  assert_int_equal(rows, 6 * 3); /* 6 questions x (reference, full, morphkv-s2) */
  /* 8 tokens after the facts, the full cache recalls most of them (it recalls all 6 at 30) */
  assert_true(ref_exact >= 3);
  free(csv);
  char *md = read_out("summary.md");
  assert_non_null(strstr(md, "Recall (`recall.csv`): 6 questions"));
  assert_non_null(strstr(md, "| morphkv-s2 | C=24 |"));
  free(md);
  /* a recall prompt without questions is refused */
  const char *plain = mk_test_source_path("tests/golden/longwriter/longbench_write_en.jsonl");
  snprintf(pr, sizeof pr, "%s", plain);
  assert_int_equal(RUN(log_path, "eval", "--model", mk_test_model_path(), "--prompts", pr, "--task", "recall",
                       "--n-prompts", "1", "--new-tokens", "4", "--policies", "full", "--out", out), 1);
  char *l = mk_test_read_file(log_path, NULL);
  assert_non_null(l);
  assert_non_null(strstr(l, "needs \"questions\""));
  free(l);
}

static void test_free_running(void **state) {
  (void)state;
  const char *prompts = mk_test_source_path("tests/golden/longwriter/longbench_write_en.jsonl");
  char pr[4096];
  snprintf(pr, sizeof pr, "%s", prompts);
  expect_ok(RUN(log_path, "eval", "--model", mk_test_model_path(), "--prompts", pr, "--min-words", "2000",
                "--task", "free", "--n-prompts", "1", "--new-tokens", "16", "--policies", "full,streaming",
                "--capacity", "24", "--threads", "1", "--out", out, "--no-plot", "--quiet"));
  char *csv = read_out("free.csv"), *save = NULL, *f[16] = {0};
  char *line = strtok_r(csv, "\n", &save);
  assert_string_equal(line, "prompt,policy,budget,capacity,length,full_length,ended_eos,rep4_frac,distinct2,"
                            "first_divergence,loop_frac");
  int rows = 0;
  char ref[256] = "";
  while ((line = strtok_r(NULL, "\n", &save))) {
    assert_int_equal(fields(line, f, 16), 11);
    rows++;
    int len = atoi(f[4]);
    assert_true(len >= 1 && len <= 16);
    assert_true(atoi(f[9]) <= len);
    if (!strcmp(f[1], "full")) { /* a full cache writes the reference's text: no divergence */
      assert_int_equal(atoi(f[9]), len);
      assert_int_equal(len, atoi(f[5]));
      char key[256];
      snprintf(key, sizeof key, "%s,%s,%s,%s", f[4], f[7], f[8], f[10]);
      if (!ref[0]) snprintf(ref, sizeof ref, "%s", key);
      else assert_string_equal(ref, key);
    }
  }
  assert_int_equal(rows, 3);
  free(csv);
  char *a = read_out("p37_full_reference_free.txt"), *b = read_out("p37_full_all_free.txt");
  assert_string_equal(a, b);
  free(a);
  free(b);
  char *md = read_out("summary.md");
  assert_non_null(strstr(md, "| streaming | C=24 | 1 |"));
  free(md);
}

static void test_penalty_reference(void **state) {
  (void)state;
  const char *prompts = mk_test_source_path("tests/golden/longwriter/longbench_write_en.jsonl");
  char pr[4096], cfg[192];
  snprintf(pr, sizeof pr, "%s", prompts);
  /* the penalty through a config key, as `morphkv generate` takes it */
  snprintf(cfg, sizeof cfg, "%s/cfg.json", dir);
  FILE *cf = fopen(cfg, "w");
  assert_non_null(cf);
  fputs("{\"repeat_penalty\": 1.5, \"repeat_last_n\": 64}\n", cf);
  fclose(cf);
  expect_ok(RUN(log_path, "eval", "--config", cfg, "--model", mk_test_model_path(), "--prompts", pr,
                "--min-words", "2000", "--n-prompts", "1", "--new-tokens", "24", "--policies", "full,morphkv",
                "--capacity", "40", "--window", "8", "--threads", "1", "--out", out, "--no-plot", "--quiet"));
  char *md = read_out("summary.md");
  assert_non_null(strstr(md, "repetition penalty 1.5 over the last 64 tokens"));
  /* the second full engine agrees with the penalised reference everywhere, KL exactly 0 */
  assert_non_null(strstr(md, "| full | all | 98 | 0.0000 | 0.000 | 1.0000 |"));
  free(md);
  char *pen = read_out("p37_reference.txt");
  expect_ok(RUN(log_path, "eval", "--model", mk_test_model_path(), "--prompts", pr, "--min-words", "2000",
                "--n-prompts", "1", "--new-tokens", "24", "--policies", "full", "--threads", "1", "--out", out,
                "--no-plot", "--quiet"));
  char *greedy = read_out("p37_reference.txt");
  assert_string_not_equal(pen, greedy); /* a penalty of 1.5 changes what the reference writes */
  free(pen);
  free(greedy);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_variants_and_strata),
      cmocka_unit_test(test_recall),
      cmocka_unit_test(test_free_running),
      cmocka_unit_test(test_penalty_reference),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
