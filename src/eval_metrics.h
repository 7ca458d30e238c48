/* Token-sequence metrics of `morphkv eval` (src/eval.c, docs/fidelity.md), pure functions on
 * token ids and logits so that tests can check them on hand-made data.
 *
 * Distance of a position (issue 13). For the token seq[t], take the longest n-gram (2 <= n <=
 * MK_EV_MAX_NGRAM) that ends at t and also ends at some earlier s < t; the position's distance is
 * t - s for the most recent such s (largest s among the longest matches), and its n-gram length
 * is n. A position with no earlier bigram seq[t-1], seq[t] has distance -1 ("novel"). The
 * distance says how far back the text the model is continuing was last seen: a cache of capacity
 * C cannot hold it when distance > C ("long-range"); distance <= C is "local".
 *
 * Loops: a position whose n-gram length is >= MK_EV_LOOP_NGRAM sits inside a verbatim repetition
 * of at least that many tokens (a greedy loop, or a long copy); the harness reports metrics with
 * and without those positions. */
#ifndef MK_EVAL_METRICS_H
#define MK_EVAL_METRICS_H

#include <stdint.h>

#define MK_EV_MAX_NGRAM 64
#define MK_EV_LOOP_NGRAM 16

/* Distance and n-gram length of position t in seq[0..t] (see above). *len_out = 0 when novel. */
int mk_ev_ngram_distance(const int32_t *seq, int t, int *len_out);

/* The class of a position for a cache of capacity cap: 0 novel, 1 local, 2 long-range. */
enum { MK_EV_NOVEL = 0, MK_EV_LOCAL = 1, MK_EV_LONG = 2 };
int mk_ev_distance_class(int distance, int cap);

/* Free-running text: the fraction of the 4-grams of seq[0..n) that occurred earlier in it
 * (0 when n < 5), and distinct-2 = distinct bigrams / bigrams (1 when n < 2). */
double mk_ev_repeated_4gram_frac(const int32_t *seq, int n);
double mk_ev_distinct2(const int32_t *seq, int n);
/* The first index where a[0..na) and b[0..nb) differ; min(na, nb) if one is a prefix. */
int mk_ev_first_divergence(const int32_t *a, int na, const int32_t *b, int nb);

/* The recall scorer: an answer of m tokens, teacher-forced, one push per answer token with the
 * logits that predict it. ll = sum of log-probabilities of the answer tokens (fp64 log-softmax);
 * exact = every answer token is the greedy choice (ties to the lowest id), which under greedy
 * decoding is exactly "the model writes the answer". */
typedef struct mk_ev_answer {
  double ll;
  int n, n_match;
} mk_ev_answer_t;
void mk_ev_answer_push(mk_ev_answer_t *a, const float *logits, int n_vocab, int32_t y);
static inline int mk_ev_answer_exact(const mk_ev_answer_t *a) { return a->n > 0 && a->n_match == a->n; }

#endif
