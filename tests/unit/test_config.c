/* Options of `morphkv generate`: JSON config files, flags, precedence, error messages, and the
 * shipped configs/ files. */
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

#include "src/config.h"
#include "tests/testutil/testutil.h"

static int load_text(mk_gen_opts_t *o, const char *text, mk_error_t *err) {
  return mk_gen_opts_load_json_text(o, text, "test.json", err);
}

static void expect_error(const char *json, const char *needle1, const char *needle2) {
  mk_gen_opts_t o;
  mk_gen_opts_default(&o);
  mk_error_t err = {{0}};
  int rc = load_text(&o, json, &err);
  if (rc == 0) fail_msg("accepted bad config %s", json);
  if (!strstr(err.msg, needle1) || (needle2 && !strstr(err.msg, needle2)))
    fail_msg("message '%s' lacks '%s' / '%s'", err.msg, needle1, needle2 ? needle2 : "");
  mk_gen_opts_free(&o);
}

static void test_defaults(void **state) {
  (void)state;
  mk_gen_opts_t o;
  mk_gen_opts_default(&o);
  assert_int_equal(o.max_new_tokens, 256);
  assert_float_equal(o.sampling.temperature, 0.8f, 0.0);
  assert_int_equal(o.sampling.top_k, 40);
  assert_int_equal(o.kv.policy, MK_KV_FULL);
  assert_int_equal(o.simd, -1);
  assert_int_equal(o.backend, MK_BACKEND_CPU);
  assert_int_equal(o.pp, 1);
  assert_false(o.chat);
  assert_null(o.model);
  mk_gen_opts_free(&o);
}

static void test_json_keys(void **state) {
  (void)state;
  mk_gen_opts_t o;
  mk_gen_opts_default(&o);
  mk_error_t err = {{0}};
  const char *json =
      "{\"model\": \"/m.gguf\", \"prompt\": \"hi\", \"chat\": true, \"chat_template\": \"llama3\","
      " \"system\": \"be brief\", \"max_new_tokens\": 64, \"ctx_size\": 1024, \"temperature\": 0,"
      " \"top_k\": 5, \"top_p\": 0.5, \"min_p\": 0.1, \"repeat_penalty\": 1.1, \"repeat_last_n\": -1,"
      " \"seed\": 7, \"threads\": 2, \"stats_json\": \"/tmp/s.json\", \"stats_every\": 16,"
      " \"stop\": [\"\\n\\n\", \"END\"], \"kv_policy\": \"streaming\", \"kv_window\": 16,"
      " \"kv_capacity\": 128, \"kv_fusion\": \"max\", \"kv_gqa\": \"prob_max\", \"kv_sinks\": 2,"
      " \"kv_evict_after\": 1.5, \"kv_dtype\": \"f16\", \"kv_h2o_mode\": \"per_head\","
      " \"kv_snapkv_pool\": 7, \"kv_snapkv_pooling\": \"max\", \"backend\": \"cpu\","
      " \"simd\": \"scalar\", \"tp\": 1, \"pp\": 3, \"quiet\": true, \"progress\": false,"
      " \"ignore_eos\": true}";
  if (load_text(&o, json, &err) != 0) fail_msg("%s", err.msg);
  assert_string_equal(o.model, "/m.gguf");
  assert_string_equal(o.prompt, "hi");
  assert_true(o.chat);
  assert_string_equal(o.chat_template, "llama3");
  assert_string_equal(o.system, "be brief");
  assert_int_equal(o.max_new_tokens, 64);
  assert_int_equal(o.ctx_size, 1024);
  assert_float_equal(o.sampling.temperature, 0.0f, 0.0);
  assert_int_equal(o.sampling.top_k, 5);
  assert_float_equal(o.sampling.top_p, 0.5f, 0.0);
  assert_float_equal(o.sampling.min_p, 0.1f, 1e-7);
  assert_float_equal(o.sampling.repeat_penalty, 1.1f, 1e-7);
  assert_int_equal(o.sampling.repeat_last_n, -1);
  assert_int_equal(o.sampling.seed, 7);
  assert_int_equal(o.threads, 2);
  assert_string_equal(o.stats_json, "/tmp/s.json");
  assert_int_equal(o.stats_every, 16);
  assert_int_equal(o.n_stop, 2);
  assert_string_equal(o.stop[0], "\n\n");
  assert_string_equal(o.stop[1], "END");
  assert_int_equal(o.kv.policy, MK_KV_STREAMING);
  assert_int_equal(o.kv.window, 16);
  assert_int_equal(o.kv.capacity, 128);
  assert_int_equal(o.kv.fusion, MK_KV_FUSION_MAX);
  assert_int_equal(o.kv.gqa, MK_KV_GQA_PROB_MAX);
  assert_int_equal(o.kv.sinks, 2);
  assert_float_equal(o.kv.evict_after, 1.5f, 0.0);
  assert_int_equal(o.kv.dtype, MK_KV_F16);
  assert_int_equal(o.kv.h2o_mode, MK_KV_H2O_PER_HEAD);
  assert_int_equal(o.kv.snapkv_pool, 7);
  assert_true(o.kv.snapkv_maxpool);
  assert_int_equal(o.simd, MK_SIMD_SCALAR);
  assert_int_equal(o.tp, 1);
  assert_int_equal(o.pp, 3);
  assert_true(o.quiet);
  assert_false(o.progress);
  assert_true(o.ignore_eos);
  mk_gen_opts_free(&o);
}

static void test_json_errors(void **state) {
  (void)state;
  expect_error("{\"max_new_tokenz\": 3}", "unknown key 'max_new_tokenz'", "test.json");
  expect_error("{\"max-new-tokens\": 3}", "unknown key 'max-new-tokens'", NULL);
  expect_error("{\"config\": \"x.json\"}", "'config'", "only a command-line flag");
  expect_error("{\"max_new_tokens\": \"3\"}", "max_new_tokens", "integer");
  expect_error("{\"max_new_tokens\": 2.5}", "max_new_tokens", "integer");
  expect_error("{\"temperature\": \"hot\"}", "temperature", "number");
  expect_error("{\"chat\": 1}", "chat", "true or false");
  expect_error("{\"kv_policy\": \"lru\"}", "kv_policy", "lru");
  expect_error("{\"kv_dtype\": \"q8\"}", "kv_dtype", "f32|f16");
  expect_error("{\"top_p\": 1.5}", "top_p", "out of range");
  expect_error("{\"pp\": 0}", "pp", "out of range");
  expect_error("{\"stop\": [\"a\", 3]}", "stop", "item 1");
  expect_error("{\"seed\": 1, \"seed\": 2}", "test.json", "seed");
  expect_error("[1, 2]", "test.json", "JSON object");
  expect_error("{\"model\": ", "test.json:1", NULL);
}

/* writes text to a temporary file; returns its path (static buffer) */
static const char *write_tmp(const char *text) {
  static char path[64];
  snprintf(path, sizeof path, "/tmp/mk_test_config_XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  FILE *f = fdopen(fd, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  return path;
}

static void test_flags_win(void **state) {
  (void)state;
  const char *cfg = write_tmp(
      "{\"model\": \"/cfg.gguf\", \"max_new_tokens\": 10, \"temperature\": 0.3, \"chat\": true,"
      " \"stop\": [\"A\", \"B\"], \"kv_policy\": \"streaming\"}");
  /* the flag before --config still wins */
  char *argv[] = {"generate", "--max-new-tokens", "99", "--config", (char *)cfg,
                  "--temperature=0", "--no-chat", "--stop", "C", "--prompt", "x y", NULL};
  int argc = (int)(sizeof argv / sizeof argv[0]) - 1;
  mk_gen_opts_t o;
  mk_gen_opts_default(&o);
  mk_error_t err = {{0}};
  bool help;
  if (mk_gen_opts_parse_args(&o, argc, argv, &help, &err) != 0) fail_msg("%s", err.msg);
  assert_false(help);
  assert_string_equal(o.model, "/cfg.gguf");   /* from the config */
  assert_int_equal(o.kv.policy, MK_KV_STREAMING);
  assert_int_equal(o.max_new_tokens, 99);      /* flags win */
  assert_float_equal(o.sampling.temperature, 0.0f, 0.0);
  assert_false(o.chat);
  assert_int_equal(o.n_stop, 1);               /* flag stops replace config stops */
  assert_string_equal(o.stop[0], "C");
  assert_string_equal(o.prompt, "x y");
  assert_string_equal(o.config, cfg);
  mk_gen_opts_free(&o);
  unlink(cfg);
}

static void test_flag_errors(void **state) {
  (void)state;
  struct {
    char *argv[4];
    const char *needle;
  } cases[] = {
      {{"generate", "--max-new-tokens", "ten", NULL}, "--max-new-tokens: 'ten'"},
      {{"generate", "--bogus", "1", NULL}, "unknown flag '--bogus'"},
      {{"generate", "--max_new_tokens", "1", NULL}, "--max_new_tokens"},
      {{"generate", "--model", NULL, NULL}, "--model needs a value"},
      {{"generate", "stray", NULL, NULL}, "unexpected argument 'stray'"},
      {{"generate", "--no-model", NULL, NULL}, "unknown flag '--no-model'"},
      {{"generate", "--config", "/nonexistent/c.json", NULL}, "/nonexistent/c.json"},
      {{"generate", "--simd", "neon", NULL}, "--simd: unknown value 'neon'"},
      {{"generate", "--seed", "-1", NULL}, "--seed"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int argc = 0;
    while (cases[i].argv[argc]) argc++;
    mk_gen_opts_t o;
    mk_gen_opts_default(&o);
    mk_error_t err = {{0}};
    bool help;
    if (mk_gen_opts_parse_args(&o, argc, cases[i].argv, &help, &err) == 0)
      fail_msg("case %zu accepted", i);
    if (!strstr(err.msg, cases[i].needle)) fail_msg("case %zu: '%s' lacks '%s'", i, err.msg, cases[i].needle);
    mk_gen_opts_free(&o);
  }
  /* --help anywhere short-cuts */
  char *argv[] = {"generate", "--bogus", "--help", NULL};
  mk_gen_opts_t o;
  mk_gen_opts_default(&o);
  mk_error_t err = {{0}};
  bool help = false;
  assert_int_equal(mk_gen_opts_parse_args(&o, 3, argv, &help, &err), 0);
  assert_true(help);
  mk_gen_opts_free(&o);
}

static void test_check(void **state) {
  (void)state;
  mk_gen_opts_t o;
  mk_gen_opts_default(&o);
  mk_error_t err = {{0}};
  assert_int_equal(mk_gen_opts_check(&o, &err), -1);
  assert_non_null(strstr(err.msg, "--model"));
  assert_int_equal(mk_gen_opts_set(&o, "model", "/m.gguf", &err), 0);
  assert_int_equal(mk_gen_opts_check(&o, &err), -1);
  assert_non_null(strstr(err.msg, "--prompt"));
  assert_int_equal(mk_gen_opts_set(&o, "prompt", "p", &err), 0);
  assert_int_equal(mk_gen_opts_set(&o, "prompt_file", "/p.txt", &err), 0);
  assert_int_equal(mk_gen_opts_check(&o, &err), -1);
  assert_non_null(strstr(err.msg, "both"));
  free(o.prompt_file);
  o.prompt_file = NULL;
  if (mk_gen_opts_check(&o, &err) != 0) fail_msg("%s", err.msg);
  assert_int_equal(mk_gen_opts_set(&o, "system", "s", &err), 0);
  assert_int_equal(mk_gen_opts_check(&o, &err), -1);
  assert_non_null(strstr(err.msg, "--chat"));
  mk_gen_opts_free(&o);
}

static void test_expand_path(void **state) {
  (void)state;
  mk_error_t err = {{0}};
  setenv("MK_TEST_DIR", "/data/models", 1);
  unsetenv("MK_TEST_UNSET");
  setenv("HOME", "/home/u", 1);
  struct { const char *in, *out; } cases[] = {
      {"${MK_TEST_DIR}/a.gguf", "/data/models/a.gguf"},
      {"${MK_TEST_UNSET:-/x}/a", "/x/a"},
      {"${MK_TEST_DIR:-/x}/a", "/data/models/a"},
      {"${MK_TEST_UNSET:-~/.cache}/m", "/home/u/.cache/m"},
      {"~/m.gguf", "/home/u/m.gguf"},
      {"a~/b", "a~/b"},
      {"plain", "plain"},
      {"${MK_TEST_UNSET}z", "z"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *r = mk_expand_path(cases[i].in, &err);
    if (!r) fail_msg("%s: %s", cases[i].in, err.msg);
    assert_string_equal(r, cases[i].out);
    free(r);
  }
  assert_null(mk_expand_path("${OPEN", &err));
  assert_non_null(strstr(err.msg, "unterminated"));
}

/* The shipped config files parse and carry what the README says they do. */
static void test_shipped_configs(void **state) {
  (void)state;
  setenv("MORPHKV_CACHE", "/cache", 1);
  mk_gen_opts_t o;
  mk_error_t err = {{0}};
  mk_gen_opts_default(&o);
  if (mk_gen_opts_load_json(&o, mk_test_source_path("configs/smollm2-135m.json"), &err) != 0)
    fail_msg("%s", err.msg);
  assert_string_equal(o.model, "/cache/SmolLM2-135M-Instruct.Q4_1.gguf");
  assert_true(o.chat);
  assert_string_equal(o.system, "Answer the question in one sentence.");
  assert_float_equal(o.sampling.temperature, 0.0f, 0.0);
  assert_int_equal(o.max_new_tokens, 256);
  assert_int_equal(o.kv.policy, MK_KV_FULL);
  mk_gen_opts_free(&o);

  mk_gen_opts_default(&o);
  if (mk_gen_opts_load_json(&o, mk_test_source_path("configs/smollm2-135m-morphkv.json"), &err) != 0)
    fail_msg("%s", err.msg);
  assert_int_equal(o.kv.policy, MK_KV_MORPHKV);
  assert_int_equal(o.kv.window, 32);
  assert_int_equal(o.kv.capacity, 256);
  mk_gen_opts_free(&o);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults),     cmocka_unit_test(test_json_keys),
      cmocka_unit_test(test_json_errors),  cmocka_unit_test(test_flags_win),
      cmocka_unit_test(test_flag_errors),  cmocka_unit_test(test_check),
      cmocka_unit_test(test_expand_path),  cmocka_unit_test(test_shipped_configs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
