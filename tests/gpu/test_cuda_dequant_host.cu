/* The device dequantizers (cuda/dequant.cuh, __host__ __device__) run here on the CPU against
 * golden values from the `gguf` Python package (tests/gpu/golden/make_dequant_golden.py), for
 * every type the CUDA backend loads. Needs no GPU: the same source is compiled for the host.
 * Bound: bitwise equal (same fp32 operations in the same order as gguf-py's numpy code); any
 * difference is printed with the block and element. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include <cmocka.h>
}

#include "cuda/dequant.cuh"

static const char *k_types[] = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                                "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"};

static unsigned char *read_all(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = (unsigned char *)malloc((size_t)len);
  *n = fread(b, 1, (size_t)len, f);
  fclose(f);
  return b;
}

static void test_golden(void **state) {
  const char *src = getenv("MORPHKV_SOURCE_DIR");
  assert_non_null(src);
  int bad_types = 0;
  for (size_t ti = 0; ti < sizeof k_types / sizeof k_types[0]; ti++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/gpu/golden/dequant_%s.bin", src, k_types[ti]);
    size_t n = 0;
    unsigned char *b = read_all(path, &n);
    if (!b) fail_msg("missing golden file %s", path);
    uint32_t h[5];
    assert_true(n >= 24 && memcmp(b, "MKDQ", 4) == 0);
    memcpy(h, b + 4, sizeof h);
    const uint32_t type = h[1], nb = h[2], bb = h[3], be = h[4];
    assert_int_equal(h[0], 1);
    assert_int_equal(mk_dq_block_bytes((int)type), (int)bb);
    assert_int_equal(mk_dq_block_elems((int)type), (int)be);
    assert_int_equal(n, 24 + (size_t)nb * bb + (size_t)nb * be * 4);
    const unsigned char *raw = b + 24;
    const float *want = (const float *)(b + 24 + (size_t)nb * bb);
    float y[256];
    int bad = 0;
    for (uint32_t k = 0; k < nb; k++) {
      mk_dq_block((int)type, raw + (size_t)k * bb, y);
      for (uint32_t j = 0; j < be; j++) {
        float w = want[(size_t)k * be + j];
        if (memcmp(&y[j], &w, 4) != 0) {
          if (bad < 5) printf("%s block %u element %u: ours %.9g, gguf-py %.9g\n", k_types[ti], k, j, y[j], w);
          bad++;
        }
      }
    }
    printf("%s: %u blocks, %u values, %d differ\n", k_types[ti], nb, nb * be, bad);
    bad_types += bad != 0;
    free(b);
  }
  assert_int_equal(bad_types, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_golden)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
