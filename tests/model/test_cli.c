/* The morphkv binary end to end on the demo model: help and usage errors, error messages that
 * name the problem, a greedy generation whose --stats-json carries the documented keys, stop
 * strings, config files, the KV-bytes series of full vs MorphKV, and `inspect`. */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "kvcache/kvcache.h"
#include "tests/testutil/testutil.h"

typedef struct run_result {
  int rc;
  char *out, *err;
} run_result_t;

static const char *binary(void) {
  const char *b = getenv("MORPHKV_BINARY");
  if (!b) fail_msg("MORPHKV_BINARY is not set (run through ctest)");
  return b;
}

static const char *model(void) {
  const char *m = mk_test_model_path();
  if (!m) fail_msg("demo model missing");
  return m;
}

/* Runs the binary with args (NULL-terminated), capturing stdout and stderr. */
static run_result_t run_v(const char *const *args) {
  char out_path[] = "/tmp/mk_cli_out_XXXXXX", err_path[] = "/tmp/mk_cli_err_XXXXXX";
  int fo = mkstemp(out_path), fe = mkstemp(err_path);
  assert_true(fo >= 0 && fe >= 0);
  const char *argv[64];
  int n = 0;
  argv[n++] = binary();
  for (int i = 0; args[i]; i++) {
    assert_true(n < 63);
    argv[n++] = args[i];
  }
  argv[n] = NULL;
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(fo, 1);
    dup2(fe, 2);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  close(fo);
  close(fe);
  run_result_t r;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = mk_test_read_file(out_path, NULL);
  r.err = mk_test_read_file(err_path, NULL);
  assert_non_null(r.out);
  assert_non_null(r.err);
  unlink(out_path);
  unlink(err_path);
  return r;
}

#define RUN(...) run_v((const char *const[]){__VA_ARGS__, NULL})

static void run_free(run_result_t *r) {
  free(r->out);
  free(r->err);
}

static void expect(const run_result_t *r, int rc, const char *in_out, const char *in_err) {
  if (r->rc != rc) fail_msg("exit %d, expected %d\nstdout: %s\nstderr: %s", r->rc, rc, r->out, r->err);
  if (in_out && !strstr(r->out, in_out)) fail_msg("stdout lacks '%s':\n%s", in_out, r->out);
  if (in_err && !strstr(r->err, in_err)) fail_msg("stderr lacks '%s':\n%s", in_err, r->err);
}

static void test_help(void **state) {
  (void)state;
  run_result_t r = RUN("--help");
  expect(&r, 0, "generate", NULL);
  assert_non_null(strstr(r.out, "inspect"));
  assert_non_null(strstr(r.out, "eval"));
  run_free(&r);
  r = RUN("generate", "--help");
  expect(&r, 0, "--kv-policy", NULL);
  for (const char *const *f = (const char *const[]){"--model", "--prompt-file", "--chat-template",
                                                     "--max-new-tokens", "--temperature", "--top-k",
                                                     "--top-p", "--min-p", "--repeat-penalty",
                                                     "--seed", "--threads", "--config",
                                                     "--stats-json", "--stop", "--kv-window",
                                                     "--kv-capacity", "--kv-dtype", "--simd",
                                                     "--tp", "--backend", NULL};
       *f; f++)
    if (!strstr(r.out, *f)) fail_msg("generate --help lacks %s", *f);
  run_free(&r);
  r = RUN("inspect", "--help");
  expect(&r, 0, "inspect", NULL);
  run_free(&r);
  r = RUN("eval", "--help");
  expect(&r, 0, "eval", NULL);
  run_free(&r);
  r = RUN("--version");
  expect(&r, 0, "morphkv 0.", NULL);
  run_free(&r);
}

static void test_usage_errors(void **state) {
  (void)state;
  run_result_t r = RUN("generate", "--model", model(), "--prompt", "hi", "--bogus-flag", "1");
  expect(&r, 2, NULL, "--bogus-flag");
  assert_non_null(strstr(r.err, "morphkv generate --help"));
  run_free(&r);
  r = RUN("generate", "--model", model(), "--prompt", "hi", "--max-new-tokens", "many");
  expect(&r, 2, NULL, "--max-new-tokens: 'many'");
  run_free(&r);
  r = RUN("generate", "--model", model());
  expect(&r, 2, NULL, "--prompt");
  run_free(&r);
  r = RUN("generate", "--model", model(), "--prompt", "hi", "--kv-policy", "lru");
  expect(&r, 2, NULL, "lru");
  run_free(&r);
  r = RUN("generate", "--model", model(), "--prompt", "hi", "--tp", "3");
  expect(&r, 2, NULL, "--tp 3");
  run_free(&r);
  r = RUN("frobnicate");
  expect(&r, 2, NULL, "unknown command 'frobnicate'");
  run_free(&r);
  r = RUN("inspect");
  expect(&r, 2, NULL, "no model file");
  run_free(&r);
  r = run_v((const char *const[]){NULL});
  expect(&r, 2, NULL, "usage:");
  run_free(&r);
}

static void test_missing_model(void **state) {
  (void)state;
  run_result_t r = RUN("generate", "--model", "/nonexistent/dir/missing.gguf", "--prompt", "hi");
  assert_int_not_equal(r.rc, 0);
  expect(&r, r.rc, NULL, "/nonexistent/dir/missing.gguf");
  run_free(&r);
  r = RUN("inspect", "/nonexistent/dir/missing.gguf");
  assert_int_not_equal(r.rc, 0);
  expect(&r, r.rc, NULL, "/nonexistent/dir/missing.gguf");
  run_free(&r);
  /* a file that is not GGUF */
  char bad[] = "/tmp/mk_cli_bad_XXXXXX";
  int fd = mkstemp(bad);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, "not a model at all", 18), 18);
  close(fd);
  r = RUN("generate", "--model", bad, "--prompt", "hi");
  assert_int_not_equal(r.rc, 0);
  expect(&r, r.rc, NULL, bad);
  run_free(&r);
  unlink(bad);
}

static void test_prompt_too_long(void **state) {
  (void)state;
  /* prompt + new tokens beyond --ctx-size */
  run_result_t r = RUN("generate", "--model", model(), "--prompt",
                       "one two three four five six seven eight nine ten eleven twelve", "--ctx-size",
                       "8", "--max-new-tokens", "4");
  expect(&r, 1, NULL, "more than --ctx-size of 8 tokens");
  run_free(&r);
  r = RUN("generate", "--model", model(), "--prompt", "Hello", "--max-new-tokens", "100000");
  expect(&r, 1, NULL, "--max-new-tokens");
  assert_non_null(strstr(r.err, "context"));
  run_free(&r);
  /* a prompt longer than the model's training context (8192 tokens) */
  char path[] = "/tmp/mk_cli_long_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  FILE *f = fdopen(fd, "w");
  for (int i = 0; i < 9000; i++) fputs(" hello", f);
  fclose(f);
  r = RUN("generate", "--model", model(), "--prompt-file", path, "--max-new-tokens", "1");
  expect(&r, 1, NULL, "more than the model's context");
  run_free(&r);
  unlink(path);
  r = RUN("generate", "--model", model(), "--prompt-file", "/nonexistent/prompt.txt");
  expect(&r, 1, NULL, "/nonexistent/prompt.txt");
  run_free(&r);
}

static json_t *load_json(const char *path) {
  json_error_t je;
  json_t *j = json_load_file(path, 0, &je);
  if (!j) fail_msg("%s: invalid JSON: %s (line %d)", path, je.text, je.line);
  return j;
}

static const char *PROMPT = "The three primary colors are";

static void test_generate_stats(void **state) {
  (void)state;
  const char *js = "/tmp/mk_cli_stats.json";
  unlink(js);
  run_result_t r = RUN("generate", "--model", model(), "--prompt", PROMPT, "--temperature", "0",
                       "--max-new-tokens", "16", "--stats-json", js, "--stats-every", "4");
  expect(&r, 0, NULL, "tok/s");
  assert_non_null(strstr(r.err, "prefill"));
  assert_non_null(strstr(r.err, "decode"));
  assert_non_null(strstr(r.err, "KV cache"));
  json_t *j = load_json(js);
  const char *num_keys[] = {"load_s", "prompt_tokens", "prefill_s", "prefill_tok_s",
                            "generated_tokens", "decode_steps", "decode_s", "decode_tok_s",
                            "kv_live_bytes", "kv_peak_bytes", "kv_alloc_bytes",
                            "policy_state_bytes", "weight_bytes", "kv_slots", "threads", "world"};
  for (size_t i = 0; i < sizeof num_keys / sizeof num_keys[0]; i++)
    if (!json_is_number(json_object_get(j, num_keys[i]))) fail_msg("stats lack number '%s'", num_keys[i]);
  int n_prompt = (int)json_integer_value(json_object_get(j, "prompt_tokens"));
  int n_gen = (int)json_integer_value(json_object_get(j, "generated_tokens"));
  assert_true(n_prompt >= 5 && n_prompt <= 8);
  assert_true(n_gen >= 1 && n_gen <= 16);
  assert_int_equal(json_integer_value(json_object_get(j, "world")), 1);
  assert_true(json_integer_value(json_object_get(j, "weight_bytes")) > 50 * 1000 * 1000);
  json_int_t live = json_integer_value(json_object_get(j, "kv_live_bytes"));
  json_int_t peak = json_integer_value(json_object_get(j, "kv_peak_bytes"));
  json_int_t alloc = json_integer_value(json_object_get(j, "kv_alloc_bytes"));
  /* full f32 cache: 30 layers x 3 KV heads x 64 dims x (K+V) x 4 bytes per token */
  const json_int_t per_tok = 30 * 3 * 64 * 2 * 4;
  int n_seen = n_prompt + (int)json_integer_value(json_object_get(j, "decode_steps"));
  assert_int_equal(live, per_tok * n_seen);
  assert_true(live <= peak && peak <= alloc);
  assert_true(json_real_value(json_object_get(j, "prefill_tok_s")) > 0.0);
  assert_true(n_gen < 2 || json_real_value(json_object_get(j, "decode_tok_s")) > 0.0);
  assert_true(json_is_string(json_object_get(j, "stop_reason")));
  json_t *steps = json_object_get(j, "kv_bytes_by_step");
  assert_true(json_is_array(steps) && json_array_size(steps) >= 2);
  json_t *first = json_array_get(steps, 0);
  assert_int_equal(json_integer_value(json_array_get(first, 0)), n_prompt);
  assert_int_equal(json_integer_value(json_array_get(first, 1)), per_tok * n_prompt);
  json_t *ranks = json_object_get(j, "ranks");
  assert_true(json_is_array(ranks) && json_array_size(ranks) == 1);
  json_t *ids = json_object_get(j, "output_ids");
  assert_int_equal(json_array_size(ids), (size_t)n_gen);
  /* stdout is the generated text plus a final newline */
  const char *text = json_string_value(json_object_get(j, "output_text"));
  assert_non_null(text);
  size_t tl = strlen(text);
  assert_true(strlen(r.out) == tl + 1 && strncmp(r.out, text, tl) == 0);
  run_free(&r);

  /* greedy is deterministic */
  const char *js2 = "/tmp/mk_cli_stats2.json";
  r = RUN("generate", "--model", model(), "--prompt", PROMPT, "--temperature", "0",
          "--max-new-tokens", "16", "--stats-json", js2, "--quiet");
  expect(&r, 0, NULL, NULL);
  assert_null(strstr(r.err, "tok/s")); /* --quiet */
  json_t *j2 = load_json(js2);
  assert_true(json_equal(ids, json_object_get(j2, "output_ids")));
  json_decref(j2);
  run_free(&r);

  /* a stop string taken from the middle of that output cuts the text right before it */
  if (tl >= 12) {
    char stop[5];
    memcpy(stop, text + 6, 4);
    stop[4] = 0;
    const char *at = strstr(text, stop);
    size_t cut = (size_t)(at - text);
    r = RUN("generate", "--model", model(), "--prompt", PROMPT, "--temperature", "0",
            "--max-new-tokens", "16", "--stop", stop, "--stats-json", js2, "--quiet");
    expect(&r, 0, NULL, NULL);
    j2 = load_json(js2);
    const char *t2 = json_string_value(json_object_get(j2, "output_text"));
    assert_int_equal(strlen(t2), cut);
    assert_memory_equal(t2, text, cut);
    assert_string_equal(json_string_value(json_object_get(j2, "stop_reason")), "stop_string");
    assert_true(strlen(r.out) == cut + 1 && strncmp(r.out, text, cut) == 0);
    json_decref(j2);
    run_free(&r);
  }
  json_decref(j);
  unlink(js);
  unlink(js2);
}

static void test_config_file(void **state) {
  (void)state;
  /* the shipped demo config finds the model through ${MORPHKV_CACHE} */
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", model());
  char *slash = strrchr(dir, '/');
  assert_non_null(slash);
  *slash = 0;
  setenv("MORPHKV_CACHE", dir, 1);
  const char *js = "/tmp/mk_cli_cfg.json";
  run_result_t r = RUN("generate", "--config", mk_test_source_path("configs/smollm2-135m.json"),
                       "--prompt", "What is the capital of France?", "--max-new-tokens", "24",
                       "--stats-json", js);
  expect(&r, 0, NULL, NULL);
  json_t *j = load_json(js);
  assert_string_equal(json_string_value(json_object_get(j, "kv_policy")), "full");
  assert_true(json_integer_value(json_object_get(j, "generated_tokens")) <= 24);
  /* --chat renders the template, so the prompt is much longer than the question */
  assert_true(json_integer_value(json_object_get(j, "prompt_tokens")) > 20);
  if (!strstr(r.out, "Paris")) fail_msg("the demo does not answer Paris:\n%s", r.out);
  json_decref(j);
  run_free(&r);
  unlink(js);
  /* an unknown key is named */
  char cfg[] = "/tmp/mk_cli_cfg_XXXXXX";
  int fd = mkstemp(cfg);
  assert_true(fd >= 0);
  const char *text = "{\"max_new_tokens\": 4, \"temprature\": 0}";
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  r = RUN("generate", "--model", model(), "--prompt", "hi", "--config", cfg);
  expect(&r, 2, NULL, "temprature");
  run_free(&r);
  unlink(cfg);
}

/* kv_bytes_by_step: constant from the capacity on under MorphKV, growing under full. */
static void test_kv_bytes_series(void **state) {
  (void)state;
  if (!mk_kv_policy_get(MK_KV_MORPHKV)) skip();
  const char *js = "/tmp/mk_cli_series.json";
  /* C = 16, W = 4: from 20 tokens on the cache holds C tokens after every step */
  run_result_t r = RUN("generate", "--model", model(), "--prompt", PROMPT, "--temperature", "0",
                       "--max-new-tokens", "40", "--stats-json", js, "--stats-every", "4",
                       "--kv-policy", "morphkv", "--kv-window", "4", "--kv-capacity", "16",
                       "--repeat-penalty", "1.3", "--quiet");
  expect(&r, 0, NULL, NULL);
  json_t *j = load_json(js);
  json_t *steps = json_object_get(j, "kv_bytes_by_step");
  const json_int_t per_tok = 30 * 3 * 64 * 2 * 4;
  size_t n_steady = 0;
  for (size_t i = 0; i < json_array_size(steps); i++) {
    json_t *s = json_array_get(steps, i);
    json_int_t n = json_integer_value(json_array_get(s, 0)), b = json_integer_value(json_array_get(s, 1));
    if (n < 20) continue;
    if (b != 16 * per_tok)
      fail_msg("morphkv C=16: KV bytes %lld at %lld tokens, expected %lld", (long long)b,
               (long long)n, (long long)(16 * per_tok));
    n_steady++;
  }
  if (json_integer_value(json_object_get(j, "generated_tokens")) >= 36) assert_true(n_steady >= 5);
  json_decref(j);
  run_free(&r);

  r = RUN("generate", "--model", model(), "--prompt", PROMPT, "--temperature", "0",
          "--max-new-tokens", "24", "--stats-json", js, "--stats-every", "4", "--quiet",
          "--repeat-penalty", "1.3");
  expect(&r, 0, NULL, NULL);
  j = load_json(js);
  steps = json_object_get(j, "kv_bytes_by_step");
  json_int_t prev = -1;
  for (size_t i = 0; i < json_array_size(steps); i++) {
    json_int_t b = json_integer_value(json_array_get(json_array_get(steps, i), 1));
    assert_true(b > prev);
    prev = b;
  }
  json_decref(j);
  run_free(&r);
  unlink(js);
}

static void test_inspect(void **state) {
  (void)state;
  run_result_t r = RUN("inspect", model());
  expect(&r, 0, "tensors:       272", NULL);
  assert_non_null(strstr(r.out, "llama"));
  assert_non_null(strstr(r.out, "n_layer 30"));
  assert_non_null(strstr(r.out, "n_kv_head 3"));
  assert_non_null(strstr(r.out, "vocab 49152"));
  assert_non_null(strstr(r.out, "smollm"));
  assert_non_null(strstr(r.out, "chat template: chatml"));
  /* one table row per tensor: count the blk.* and other weight names */
  int rows = 0;
  for (const char *p = r.out; (p = strstr(p, ".weight")) != NULL; p++) rows++;
  assert_int_equal(rows, 272);
  assert_non_null(strstr(r.out, "token_embd.weight"));
  assert_non_null(strstr(r.out, "Q8_0"));
  assert_non_null(strstr(r.out, "tied to token_embd"));
  run_free(&r);
  r = RUN("inspect", "--all", model());
  expect(&r, 0, "general.architecture = \"llama\"", NULL);
  run_free(&r);
}

/* Issue 15, bug 2: NUL bytes in --prompt-file are refused with a message, never cut the prompt
 * silently (it used to prefill "Hello" and exit 0, or call a NUL-first file "empty"). */
static void test_prompt_file_nul(void **state) {
  (void)state;
  const char *texts[] = {"Hello\0world, tell me a story.", "\0Hello"};
  const size_t lens[] = {30, 7};
  for (int k = 0; k < 2; k++) {
    char path[] = "/tmp/mk_cli_nul_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, texts[k], lens[k]), (ssize_t)lens[k]);
    close(fd);
    run_result_t r = RUN("generate", "--model", model(), "--prompt-file", path, "--max-new-tokens",
                         "2", "--threads", "1");
    expect(&r, 1, NULL, "NUL");
    assert_non_null(strstr(r.err, path));
    assert_null(strstr(r.err, "empty"));
    run_free(&r);
    unlink(path);
  }
}

/* Issue 15, bug 4: `inspect FIFO` is refused at once (it used to block forever in open()). The
 * child gets an alarm so that a regression fails instead of hanging. */
static void test_inspect_fifo(void **state) {
  (void)state;
  char dir[] = "/tmp/mk_cli_fifo_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char fifo[64];
  snprintf(fifo, sizeof fifo, "%s/model.gguf", dir);
  assert_int_equal(mkfifo(fifo, 0600), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 1);
    dup2(devnull, 2);
    alarm(20);
    execl(binary(), binary(), "inspect", fifo, (char *)NULL);
    _exit(127);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  unlink(fifo);
  rmdir(dir);
  if (!WIFEXITED(status)) fail_msg("inspect FIFO was killed by signal %d (blocked)", WTERMSIG(status));
  assert_int_equal(WEXITSTATUS(status), 1);
  run_result_t r = RUN("generate", "--help");
  expect(&r, 0, "--comm-timeout", NULL);
  assert_non_null(strstr(r.out, "default 300"));
  assert_non_null(strstr(r.out, "FIFO"));
  run_free(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_help),           cmocka_unit_test(test_usage_errors),
      cmocka_unit_test(test_missing_model),  cmocka_unit_test(test_prompt_too_long),
      cmocka_unit_test(test_generate_stats), cmocka_unit_test(test_config_file),
      cmocka_unit_test(test_kv_bytes_series), cmocka_unit_test(test_inspect),
      cmocka_unit_test(test_prompt_file_nul), cmocka_unit_test(test_inspect_fifo),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
