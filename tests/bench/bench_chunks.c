/* Cost of the deterministic numerics per token (not a test): the demo model's layer matmuls
 * (Q4_1, 576 hidden, 1536 MLP) with plain mk_matmul for all seven matrices, against
 * mk_matmul_chunks for attn_output (chunks of one 64-column head) and ffn_down (chunks of 128),
 * as the engine runs them under --deterministic on. One thread, interleaved best-of runs.
 *
 * Build and run (docs/benchmarks.md, "Deterministic numerics"):
 *   gcc -std=c11 -O2 -fopenmp -I. tests/bench/bench_chunks.c build/libmorphkv.a -lm -o build/bench_chunks
 *   build/bench_chunks 1; build/bench_chunks 64        # decode (batch 1), a 64-token prefill tile */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "src/quant.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* A random Q4_1 matrix with small finite scales. */
static mk_qmat_t make(int rows, int cols) {
  size_t rb = mk_type_row_bytes(MK_TYPE_Q4_1, cols);
  unsigned char *w = malloc(rb * (size_t)rows);
  for (size_t i = 0; i < rb * (size_t)rows; i++) w[i] = (unsigned char)rand();
  for (int r = 0; r < rows; r++)
    for (int b = 0; b < cols / 32; b++) {
      unsigned short h = 0x2000;
      memcpy(w + (size_t)r * rb + (size_t)b * 20, &h, 2);
      memcpy(w + (size_t)r * rb + (size_t)b * 20 + 2, &h, 2);
    }
  mk_qmat_t m = {MK_TYPE_Q4_1, w, rows, cols, rb};
  return m;
}

int main(int argc, char **argv) {
  const int n = argc > 1 ? atoi(argv[1]) : 1;
  omp_set_num_threads(1);
  const mk_cpu_kernels_t *k = mk_cpu_kernels_get(mk_simd_best());
  mk_qmat_t wq = make(576, 576), wk = make(192, 576), wg = make(1536, 576), wo = make(576, 576), wd = make(576, 1536);
  float *x = malloc(sizeof(float) * 1536 * (size_t)n), *y = malloc(sizeof(float) * 1536 * (size_t)n);
  for (int i = 0; i < 1536 * n; i++) x[i] = (float)(rand() % 1000) / 500.0f - 1.0f;
  void *sc = malloc((size_t)1 << 26);
  double best[2] = {1e9, 1e9}, rowpar[2] = {1e9, 1e9};
  for (int it = 0; it < (n > 1 ? 40 : 400); it++) {
    const int mode = it & 1; /* 0: plain, 1: chunked attn_output / ffn_down */
    double t0 = now();
    mk_matmul(k, &wq, x, n, y, sc);
    mk_matmul(k, &wk, x, n, y, sc);
    mk_matmul(k, &wk, x, n, y, sc);
    mk_matmul(k, &wg, x, n, y, sc);
    mk_matmul(k, &wg, x, n, y, sc);
    double t1 = now();
    if (mode == 0) {
      mk_matmul(k, &wo, x, n, y, sc);
      mk_matmul(k, &wd, x, n, y, sc);
    } else {
      mk_matmul_chunks(k, &wo, x, n, 64, NULL, y, sc);
      mk_matmul_chunks(k, &wd, x, n, 128, NULL, y, sc);
    }
    double t2 = now();
    if (t2 - t0 < best[mode]) best[mode] = t2 - t0;
    if (t2 - t1 < rowpar[mode]) rowpar[mode] = t2 - t1;
  }
  printf("n=%d (%s) per layer: plain %.1f us (attn_output+ffn_down %.1f), chunked %.1f us (%.1f): %+.1f%%\n", n,
         mk_simd_name(k->level), best[0] * 1e6, rowpar[0] * 1e6, best[1] * 1e6, rowpar[1] * 1e6,
         100 * (best[1] / best[0] - 1));
  return 0;
}
