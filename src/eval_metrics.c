/* Token-sequence metrics of `morphkv eval`; definitions in src/eval_metrics.h. */
#include "src/eval_metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int mk_ev_ngram_distance(const int32_t *seq, int t, int *len_out) {
  int best_len = 0, best_s = -1;
  if (t >= 1) {
    for (int s = t - 1; s >= 1; s--) { /* most recent first: a tie keeps the larger s */
      if (seq[s] != seq[t] || seq[s - 1] != seq[t - 1]) continue;
      int len = 2;
      while (len < MK_EV_MAX_NGRAM && s - len >= 0 && seq[s - len] == seq[t - len]) len++;
      if (len > best_len) {
        best_len = len;
        best_s = s;
        if (len == MK_EV_MAX_NGRAM) break;
      }
    }
  }
  if (len_out) *len_out = best_len;
  return best_s < 0 ? -1 : t - best_s;
}

int mk_ev_distance_class(int distance, int cap) {
  if (distance < 0) return MK_EV_NOVEL;
  return distance > cap ? MK_EV_LONG : MK_EV_LOCAL;
}

static int same_ngram(const int32_t *a, const int32_t *b, int n) {
  return memcmp(a, b, sizeof *a * (size_t)n) == 0;
}

double mk_ev_repeated_4gram_frac(const int32_t *seq, int n) {
  if (n < 5) return 0.0;
  long rep = 0, tot = 0;
  for (int i = 3; i < n; i++, tot++)
    for (int j = 3; j < i; j++)
      if (same_ngram(seq + i - 3, seq + j - 3, 4)) {
        rep++;
        break;
      }
  return (double)rep / (double)tot;
}

double mk_ev_distinct2(const int32_t *seq, int n) {
  if (n < 2) return 1.0;
  long uniq = 0;
  for (int i = 1; i < n; i++) {
    int seen = 0;
    for (int j = 1; j < i && !seen; j++) seen = seq[j - 1] == seq[i - 1] && seq[j] == seq[i];
    uniq += !seen;
  }
  return (double)uniq / (double)(n - 1);
}

int mk_ev_first_divergence(const int32_t *a, int na, const int32_t *b, int nb) {
  int n = na < nb ? na : nb, i = 0;
  while (i < n && a[i] == b[i]) i++;
  return i;
}

void mk_ev_answer_push(mk_ev_answer_t *a, const float *logits, int n_vocab, int32_t y) {
  double m = -INFINITY;
  int best = 0;
  for (int i = 0; i < n_vocab; i++) {
    if (logits[i] > m) m = logits[i];
    if (logits[i] > logits[best]) best = i;
  }
  double s = 0.0;
  for (int i = 0; i < n_vocab; i++) s += exp((double)logits[i] - m);
  a->ll += (double)logits[y] - (m + log(s));
  a->n++;
  a->n_match += best == y;
}
