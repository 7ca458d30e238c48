/* End-to-end parity of the CUDA engine with the CPU engine on the demo model (SmolLM2-135M Q4_1).
 *
 * For each cache policy (full; MorphKV W=8, C=32, which compresses the 43-token prompt at once
 * and then evicts one token per step):
 *   1. the CPU engine generates 64 greedy tokens after the prompt, keeping every step's logits and
 *      a copy of every KV head's pos[] (the kept positions);
 *   2. the CUDA engine is fed the same tokens (teacher forcing) one decode step at a time, and at
 *      every step:
 *        logits: after removing the mean offset over the CPU's top-20 tokens (logits are
 *                shift-invariant for sampling), each of those 20 within LOGIT_ATOL of the CPU's;
 *                normalized error over the whole vocabulary at most LOGIT_NMSE;
 *        argmax: equal to the CPU's token wherever the CPU's top-2 margin exceeds ARGMAX_MARGIN
 *                (with all 64 equal, greedy decoding on CUDA produces the same 64 tokens);
 *        cache:  pos[] of every head equal to the CPU's (MorphKV kept the same positions).
 * Why these bounds: the device multiplies bf16 copies of the weights (relative rounding 2^-9)
 * with fp32 activations, the CPU multiplies the 4-bit blocks with 8-bit-quantized activations;
 * the two differ by about as much as two CPU implementations do (tests/model/test_logits.c allows
 * 0.35 against llama.cpp). Skips (77) without a device, or without the demo model. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "src/engine.h"
#include "tests/gpu/gpu_test.h"
#include "tests/testutil/testutil.h"

#ifdef MK_GPU_EMU
#define N_GEN 12 /* the CPU emulator (test_cuda_emu_e2e) runs ~10 s per token on two cores */
#else
#define N_GEN 64
#endif
#define LOGIT_ATOL 0.35f
#define LOGIT_NMSE 2e-3
#define ARGMAX_MARGIN 0.05f
#define TOPK 20

static const char *k_prompt =
    "The lighthouse keeper wrote in his journal every night. Tonight the storm was worse than any "
    "he remembered, and the lamp flickered twice before it steadied. He set down his pen, listened to "
    "the waves breaking on the rocks below, and began to write again:";

typedef struct e2e {
  mk_engine_t *cpu, *gpu;
  int32_t prompt[256];
  int n_prompt;
} e2e_t;

static e2e_t g_e; /* test-process state, set up once */

static int open_engine(mk_engine_t **e, mk_backend_kind_t kind) {
  const char *model = mk_test_model_path();
  if (!model) return -1;
  mk_engine_params_t p = {.model_path = model,
                          .backend = {.kind = kind, .n_threads = 2, .simd = -1, .device = mk_gpu_test_device()}};
  mk_error_t err = {{0}};
  if (mk_engine_open(e, &p, NULL, &err) != 0) {
    fprintf(stderr, "engine (%s): %s\n", kind == MK_BACKEND_CUDA ? "cuda" : "cpu", err.msg);
    return -1;
  }
  return 0;
}

static int argmax(const float *x, int n) {
  int a = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[a]) a = i;
  return a;
}

/* All pos[] of a cache, concatenated. */
static int32_t *snapshot(const mk_kv_cache_t *c, size_t *n) {
  *n = (size_t)c->n_seq * c->n_layer * c->n_heads * c->n_slots;
  int32_t *s = malloc(sizeof(int32_t) * *n);
  memcpy(s, c->pos_arena, sizeof(int32_t) * *n);
  return s;
}

static bool same_cache(const char *what, int step, const int32_t *want, const mk_kv_cache_t *c) {
  size_t per = (size_t)c->n_slots, nh = (size_t)c->n_seq * c->n_layer * c->n_heads;
  for (size_t h = 0; h < nh; h++) {
    if (memcmp(want + h * per, c->heads[h].pos, sizeof(int32_t) * per) == 0) continue;
    printf("%s step %d: layer %d KV head %d keeps different positions\n", what, step, c->heads[h].layer,
           c->heads[h].kv_head);
    int shown = 0;
    for (size_t s = 0; s < per && shown < 8; s++)
      if (want[h * per + s] != c->heads[h].pos[s]) {
        printf("  slot %zu: cpu %d, cuda %d\n", s, want[h * per + s], c->heads[h].pos[s]);
        shown++;
      }
    return false;
  }
  return true;
}

/* Compares one step's logits; returns the number of failed checks. */
static int compare_logits(const char *what, int step, const float *gpu, const float *cpu, int V, double *worst,
                          double *worst_nmse, int *near_ties) {
  int top[TOPK];
  for (int k = 0; k < TOPK; k++) { /* the CPU's top-K, simple selection */
    int best = -1;
    for (int i = 0; i < V; i++) {
      bool taken = false;
      for (int j = 0; j < k; j++) taken |= top[j] == i;
      if (!taken && (best < 0 || cpu[i] > cpu[best])) best = i;
    }
    top[k] = best;
  }
  double off = 0;
  for (int k = 0; k < TOPK; k++) off += (double)gpu[top[k]] - cpu[top[k]];
  off /= TOPK;
  int fails = 0;
  for (int k = 0; k < TOPK; k++) {
    double diff = fabs(gpu[top[k]] - off - cpu[top[k]]);
    if (diff > *worst) *worst = diff;
    if (diff > LOGIT_ATOL) {
      printf("%s step %d: token %d logit cuda %.4f (shifted %.4f) vs cpu %.4f\n", what, step, top[k], gpu[top[k]],
             gpu[top[k]] - off, cpu[top[k]]);
      fails++;
    }
  }
  double e = mk_nmse(gpu, cpu, (size_t)V);
  if (e > *worst_nmse) *worst_nmse = e;
  if (!(e <= LOGIT_NMSE)) {
    printf("%s step %d: logits normalized error %.3e > %.1e\n", what, step, e, LOGIT_NMSE);
    fails++;
  }
  double margin = cpu[top[0]] - cpu[top[1]];
  int am = argmax(gpu, V);
  if (margin <= ARGMAX_MARGIN) {
    (*near_ties)++;
  } else if (am != top[0]) {
    printf("%s step %d: cuda argmax %d, cpu %d (cpu margin %.3f)\n", what, step, am, top[0], margin);
    fails++;
  }
  return fails;
}

static void run_policy(const char *what, const mk_kv_config_t *kv) {
  const int V = mk_engine_n_vocab(g_e.cpu), P = g_e.n_prompt, total = P + N_GEN;
  mk_error_t err = {{0}};
  float *lc = malloc(sizeof(float) * (size_t)(N_GEN + 1) * V), *lg = malloc(sizeof(float) * (size_t)V);
  int32_t toks[N_GEN + 1];
  int32_t *snaps[N_GEN + 1];
  size_t sn = 0;

  /* 1. CPU greedy */
  if (mk_engine_begin(g_e.cpu, kv, 1, P, total, &err) != 0) fail_msg("cpu begin: %s", err.msg);
  if (mk_engine_step(g_e.cpu, 0, g_e.prompt, P, false, lc, &err) != 0) fail_msg("cpu prefill: %s", err.msg);
  snaps[0] = snapshot(mk_engine_cache(g_e.cpu), &sn);
  toks[0] = argmax(lc, V);
  for (int i = 1; i <= N_GEN; i++) {
    if (mk_engine_step(g_e.cpu, 0, &toks[i - 1], 1, false, lc + (size_t)i * V, &err) != 0)
      fail_msg("cpu decode: %s", err.msg);
    snaps[i] = snapshot(mk_engine_cache(g_e.cpu), &sn);
    toks[i] = argmax(lc + (size_t)i * V, V);
  }

  /* 2. CUDA, teacher-forced with the CPU's tokens */
  if (mk_engine_begin(g_e.gpu, kv, 1, P, total, &err) != 0) fail_msg("cuda begin: %s", err.msg);
  double worst = 0, worst_nmse = 0;
  int fails = 0, near = 0;
  for (int i = 0; i <= N_GEN; i++) {
    int rc = i == 0 ? mk_engine_step(g_e.gpu, 0, g_e.prompt, P, false, lg, &err)
                    : mk_engine_step(g_e.gpu, 0, &toks[i - 1], 1, false, lg, &err);
    if (rc != 0) fail_msg("cuda step %d: %s", i, err.msg);
    fails += compare_logits(what, i, lg, lc + (size_t)i * V, V, &worst, &worst_nmse, &near);
    fails += !same_cache(what, i, snaps[i], mk_engine_cache(g_e.gpu));
    if (fails > 20) break;
  }
  printf("%s: %d steps, worst |logit diff| over the cpu's top-%d %.4f (bound %.2f), worst normalized error "
         "%.3e (bound %.1e), %d near ties (margin <= %.2f)\n",
         what, N_GEN + 1, TOPK, worst, LOGIT_ATOL, worst_nmse, LOGIT_NMSE, near, ARGMAX_MARGIN);
  mk_engine_stats_t sc, sg;
  mk_engine_get_stats(g_e.cpu, &sc);
  mk_engine_get_stats(g_e.gpu, &sg);
  printf("%s: kv live bytes cpu %zu cuda %zu, slots %d\n", what, sc.kv_live_bytes, sg.kv_live_bytes, sg.kv_slots);
  assert_int_equal(sc.kv_live_bytes, sg.kv_live_bytes);
  for (int i = 0; i <= N_GEN; i++) free(snaps[i]);
  free(lc);
  free(lg);
  assert_int_equal(fails, 0);
}

static void test_full(void **state) {
  mk_kv_config_t kv;
  mk_kv_config_default(&kv);
  kv.dtype = MK_KV_F16; /* the device cache is fp16: same rounding on both sides */
  run_policy("full", &kv);
}

static void test_morphkv(void **state) {
  mk_kv_config_t kv;
  mk_kv_config_default(&kv);
  kv.policy = MK_KV_MORPHKV;
  kv.window = 8;
  kv.capacity = 32;
  kv.dtype = MK_KV_F16;
  run_policy("morphkv W8 C32", &kv);
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  mk_backend_t probe;
  mk_gpu_test_init_or_exit(&probe); /* skips (77) without a device */
  probe.ops->free(&probe);
  if (!mk_test_model_path()) { /* a device machine may not have the 98 MB demo model */
    printf("demo model not found: skipped (set MORPHKV_TEST_MODEL)\n");
    return MK_GPU_SKIP;
  }
  if (open_engine(&g_e.cpu, MK_BACKEND_CPU) != 0 || open_engine(&g_e.gpu, MK_BACKEND_CUDA) != 0) return 1;
  mk_error_t err = {{0}};
  g_e.n_prompt = mk_tok_encode(mk_engine_tokenizer(g_e.cpu), k_prompt, strlen(k_prompt), true, false, g_e.prompt,
                               256, &err);
  if (g_e.n_prompt <= 0 || g_e.n_prompt > 256) {
    fprintf(stderr, "tokenizer: %s\n", err.msg);
    return 1;
  }
  printf("prompt: %d tokens\n", g_e.n_prompt);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_full), cmocka_unit_test(test_morphkv)};
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  mk_engine_close(g_e.cpu);
  mk_engine_close(g_e.gpu);
  return rc;
}
