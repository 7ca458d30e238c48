/* The continuous-batching scheduler (src/batch.h) on a synthetic model (no demo model needed, so
 * it runs in the ASan/UBSan unit suite): 12 requests of mixed prompt lengths and max_new_tokens,
 * 3 at a time, full cache with chunked prefill (chunk 16 < the longest prompts) and MorphKV
 * (C 24, W 6: prompts compressed at the prefill, evictions while decoding), both numerics: every
 * result equals the request run alone, written here independently of src/batch.c (one sequence,
 * mk_engine_step, the sampler, the stop rules of `generate`), bitwise. And the KV budget: refused
 * below one sequence, two sequences admitted at exactly two sequences' bytes, a request larger than
 * the budget rejected on submission. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/batch.h"
#include "src/engine.h"
#include "src/sampler.h"
#include "src/tokenizer.h"
#include "tests/testutil/synth_model.h"
#include "tests/testutil/testutil.h"

#define N_REQ 12
#define MAX_PROMPT 70
#define MAX_NEW 20

typedef struct got {
  int n[N_REQ];
  int32_t ids[N_REQ][MAX_NEW];
  char reason[N_REQ][16];
  int calls;
} got_t;

static void on_done(void *ctx, const mk_batch_result_t *r) {
  got_t *g = ctx;
  assert_true(r->id < N_REQ);
  g->n[r->id] = r->generated_tokens;
  memcpy(g->ids[r->id], r->output_ids, sizeof(int32_t) * (size_t)r->generated_tokens);
  snprintf(g->reason[r->id], sizeof g->reason[r->id], "%s", r->stop_reason);
  g->calls++;
}

static char path_[64];

static mk_engine_t *open_engine(mk_numerics_t num) {
  mk_engine_params_t ep = {.model_path = path_, .backend = {.kind = MK_BACKEND_CPU, .n_threads = 1, .simd = -1},
                           .numerics = num};
  mk_engine_t *e = NULL;
  mk_error_t err = {{0}};
  if (mk_engine_open(&e, &ep, NULL, &err) != 0) fail_msg("mk_engine_open: %s", err.msg);
  return e;
}

static void make_requests(int32_t prompts[N_REQ][MAX_PROMPT], mk_batch_request_t *rq) {
  uint64_t rs = 77;
  const int lens[N_REQ] = {3, 41, 9, 70, 1, 17, 33, 64, 5, 28, 50, 12};
  const int news[N_REQ] = {20, 4, 0, 13, 20, 1, 9, 17, 11, 20, 6, 15};
  for (int i = 0; i < N_REQ; i++) {
    for (int j = 0; j < lens[i]; j++) prompts[i][j] = (int32_t)(mk_test_rand_u64(&rs) % 256);
    mk_sampler_params_t sp;
    mk_sampler_params_default(&sp);
    sp.temperature = i % 3 == 1 ? 0.9f : 0.0f; /* some sample: each its own seeded state */
    sp.seed = 1000 + (uint64_t)i;
    rq[i] = (mk_batch_request_t){.id = (uint64_t)i, .prompt = prompts[i], .n_prompt = lens[i], .sampling = sp,
                                 .max_new_tokens = news[i]};
  }
}

/* Request r alone, as `morphkv generate` runs it (src/main.c gen_prefill / gen_decode). */
static int run_alone(mk_engine_t *e, const mk_kv_config_t *kv, const mk_batch_request_t *r, int32_t *out,
                     const char **reason) {
  mk_error_t err = {{0}};
  const int V = mk_engine_n_vocab(e);
  assert_int_equal(mk_engine_begin(e, kv, 1, r->n_prompt, r->n_prompt + r->max_new_tokens, &err), 0);
  float *logits = malloc(sizeof(float) * (size_t)V);
  int32_t *hist = malloc(sizeof(int32_t) * (size_t)(r->n_prompt + r->max_new_tokens + 1));
  mk_sampler_t *smp = NULL;
  assert_int_equal(mk_sampler_new(&r->sampling, V, &smp, &err), 0);
  memcpy(hist, r->prompt, sizeof(int32_t) * (size_t)r->n_prompt);
  int n_hist = r->n_prompt, n = 0;
  assert_int_equal(mk_engine_step(e, 0, r->prompt, r->n_prompt, false, logits, &err), 0);
  *reason = "max_new_tokens";
  while (n < r->max_new_tokens) {
    int32_t id = mk_sampler_sample(smp, logits, hist, n_hist);
    if (mk_tok_is_eog(mk_engine_tokenizer(e), id)) {
      *reason = "eos";
      break;
    }
    out[n++] = id;
    hist[n_hist++] = id;
    if (n == r->max_new_tokens) break;
    if (mk_engine_step(e, 0, &id, 1, false, logits, &err) != 0) fail_msg("step: %s", err.msg);
  }
  mk_sampler_free(smp);
  free(hist);
  free(logits);
  return n;
}

static void check_policy(mk_numerics_t num, const mk_kv_config_t *kv, int chunk) {
  static int32_t prompts[N_REQ][MAX_PROMPT];
  mk_batch_request_t rq[N_REQ];
  make_requests(prompts, rq);
  mk_engine_t *e = open_engine(num);
  mk_batch_params_t bp = {.max_seqs = 3, .prefill_chunk = chunk, .kv = *kv, .max_prompt = MAX_PROMPT,
                          .max_total = MAX_PROMPT + MAX_NEW, .min_total = 1};
  mk_batch_t *b = NULL;
  mk_error_t err = {{0}};
  if (mk_batch_new(&b, e, &bp, &err) != 0) fail_msg("mk_batch_new: %s", err.msg);
  for (int i = 0; i < N_REQ; i++) assert_int_equal(mk_batch_submit(b, &rq[i], &err), 0);
  got_t g = {0};
  int rc, passes = 0;
  while ((rc = mk_batch_step(b, on_done, &g, &err)) == 1) passes++;
  if (rc != 0) fail_msg("mk_batch_step: %s", err.msg);
  assert_int_equal(g.calls, N_REQ);
  mk_batch_progress_t p;
  mk_batch_get_progress(b, &p);
  assert_int_equal(p.max_running, 3);
  assert_int_equal(p.queued + p.running, 0);
  mk_batch_free(b);
  for (int i = 0; i < N_REQ; i++) {
    int32_t want[MAX_NEW];
    const char *reason;
    int n = run_alone(e, kv, &rq[i], want, &reason);
    if (n != g.n[i] || memcmp(want, g.ids[i], sizeof(int32_t) * (size_t)n) != 0 || strcmp(reason, g.reason[i]))
      fail_msg("%s, %s numerics, request %d (prompt %d): batch %d tokens (%s), alone %d (%s)",
               mk_kv_policy_name(kv->policy), num ? "deterministic" : "fast", i, rq[i].n_prompt, g.n[i],
               g.reason[i], n, reason);
  }
  mk_engine_close(e);
  (void)passes;
}

static void test_batch_equals_alone(void **state) {
  (void)state;
  mk_kv_config_t full, mkv;
  mk_kv_config_default(&full);
  mk_kv_config_default(&mkv);
  mkv.policy = MK_KV_MORPHKV;
  mkv.capacity = 24;
  mkv.window = 6;
  for (int num = 0; num < 2; num++) {
    check_policy((mk_numerics_t)num, &full, 16);
    check_policy((mk_numerics_t)num, &mkv, MAX_PROMPT);
  }
}

static void test_budget(void **state) {
  (void)state;
  mk_engine_t *e = open_engine(MK_NUMERICS_FAST);
  mk_kv_config_t kv;
  mk_kv_config_default(&kv);
  kv.policy = MK_KV_MORPHKV;
  kv.capacity = 24;
  kv.window = 6;
  mk_batch_params_t bp = {.max_seqs = 8, .prefill_chunk = 64, .kv = kv, .max_prompt = 40, .max_total = 80,
                          .min_total = 10};
  mk_batch_t *b = NULL;
  mk_error_t err = {{0}};
  assert_int_equal(mk_batch_new(&b, e, &bp, &err), 0);
  const size_t one = mk_batch_seq_bytes(b, 0, 0);
  assert_int_equal(mk_batch_slots(b), 8);
  mk_batch_free(b);
  bp.kv_memory = one - 1;
  assert_int_equal(mk_batch_new(&b, e, &bp, &err), -1);
  if (!strstr(err.msg, "holds not even one sequence")) fail_msg("message: %s", err.msg);
  bp.kv_memory = 2 * one;
  assert_int_equal(mk_batch_new(&b, e, &bp, &err), 0);
  assert_int_equal(mk_batch_slots(b), 2);
  mk_batch_free(b);
  /* full cache: a request reserves prompt + max_new slots; one larger than the budget is refused */
  bp.kv.policy = MK_KV_FULL;
  bp.kv_memory = 0;
  assert_int_equal(mk_batch_new(&b, e, &bp, &err), 0);
  const size_t slot = mk_batch_seq_bytes(b, 1, 0);
  assert_true(mk_batch_seq_bytes(b, 30, 50) == 80 * slot);
  mk_batch_free(b);
  bp.kv_memory = 60 * slot;
  assert_int_equal(mk_batch_new(&b, e, &bp, &err), 0);
  assert_int_equal(mk_batch_slots(b), 6); /* 60 / min_total 10 */
  int32_t ids[40] = {0};
  mk_batch_request_t r = {.prompt = ids, .n_prompt = 30, .max_new_tokens = 40};
  mk_sampler_params_default(&r.sampling);
  assert_int_equal(mk_batch_submit(b, &r, &err), -1);
  if (!strstr(err.msg, "--kv-memory")) fail_msg("message: %s", err.msg);
  r.max_new_tokens = 30;
  assert_int_equal(mk_batch_submit(b, &r, &err), 0);
  mk_batch_free(b);
  mk_engine_close(e);
}

static int setup(void **state) {
  (void)state;
  snprintf(path_, sizeof path_, "/tmp/mk_batch_%ld.gguf", (long)getpid());
  mk_synth_params_t p;
  mk_synth_params_default(&p);
  p.n_ctx = 256;
  return mk_synth_model_write(path_, &p);
}

static int teardown(void **state) {
  (void)state;
  unlink(path_);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_batch_equals_alone),
      cmocka_unit_test(test_budget),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
