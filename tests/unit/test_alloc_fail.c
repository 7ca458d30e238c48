/* Forced allocation failures in the forward pass (backend ops report failure; src/backend.h).
 *
 * The test binary is linked with -Wl,--wrap=aligned_alloc (tests/CMakeLists.txt), so every
 * aligned_alloc of the core library (CPU activations, matmul and attention scratch, KV arenas)
 * goes through __wrap_aligned_alloc below, which can be told to fail the k-th call from now.
 * For k = 1, 2, ... a fresh engine on a small synthetic Q8_0 model prefills 12 tokens with the
 * k-th allocation failing, until a run no longer reaches a k-th allocation. Every failing run must
 * return -1 with a message that says what ran out; none may crash (before backend ops could fail,
 * a failed matmul scratch allocation was handed to the kernel as NULL). The runs must between them
 * hit the matmul scratch and the attention scratch, each named with its op and layer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "src/engine.h"
#include "tests/testutil/synth_model.h"

void *__real_aligned_alloc(size_t align, size_t size);
void *__wrap_aligned_alloc(size_t align, size_t size);

static long fail_at = 0; /* 0: never; else fail when the countdown reaches it */
static long calls = 0;
static int fired = 0;

void *__wrap_aligned_alloc(size_t align, size_t size) {
  if (fail_at > 0 && ++calls == fail_at) {
    fired = 1;
    return NULL;
  }
  return __real_aligned_alloc(align, size);
}

static void arm(long k) {
  calls = 0;
  fired = 0;
  fail_at = k;
}

static char model_path[256];

static int setup(void **state) {
  const char *tmp = getenv("TMPDIR");
  snprintf(model_path, sizeof model_path, "%s/mk_allocfail_XXXXXX", tmp && *tmp ? tmp : "/tmp");
  int fd = mkstemp(model_path);
  if (fd < 0) return -1;
  close(fd);
  mk_synth_params_t sp;
  mk_synth_params_default(&sp);
  sp.wtype = MK_TYPE_Q8_0; /* quantized weights: matmul needs its activation scratch */
  return mk_synth_model_write(model_path, &sp);
}

static int teardown(void **state) {
  unlink(model_path);
  return 0;
}

/* One fresh engine, the k-th aligned_alloc of begin + prefill failing. Returns 1 if the fault
 * fired (and the step failed as it must), 0 if the run completed without reaching it. */
static int run_with_fault(long k, char *msg, size_t msg_size) {
  mk_engine_params_t ep = {.model_path = model_path, .backend = {.kind = MK_BACKEND_CPU, .n_threads = 1, .simd = -1}};
  mk_engine_t *e = NULL;
  mk_error_t err = {{0}};
  assert_int_equal(mk_engine_open(&e, &ep, NULL, &err), 0);
  mk_kv_config_t kv;
  mk_kv_config_default(&kv);
  int32_t ids[12];
  for (int i = 0; i < 12; i++) ids[i] = 1 + 7 * i;
  arm(k);
  int rc = mk_engine_begin(e, &kv, 1, 12, 16, &err);
  if (rc == 0) rc = mk_engine_step(e, 0, ids, 12, false, NULL, &err);
  int hit = fired;
  arm(0);
  if (hit) {
    assert_int_equal(rc, -1);
    assert_true(err.msg[0] != '\0');
    snprintf(msg, msg_size, "%s", err.msg);
  } else {
    if (rc) fprintf(stderr, "run %ld: %s\n", k, err.msg);
    assert_int_equal(rc, 0);
  }
  mk_engine_close(e);
  return hit;
}

static void test_every_allocation_fails_cleanly(void **state) {
  int saw_matmul = 0, saw_attention = 0, saw_acts = 0;
  long k = 1;
  char msg[sizeof(((mk_error_t *)0)->msg)];
  for (; k < 1000; k++) {
    if (!run_with_fault(k, msg, sizeof msg)) break;
    fprintf(stderr, "allocation %ld fails: %s\n", k, msg);
    assert_non_null(strstr(msg, "out of memory"));
    if (strstr(msg, "matmul") && strstr(msg, "layer 0")) saw_matmul = 1;
    if (strstr(msg, "attention")) saw_attention = 1;
    if (strstr(msg, "activations")) saw_acts = 1;
  }
  fprintf(stderr, "%ld allocations, each failed once\n", k - 1);
  assert_true(k > 1 && k < 1000);
  assert_true(saw_matmul);
  assert_true(saw_attention);
  assert_true(saw_acts);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_every_allocation_fails_cleanly)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
