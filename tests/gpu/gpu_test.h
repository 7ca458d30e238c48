/* Helpers for the GPU tests (label gpu): backend start-up with the skip rule, normalized error.
 *
 * Skip rule: where mk_backend_cuda_init fails with "no CUDA device", a test prints
 * "no CUDA device: skipped" and exits 77 (ctest SKIP_RETURN_CODE). Any other failure fails. */
#ifndef MK_GPU_TEST_H
#define MK_GPU_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/backend.h"

#define MK_GPU_SKIP 77

/* Device for the tests: $MORPHKV_TEST_DEVICE, default 0. */
static inline int mk_gpu_test_device(void) {
  const char *s = getenv("MORPHKV_TEST_DEVICE");
  return s && *s ? atoi(s) : 0;
}

static inline bool mk_gpu_is_no_device(const mk_error_t *err) {
  return strncmp(err->msg, "no CUDA device", 14) == 0;
}

/* Starts the CUDA backend or exits: 77 (skip) without a device, 1 on any other failure. */
static inline void mk_gpu_test_init_or_exit(mk_backend_t *b) {
  mk_backend_params_t p = {.kind = MK_BACKEND_CUDA, .n_threads = 1, .simd = -1, .device = mk_gpu_test_device()};
  mk_error_t err = {{0}};
  if (!mk_backend_cuda_init) {
    printf("no CUDA device: skipped (this build has no CUDA backend)\n");
    exit(MK_GPU_SKIP);
  }
  if (mk_backend_cuda_init(b, &p, &err) == 0) return;
  if (mk_gpu_is_no_device(&err)) {
    printf("no CUDA device: skipped (%s)\n", err.msg);
    exit(MK_GPU_SKIP);
  }
  fprintf(stderr, "CUDA backend start-up failed: %s\n", err.msg);
  exit(1);
}

/* sum (a-b)^2 / sum b^2 (0 when both are zero). */
static inline double mk_nmse(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)a[i] - b[i];
    num += d * d;
    den += (double)b[i] * b[i];
  }
  if (den == 0) return num == 0 ? 0 : INFINITY;
  return num / den;
}

/* Compares got (CUDA) against ref (CPU) by normalized error; on failure prints the bound and
 * the first mismatches (elements off by more than sqrt(bound) x rms(ref)). */
static inline bool mk_gpu_close(const char *what, const float *got, const float *ref, size_t n, double bound) {
  double e = mk_nmse(got, ref, n);
  if (e <= bound && isfinite(e)) return true;
  double rms = 0;
  for (size_t i = 0; i < n; i++) rms += (double)ref[i] * ref[i];
  rms = sqrt(rms / (n ? n : 1));
  double tol = sqrt(bound) * rms;
  printf("%s: normalized error %.3e exceeds the bound %.1e (%zu values)\n", what, e, bound, n);
  int shown = 0;
  for (size_t i = 0; i < n && shown < 8; i++)
    if (!(fabs((double)got[i] - ref[i]) <= tol)) {
      printf("  [%zu] cuda %.8g  cpu %.8g\n", i, got[i], ref[i]);
      shown++;
    }
  return false;
}

#endif
