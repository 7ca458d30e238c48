/* CUDA backend start-up, on any machine (runs here without a GPU; it does not skip):
 *   without a device   mk_backend_cuda_init and mk_backend_init(kind cuda) fail with a message
 *                      that starts "no CUDA device" (the rule the gpu tests skip by);
 *   with a device      device 0 starts, an ordinal past the visible devices is refused by number,
 *                      a negative one too, and the backend frees cleanly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "src/backend.h"
#include "tests/gpu/gpu_test.h"

static void test_init(void **state) {
  assert_non_null(mk_backend_cuda_init); /* this test is built only with the CUDA backend */
  mk_backend_t b;
  mk_backend_params_t p = {.kind = MK_BACKEND_CUDA, .n_threads = 1, .simd = -1, .device = 0};
  mk_error_t err = {{0}};
  int rc = mk_backend_cuda_init(&b, &p, &err);
  if (rc != 0) {
    printf("no device here: %s\n", err.msg);
    assert_true(mk_gpu_is_no_device(&err));
    mk_error_t err2 = {{0}};
    assert_int_equal(mk_backend_init(&b, &p, &err2), -1);
    assert_true(mk_gpu_is_no_device(&err2));
    return;
  }
  printf("device 0 started: backend %s\n", b.ops->name);
  assert_string_equal(b.ops->name, "cuda");
  assert_int_equal(b.ops->sync(&b, &err), 0);
  b.ops->free(&b);
  mk_backend_t b2;
  p.device = 1 << 20;
  assert_int_equal(mk_backend_cuda_init(&b2, &p, &err), -1);
  printf("expected: %s\n", err.msg);
  assert_non_null(strstr(err.msg, "1048576"));
  p.device = -1;
  assert_int_equal(mk_backend_cuda_init(&b2, &p, &err), -1);
  printf("expected: %s\n", err.msg);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_init)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
