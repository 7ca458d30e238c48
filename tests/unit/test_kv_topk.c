/* kvcache/topk.c: the selection used by every scoring policy equals a full sort under the rank
 * order (higher score, then smaller position), ties and NaN included; the softmax over
 * candidates is normalised and ignores non-candidate columns. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kvcache/topk.h"
#include "tests/testutil/testutil.h"

static const float *g_score;
static const int32_t *g_pos;

static int by_rank(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  if (mk_kv_ranks_above(x, y, g_score, g_pos)) return -1;
  if (mk_kv_ranks_above(y, x, g_score, g_pos)) return 1;
  return 0;
}

static int by_int(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

static void test_select_matches_sort(void **unused) {
  uint64_t rng = 7;
  enum { N = 300 };
  float score[N];
  int32_t pos[N];
  int cand[N], ref[N];
  int trials = 0;
  for (int n = 1; n <= 120; n += (n < 10 ? 1 : 7))
    for (int keep = 0; keep <= n; keep += (keep < 4 || keep > n - 4 ? 1 : 5))
      for (int mode = 0; mode < 4; mode++) {
        /* slots 0..N-1; candidates a random subset, positions a random permutation */
        for (int j = 0; j < N; j++) {
          pos[j] = j;
          float r = mk_test_rand_f32(&rng);
          score[j] = mode == 0 ? r : mode == 1 ? roundf(r * 3) : mode == 2 ? 0.5f : r;
          if (mode == 3 && (mk_test_rand_u64(&rng) & 7) == 0) score[j] = NAN;
        }
        for (int j = N - 1; j > 0; j--) {
          int i = (int)(mk_test_rand_u64(&rng) % (uint64_t)(j + 1));
          int32_t t = pos[i];
          pos[i] = pos[j];
          pos[j] = t;
        }
        for (int i = 0; i < n; i++) cand[i] = (int)(mk_test_rand_u64(&rng) % N);
        /* distinct slots */
        for (int i = 0; i < n; i++) cand[i] = (cand[i] + i * 131) % N;
        qsort(cand, (size_t)n, sizeof(int), by_int);
        int m = 0;
        for (int i = 0; i < n; i++)
          if (m == 0 || cand[i] != cand[m - 1]) cand[m++] = cand[i];
        memcpy(ref, cand, sizeof(int) * m);
        g_score = score;
        g_pos = pos;
        qsort(ref, (size_t)m, sizeof(int), by_rank);
        int k = keep > m ? m : keep;
        mk_kv_select_top(cand, m, k, score, pos);
        /* same kept set */
        qsort(cand, (size_t)k, sizeof(int), by_int);
        qsort(ref, (size_t)k, sizeof(int), by_int);
        assert_memory_equal(cand, ref, sizeof(int) * k);
        trials++;
      }
  assert_true(trials > 500);
}

static void test_steady_state_argmin(void **unused) {
  float score[6] = {0.3f, 0.1f, 0.9f, 0.1f, 0.5f, 0.2f};
  int32_t pos[6] = {10, 4, 7, 9, 1, 3};
  int cand[5] = {0, 1, 2, 3, 4}; /* slot 5 is not a candidate */
  mk_kv_select_top(cand, 5, 4, score, pos);
  assert_int_equal(cand[4], 3); /* slots 1 and 3 tie at 0.1: the larger position (9) goes */
}

static void test_softmax_cand(void **unused) {
  float row[6] = {1.0f, -INFINITY, 1000.0f, 2.0f, 3.0f, -INFINITY};
  int cand[3] = {0, 3, 4};
  float p[3];
  assert_true(mk_kv_softmax_cand(row, cand, 3, p)); /* column 2 is not a candidate */
  double z = exp(1) + exp(2) + exp(3);
  assert_float_equal(p[0], exp(1) / z, 1e-6);
  assert_float_equal(p[1], exp(2) / z, 1e-6);
  assert_float_equal(p[2], exp(3) / z, 1e-6);
  /* large logits: max-subtracted, no overflow */
  float big[2] = {1000.0f, 999.0f};
  int c2[2] = {0, 1};
  assert_true(mk_kv_softmax_cand(big, c2, 2, p));
  assert_float_equal(p[0], 1.0 / (1.0 + exp(-1)), 1e-6);
  /* a row with no finite candidate carries no score */
  int c3[2] = {1, 5};
  assert_false(mk_kv_softmax_cand(row, c3, 2, p));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_select_matches_sort),
      cmocka_unit_test(test_steady_state_argmin),
      cmocka_unit_test(test_softmax_cand),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
