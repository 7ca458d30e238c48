/* Matvec microbenchmark (not a test): weight bytes read per second by mk_matmul for the demo
 * model's shapes, per SIMD level, batch 1 (decode) and a 64-token prefill tile.
 *
 * Build (after `cmake --build build-quant`):
 *   gcc -std=c11 -O2 -fopenmp -I. tests/bench/bench_matmul.c build-quant/libmorphkv.a -lm \
 *       -o build-quant/bench_matmul
 * Run:  OMP_NUM_THREADS=2 OMP_PROC_BIND=true build-quant/bench_matmul
 *
 * "hot": the same matrix again and again (it stays in L2). "rot": 30 copies of the matrix in
 * turn (like 30 layers: the weights come from L3/DRAM, as in a real decode step). */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "src/quant.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 88172645463325252ull;
static uint8_t rand_u8(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (uint8_t)(rng >> 24);
}

static void bench(const mk_cpu_kernels_t *k, const char *lname, mk_type_t t, int64_t rows,
                  int64_t cols, int64_t n_tok, int copies) {
  size_t rb = mk_type_row_bytes(t, cols), mb = rb * (size_t)rows;
  uint8_t *data = aligned_alloc(64, (mb * copies + 63) & ~(size_t)63);
  for (size_t i = 0; i < mb * copies; i++) data[i] = rand_u8();
  /* sane fp16 scales at the start of every block (all benchmarked types store d first) */
  size_t bb = mk_type_block_bytes(t);
  for (size_t off = 0; off + bb <= mb * copies; off += bb) data[off] = 0x00, data[off + 1] = 0x20;
  float *x = malloc(sizeof(float) * cols * n_tok), *y = malloc(sizeof(float) * rows * n_tok);
  for (int64_t i = 0; i < cols * n_tok; i++) x[i] = (float)(rand_u8() - 128) / 64.0f;
  mk_qmat_t w = {t, data, rows, cols, rb};
  void *scratch = malloc(mk_matmul_scratch_bytes(&w, n_tok) + 1);
  int iters = (int)(4e9 / ((double)mb * (n_tok > 1 ? 16 : 1)));
  if (iters < 30) iters = 30;
  for (int i = 0; i < 10; i++) mk_matmul(k, &w, x, n_tok, y, scratch); /* warm up */
  /* per-call times; the minimum is robust to other processes sharing the cores */
  double *dts = malloc(sizeof(double) * iters);
  for (int i = 0; i < iters; i++) {
    w.data = data + (size_t)(i % copies) * mb;
    double t0 = now_s();
    mk_matmul(k, &w, x, n_tok, y, scratch);
    dts[i] = now_s() - t0;
  }
  double best = 1e30, mean = 0;
  for (int i = 0; i < iters; i++) {
    if (dts[i] < best) best = dts[i];
    mean += dts[i] / iters;
  }
  free(dts);
  printf("%-10s %-5s %5ldx%-5ld n_tok=%-3ld %-4s min %8.2f us %7.2f GB/s | mean %8.2f us %7.2f GB/s",
         lname, mk_type_name(t), (long)rows, (long)cols, (long)n_tok, copies > 1 ? "rot" : "hot",
         best * 1e6, (double)mb / best / 1e9, mean * 1e6, (double)mb / mean / 1e9);
  if (n_tok > 1) printf("  %6.1f GMAC/s (min)", (double)rows * cols * n_tok / best / 1e9);
  printf("\n");
  free(scratch), free(x), free(y), free(data);
}

int main(void) {
  printf("threads: %d\n", omp_get_max_threads());
  const mk_simd_t levels[] = {MK_SIMD_SCALAR, MK_SIMD_AVX2, MK_SIMD_AVX512};
  for (int li = 0; li < 3; li++) {
    const mk_cpu_kernels_t *k = mk_cpu_kernels_get(levels[li]);
    if (!k) {
      printf("%s: not supported by this CPU, skipped\n", mk_simd_name(levels[li]));
      continue;
    }
    const char *ln = mk_simd_name(levels[li]);
    bool scalar = levels[li] == MK_SIMD_SCALAR;
    bench(k, ln, MK_TYPE_Q4_1, 576, 1536, 1, 1);
    bench(k, ln, MK_TYPE_Q4_1, 1536, 576, 1, 1);
    if (scalar) continue;
    bench(k, ln, MK_TYPE_Q4_1, 576, 576, 1, 1);
    bench(k, ln, MK_TYPE_Q4_1, 192, 576, 1, 1);
    bench(k, ln, MK_TYPE_Q4_1, 576, 1536, 1, 30);
    bench(k, ln, MK_TYPE_Q4_1, 1536, 576, 1, 30);
    bench(k, ln, MK_TYPE_Q8_0, 49152, 576, 1, 1);
    bench(k, ln, MK_TYPE_Q4_1, 1536, 576, 64, 1);
    bench(k, ln, MK_TYPE_Q4_1, 576, 1536, 64, 1);
  }
  return 0;
}
