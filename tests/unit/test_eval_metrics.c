/* The metrics of `morphkv eval` (src/eval_metrics.h) on hand-made token sequences whose
 * distances, n-gram lengths, repeated 4-grams, distinct bigrams and answer scores are worked out
 * by hand in the comments. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "src/eval_metrics.h"

static void test_distance(void **unused) {
  (void)unused;
  /*                   0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 */
  const int32_t a[] = {1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 9, 8, 7, 1, 2};
  int len = -1;
  /* t = 0 and t = 1: no earlier bigram */
  assert_int_equal(mk_ev_ngram_distance(a, 0, &len), -1);
  assert_int_equal(len, 0);
  assert_int_equal(mk_ev_ngram_distance(a, 1, &len), -1);
  /* t = 8: (1, 2) ended at s = 1, a[-1] does not exist: bigram, distance 7 */
  assert_int_equal(mk_ev_ngram_distance(a, 8, &len), 7);
  assert_int_equal(len, 2);
  /* t = 9: (1, 2, 3) ended at s = 2: trigram, distance 7 */
  assert_int_equal(mk_ev_ngram_distance(a, 9, &len), 7);
  assert_int_equal(len, 3);
  /* t = 10: (3, 9) never seen: novel */
  assert_int_equal(mk_ev_ngram_distance(a, 10, &len), -1);
  assert_int_equal(len, 0);
  /* t = 13: (7, 1) ended at s = 7 (6 != 8 before it): distance 6 */
  assert_int_equal(mk_ev_ngram_distance(a, 13, &len), 6);
  assert_int_equal(len, 2);
  /* t = 14: (7, 1, 2) ended at s = 8 (length 3) beats (1, 2) at s = 1 (length 2): distance 6 */
  assert_int_equal(mk_ev_ngram_distance(a, 14, &len), 6);
  assert_int_equal(len, 3);

  /* The longest match wins over a more recent shorter one: (5, 1, 2) at s = 2, not (1, 2) at 5 */
  const int32_t b[] = {5, 1, 2, 9, 1, 2, 5, 1, 2};
  assert_int_equal(mk_ev_ngram_distance(b, 8, &len), 6);
  assert_int_equal(len, 3);
  /* Equal lengths: the most recent. (1, 2) at s = 2 and s = 5, both bigrams: distance 3 */
  const int32_t c[] = {7, 1, 2, 8, 1, 2, 9, 1, 2};
  assert_int_equal(mk_ev_ngram_distance(c, 8, &len), 3);
  assert_int_equal(len, 2);

  /* A loop of period 3: the match runs back to the start (27 tokens at t = 29), distance 3,
   * and the length is capped at MK_EV_MAX_NGRAM for a long loop */
  int32_t loop[200];
  for (int i = 0; i < 200; i++) loop[i] = 1 + i % 3;
  assert_int_equal(mk_ev_ngram_distance(loop, 29, &len), 3);
  assert_int_equal(len, 27);
  assert_true(len >= MK_EV_LOOP_NGRAM);
  assert_int_equal(mk_ev_ngram_distance(loop, 199, &len), 3);
  assert_int_equal(len, MK_EV_MAX_NGRAM);
  /* t = 3: only (1, 2... ) -> (3, 1)? loop[2..3] = (3, 1) is new; t = 4: (1, 2) at s = 1 */
  assert_int_equal(mk_ev_ngram_distance(loop, 3, &len), -1);
  assert_int_equal(mk_ev_ngram_distance(loop, 4, &len), 3);
  assert_int_equal(len, 2);
}

static void test_class(void **unused) {
  (void)unused;
  assert_int_equal(mk_ev_distance_class(-1, 5), MK_EV_NOVEL);
  assert_int_equal(mk_ev_distance_class(7, 5), MK_EV_LONG);
  assert_int_equal(mk_ev_distance_class(7, 7), MK_EV_LOCAL); /* distance == C: still held */
  assert_int_equal(mk_ev_distance_class(1, 1), MK_EV_LOCAL);
}

static void test_degeneration(void **unused) {
  (void)unused;
  /* 4-grams ending at i = 3..8: 1234 2341 3412 4123 1234(seen) 2345: 1 of 6 */
  const int32_t a[] = {1, 2, 3, 4, 1, 2, 3, 4, 5};
  assert_true(fabs(mk_ev_repeated_4gram_frac(a, 9) - 1.0 / 6.0) < 1e-15);
  assert_true(mk_ev_repeated_4gram_frac(a, 4) == 0.0);
  int32_t loop[40];
  for (int i = 0; i < 40; i++) loop[i] = i % 2;
  /* 0101...: 37 4-grams, only the first two are new */
  assert_true(fabs(mk_ev_repeated_4gram_frac(loop, 40) - 35.0 / 37.0) < 1e-15);
  /* bigrams 12 21 12 23: 3 distinct of 4 */
  const int32_t d[] = {1, 2, 1, 2, 3};
  assert_true(mk_ev_distinct2(d, 5) == 0.75);
  assert_true(mk_ev_distinct2(d, 1) == 1.0);
  assert_true(fabs(mk_ev_distinct2(loop, 40) - 2.0 / 39.0) < 1e-15);
  const int32_t x[] = {1, 2, 3}, y[] = {1, 2, 4}, z[] = {1, 2};
  assert_int_equal(mk_ev_first_divergence(x, 3, y, 3), 2);
  assert_int_equal(mk_ev_first_divergence(x, 3, z, 2), 2);
  assert_int_equal(mk_ev_first_divergence(x, 3, x, 3), 3);
  assert_int_equal(mk_ev_first_divergence(y, 3, x, 0), 0);
}

static void test_answer(void **unused) {
  (void)unused;
  /* answer (1, 3): rows whose greedy choice is 1, then 3 */
  const float r1[4] = {0, 1, 0, 0}, r2[4] = {0, 0, -1, 2};
  mk_ev_answer_t a = {0};
  mk_ev_answer_push(&a, r1, 4, 1);
  mk_ev_answer_push(&a, r2, 4, 3);
  const double want = (1.0 - log(3.0 + exp(1.0))) + (2.0 - log(2.0 + exp(-1.0) + exp(2.0)));
  assert_true(fabs(a.ll - want) < 1e-12);
  assert_int_equal(a.n, 2);
  assert_true(mk_ev_answer_exact(&a));
  /* a tie goes to the lowest id, as in the harness's greedy choice: 1 is not chosen */
  const float r3[4] = {2, 2, 0, 0};
  mk_ev_answer_t b = {0};
  mk_ev_answer_push(&b, r1, 4, 1);
  mk_ev_answer_push(&b, r3, 4, 1);
  assert_int_equal(b.n_match, 1);
  assert_false(mk_ev_answer_exact(&b));
  assert_true(fabs(b.ll - ((1.0 - log(3.0 + exp(1.0))) + (2.0 - log(2.0 * exp(2.0) + 2.0)))) < 1e-12);
  mk_ev_answer_t none = {0};
  assert_false(mk_ev_answer_exact(&none));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_distance),
      cmocka_unit_test(test_class),
      cmocka_unit_test(test_degeneration),
      cmocka_unit_test(test_answer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
