/* Selection and candidate softmax for the eviction policies; see topk.h for the rank order. */
#include "kvcache/topk.h"

#include <math.h>

static inline float rank_key(float s) { return isnan(s) ? -INFINITY : s; }

bool mk_kv_ranks_above(int a, int b, const float *score, const int32_t *pos) {
  float x = rank_key(score[a]), y = rank_key(score[b]);
  if (x != y) return x > y;
  return pos[a] < pos[b];
}

static inline void swap_int(int *a, int *b) {
  int t = *a;
  *a = *b;
  *b = t;
}

void mk_kv_select_top(int *cand, int n, int keep, const float *score, const int32_t *pos) {
  if (keep <= 0 || keep >= n) return;
  if (n - keep == 1) { /* steady state: move the single worst slot to the end */
    int worst = 0;
    for (int i = 1; i < n; i++)
      if (mk_kv_ranks_above(cand[worst], cand[i], score, pos)) worst = i;
    swap_int(&cand[worst], &cand[n - 1]);
    return;
  }
  /* Quickselect: afterwards cand[keep] holds the (keep+1)-th best and everything before it
   * ranks above it. The order is strict, so no three-way partition is needed. */
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    int mid = lo + (hi - lo) / 2;
    /* median of three into cand[hi] as the pivot */
    if (mk_kv_ranks_above(cand[mid], cand[lo], score, pos)) swap_int(&cand[mid], &cand[lo]);
    if (mk_kv_ranks_above(cand[hi], cand[lo], score, pos)) swap_int(&cand[hi], &cand[lo]);
    if (mk_kv_ranks_above(cand[mid], cand[hi], score, pos)) swap_int(&cand[mid], &cand[hi]);
    int pivot = cand[hi], store = lo;
    for (int i = lo; i < hi; i++)
      if (mk_kv_ranks_above(cand[i], pivot, score, pos)) swap_int(&cand[i], &cand[store++]);
    swap_int(&cand[store], &cand[hi]);
    if (store == keep) break;
    if (keep < store)
      hi = store - 1;
    else
      lo = store + 1;
  }
}

bool mk_kv_softmax_cand(const float *row, const int *cand, int n, float *p) {
  float m = -INFINITY;
  for (int i = 0; i < n; i++) {
    float z = row[cand[i]];
    if (z > m) m = z; /* NaN never compares greater */
  }
  if (!(m > -INFINITY) || isinf(m)) return false;
  float s = 0.0f;
  for (int i = 0; i < n; i++) {
    float z = row[cand[i]];
    float e = (z == z) ? expf(z - m) : 0.0f;
    p[i] = e;
    s += e;
  }
  float inv = 1.0f / s;
  for (int i = 0; i < n; i++) p[i] *= inv;
  return true;
}
