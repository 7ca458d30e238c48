/* H2O, canonical form (Zhang et al. 2023; docs/morphkv.md §10): keep the C-W "heavy hitters" with the largest
 * accumulated attention plus the W+1 most recent tokens (C+1 at attention time).
 *
 * acc[slot] = sum over every query processed so far (all prompt queries, causal, and every decode
 * query) of the probability it gave the slot's token, each over the set that query attended. The
 * engine passes every prefill row (prefill_rows = INT32_MAX) and every decode row. A slot's acc
 * belongs to the token that sat in the slot when it was accumulated: tag[slot] records that
 * token's position, and a slot whose tenant changed restarts from zero (an evicted token's acc is
 * dropped with it).
 *
 * Eviction, at the end of each step (next_pos = t+1) and at prefill end: when used >= C, the
 * candidates are the used slots with pos < next_pos - W; keep the top C-W by acc (tie: smaller
 * pos), release the rest. A full cache releases exactly one slot per step (argmin).
 *
 * GQA. `group` (default): acc sums the probabilities of all query heads of the group (the
 * engine's prob_sum row); one kept set per stored KV head. `per_head` in the reference gives
 * every query head its own kept set, which needs KV stored per query head (g x memory). The
 * storage here is one set per stored head, so `per_head` is the same computation and is exact
 * only when each stored head serves one query head (group size 1, or KV stored per query head);
 * with a larger group evict fails with a message instead of silently mixing heads.
 * The reference's quirks (only the last C prompt queries counted, no accumulation on steps that
 * do not evict, scoring in the model's dtype) are not reproduced. evict_after is not used. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kvcache/kvcache.h"
#include "src/mk_util.h"
#include "kvcache/topk.h"

typedef struct h2o_state {
  int bad_nq; /* per_head mode: a row arrived with this many query heads (> 1); 0 = fine */
  int pad_[3];
} h2o_state_t;

typedef struct h2o_view {
  h2o_state_t *st;
  float *acc;   /* (n_slots) accumulated probability of the slot's current token */
  int32_t *tag; /* (n_slots) position whose acc is held, -1 = none */
  int *cand;    /* (n_slots) scratch */
} h2o_view_t;


static size_t h2o_layout(int n_slots, char *base, h2o_view_t *v) {
  size_t off = mk_align16(sizeof(h2o_state_t));
  size_t acc_off = off;
  off += mk_align16(sizeof(float) * (size_t)n_slots);
  size_t tag_off = off;
  off += mk_align16(sizeof(int32_t) * (size_t)n_slots);
  size_t cand_off = off;
  off += mk_align16(sizeof(int) * (size_t)n_slots);
  if (v) {
    v->st = (h2o_state_t *)base;
    v->acc = (float *)(base + acc_off);
    v->tag = (int32_t *)(base + tag_off);
    v->cand = (int *)(base + cand_off);
  }
  return off;
}

static h2o_view_t h2o_view(mk_kv_head_t *h) {
  h2o_view_t v;
  h2o_layout(h->n_slots, (char *)h->state, &v);
  return v;
}

static int h2o_validate(const mk_kv_config_t *cfg, mk_error_t *err) {
  if (cfg->window < 0) return mk_fail(err, "h2o: kv window %d must be >= 0", cfg->window);
  if (cfg->capacity <= cfg->window)
    return mk_fail(err, "h2o: kv capacity %d must exceed kv window %d", cfg->capacity, cfg->window);
  if (cfg->h2o_mode != MK_KV_H2O_GROUP && cfg->h2o_mode != MK_KV_H2O_PER_HEAD)
    return mk_fail(err, "h2o: unknown mode %d", (int)cfg->h2o_mode);
  return 0;
}

static int h2o_slots(const mk_kv_config_t *cfg, int max_prompt, int max_total) {
  int need = cfg->capacity + 1;
  if (max_prompt > need) need = max_prompt;
  if (max_total >= max_prompt && max_total > 0 && max_total < need) need = max_total;
  return need;
}

static size_t h2o_state_bytes(const mk_kv_config_t *cfg, int n_slots, int d, int g) {
  return h2o_layout(n_slots, NULL, NULL);
}

static unsigned h2o_needs(const mk_kv_config_t *cfg) {
  return cfg->h2o_mode == MK_KV_H2O_PER_HEAD ? (MK_KV_NEED_PROB_SUM | MK_KV_NEED_PER_HEAD)
                                             : MK_KV_NEED_PROB_SUM;
}

static int h2o_prefill_rows(const mk_kv_config_t *cfg) { return INT32_MAX; }

static void h2o_reset(const mk_kv_config_t *cfg, mk_kv_head_t *h) {
  h2o_view_t v = h2o_view(h);
  memset(v.st, 0, sizeof *v.st);
  for (int j = 0; j < h->n_slots; j++) {
    v.acc[j] = 0.0f;
    v.tag[j] = -1;
  }
}

static void h2o_observe(const mk_kv_config_t *cfg, mk_kv_head_t *h, const mk_kv_row_t *row) {
  h2o_view_t v = h2o_view(h);
  if (cfg->h2o_mode == MK_KV_H2O_PER_HEAD && row->probs && row->n_q > 1) v.st->bad_nq = row->n_q;
  const float *p = row->prob_sum;
  if (!p && row->probs && row->n_q >= 1) p = row->probs[0];
  for (int j = 0; j < h->n_slots; j++) {
    int32_t pos = h->pos[j];
    if (pos < 0) continue;
    if (v.tag[j] != pos) { /* a new tenant: its acc starts from zero */
      v.tag[j] = pos;
      v.acc[j] = 0.0f;
    }
    if (p) v.acc[j] += p[j];
  }
}

static int h2o_evict(const mk_kv_config_t *cfg, mk_kv_head_t *h, int64_t next_pos, bool prefill,
                     mk_error_t *err) {
  h2o_view_t v = h2o_view(h);
  if (v.st->bad_nq)
    return mk_fail(err,
                   "h2o per_head: layer %d kv head %d serves %d query heads, but this cache keeps "
                   "one kept set per stored KV head; use h2o mode group",
                   h->layer, h->kv_head, v.st->bad_nq);
  if (h->n_used < cfg->capacity) return 0;
  int keep = cfg->capacity - cfg->window, n = 0;
  int64_t lim = next_pos - cfg->window;
  for (int j = 0; j < h->n_slots; j++) {
    int32_t pos = h->pos[j];
    if (pos < 0 || pos >= lim) continue;
    if (v.tag[j] != pos) { /* never observed (no rows yet): no attention received */
      v.tag[j] = pos;
      v.acc[j] = 0.0f;
    }
    v.cand[n++] = j;
  }
  if (n <= keep) return 0;
  mk_kv_select_top(v.cand, n, keep, v.acc, h->pos);
  for (int i = keep; i < n; i++) {
    mk_kv_release(h, v.cand[i]);
    v.tag[v.cand[i]] = -1;
    v.acc[v.cand[i]] = 0.0f;
  }
  return 0;
}

const mk_kv_policy_ops_t mk_kv_policy_h2o = {
    .name = "h2o",
    .validate = h2o_validate,
    .slots_needed = h2o_slots,
    .state_bytes = h2o_state_bytes,
    .needs = h2o_needs,
    .prefill_rows = h2o_prefill_rows,
    .reset = h2o_reset,
    .observe = h2o_observe,
    .evict = h2o_evict,
};
