/* SnapKV (Li et al. 2024; docs/morphkv.md §10): a one-time selection at prefill end, then no eviction.
 *
 * Observation window w = cfg->window, budget B = cfg->capacity (w included), pooling kernel
 * ks = cfg->snapkv_pool (odd), average pooling (zero padding counted, as PyTorch's avg_pool1d) or
 * max pooling (cfg->snapkv_maxpool). For a prompt of P > B tokens:
 *   vote[p]   = sum over the last w prompt queries and over the group's query heads of the causal
 *               softmax probability given to position p, for p in [0, P-w)   (prob_sum rows)
 *   pooled[p] = pool_ks(vote)[p]   (stride 1, padding ks/2, along positions)
 *   keep the top B-w prefix positions by pooled (tie: smaller pos) plus positions P-w..P-1.
 * P <= B keeps the whole prompt. During decode nothing is evicted: the cache grows by one slot
 * per generated token, so slots_needed is the run's total length.
 *
 * GQA: the selection is per stored KV head, votes summed over the group (as H2O's `group` mode);
 * the reference's per-query-head selection would need KV stored per query head.
 * The engine passes only the rows of the last w prompt queries (prefill_rows = w); observe counts
 * rows until the prefill's evict, and ignores decode rows. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kvcache/kvcache.h"
#include "src/mk_util.h"
#include "kvcache/topk.h"

typedef struct snap_state {
  int done; /* the prefill selection has run; later rows are ignored */
  int pad_[3];
} snap_state_t;

typedef struct snap_view {
  snap_state_t *st;
  float *vote;   /* (n_slots) by slot */
  float *score;  /* (n_slots) by slot: pooled vote */
  float *pooled; /* (n_slots) by position */
  int *byp;      /* (n_slots) position -> slot; then the candidate list */
} snap_view_t;


static size_t snap_layout(int n_slots, char *base, snap_view_t *v) {
  size_t arr = mk_align16(sizeof(float) * (size_t)n_slots);
  size_t off = mk_align16(sizeof(snap_state_t));
  if (v) {
    v->st = (snap_state_t *)base;
    v->vote = (float *)(base + off);
    v->score = (float *)(base + off + arr);
    v->pooled = (float *)(base + off + 2 * arr);
    v->byp = (int *)(base + off + 3 * arr);
  }
  return off + 3 * arr + mk_align16(sizeof(int) * (size_t)n_slots);
}

static snap_view_t snap_view(mk_kv_head_t *h) {
  snap_view_t v;
  snap_layout(h->n_slots, (char *)h->state, &v);
  return v;
}

static int snap_validate(const mk_kv_config_t *cfg, mk_error_t *err) {
  if (cfg->window < 1)
    return mk_fail(err, "snapkv: kv window (observation window) %d must be at least 1", cfg->window);
  if (cfg->capacity <= cfg->window)
    return mk_fail(err, "snapkv: kv capacity %d must exceed kv window %d", cfg->capacity,
                   cfg->window);
  if (cfg->snapkv_pool < 1 || cfg->snapkv_pool % 2 == 0)
    return mk_fail(err, "snapkv: pooling kernel %d must be odd and >= 1", cfg->snapkv_pool);
  return 0;
}

static int snap_slots(const mk_kv_config_t *cfg, int max_prompt, int max_total) {
  return max_total > max_prompt ? max_total : max_prompt;
}

static size_t snap_state_bytes(const mk_kv_config_t *cfg, int n_slots, int d, int g) {
  return snap_layout(n_slots, NULL, NULL);
}

static unsigned snap_needs(const mk_kv_config_t *cfg) { return MK_KV_NEED_PROB_SUM; }
static int snap_prefill_rows(const mk_kv_config_t *cfg) { return cfg->window; }

static void snap_reset(const mk_kv_config_t *cfg, mk_kv_head_t *h) {
  snap_view_t v = snap_view(h);
  v.st->done = 0;
  for (int j = 0; j < h->n_slots; j++) v.vote[j] = 0.0f;
}

static void snap_observe(const mk_kv_config_t *cfg, mk_kv_head_t *h, const mk_kv_row_t *row) {
  snap_view_t v = snap_view(h);
  if (v.st->done || !row->prob_sum) return;
  for (int j = 0; j < h->n_slots; j++) v.vote[j] += row->prob_sum[j];
}

static int snap_evict(const mk_kv_config_t *cfg, mk_kv_head_t *h, int64_t next_pos, bool prefill,
                      mk_error_t *err) {
  snap_view_t v = snap_view(h);
  if (!prefill || v.st->done) return 0;
  v.st->done = 1;
  int w = cfg->window, B = cfg->capacity;
  if (h->n_used <= B) return 0;
  if (next_pos - w > h->n_slots)
    return mk_fail(err, "snapkv: layer %d kv head %d: prompt of %lld tokens exceeds %d slots",
                   h->layer, h->kv_head, (long long)next_pos, h->n_slots);
  int L = (int)(next_pos - w); /* prefix positions [0, L) are the candidates */
  for (int p = 0; p < L; p++) v.byp[p] = -1;
  for (int j = 0; j < h->n_slots; j++)
    if (h->pos[j] >= 0 && h->pos[j] < L) v.byp[h->pos[j]] = j;
  for (int p = 0; p < L; p++)
    if (v.byp[p] < 0)
      return mk_fail(err, "snapkv: layer %d kv head %d: prompt position %d is not in the cache",
                     h->layer, h->kv_head, p);
  int r = cfg->snapkv_pool / 2;
  for (int p = 0; p < L; p++) {
    int a = p - r < 0 ? 0 : p - r, b = p + r >= L ? L - 1 : p + r;
    float acc = cfg->snapkv_maxpool ? -INFINITY : 0.0f;
    for (int q = a; q <= b; q++) {
      float x = v.vote[v.byp[q]];
      if (cfg->snapkv_maxpool)
        acc = x > acc ? x : acc;
      else
        acc += x;
    }
    v.pooled[p] = cfg->snapkv_maxpool ? acc : acc / (float)cfg->snapkv_pool;
  }
  for (int p = 0; p < L; p++) v.score[v.byp[p]] = v.pooled[p];
  int keep = B - w;
  mk_kv_select_top(v.byp, L, keep, v.score, h->pos);
  for (int i = keep; i < L; i++) mk_kv_release(h, v.byp[i]);
  return 0;
}

const mk_kv_policy_ops_t mk_kv_policy_snapkv = {
    .name = "snapkv",
    .validate = snap_validate,
    .slots_needed = snap_slots,
    .state_bytes = snap_state_bytes,
    .needs = snap_needs,
    .prefill_rows = snap_prefill_rows,
    .reset = snap_reset,
    .observe = snap_observe,
    .evict = snap_evict,
};
