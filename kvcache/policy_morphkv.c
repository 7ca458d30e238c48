/* MorphKV (spec morphkv-algorithm.md §3.3): keep the W+1 most recent tokens plus the C-W older
 * tokens that the last W queries attended to most.
 *
 * State per stored head (in the cache's state arena, counted by state_bytes):
 *   ring   z[W][R][n_slots] fp32: the scaled logits of the last W queries, one row per query,
 *          column = slot. R = 1 for logit_sum (the group's logits summed before the softmax),
 *          R = group for prob_max (one row per query head).
 *   ring_head (oldest row), n_rows (<= W)
 *   scratch cand[n_slots] (int), score[n_slots], p[n_slots], hmax[n_slots] (fp32), so that the
 *          decode path never allocates.
 *
 * Schedule (driven by the engine): write, attend, observe (push the row), evict(next_pos). The
 * eviction at the end of step t chooses the victims for step t+1, so the incoming token takes a
 * victim's slot:
 *   cand  = used slots with pos < next_pos - W   (not among the W+1 most recent at next_pos)
 *   rows  = the ring (queries next_pos-W .. next_pos-1)
 *   score = sum_r | max_r of softmax_cand(row r)   (prob_max: max over heads before fusion)
 *   keep the top C-W (higher score, then smaller pos), release the rest.
 * Trigger: used + 1 >= E with E = ceil((C+1)*ea); with ea = 1 that is used >= C, and used == C
 * is a no-op (exactly C-W candidates), so a full cache evicts exactly one slot per step (argmin).
 * The first compression of a long prompt (prefill end, next_pos = P > C) and bursty eviction
 * (ea > 1) use a quickselect over all candidates.
 *
 * Why slot reuse needs no invalidation of ring columns: a token u that enters slot j becomes a
 * candidate only when next_pos - W > u, and then every ring row belongs to a query at position
 * > u, written while u already sat in slot j. Stale columns (an evicted tenant's, or rows older
 * than u) are only ever read for recent tokens, which are never scored. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kvcache/kvcache.h"
#include "kvcache/topk.h"

typedef struct mkv_state {
  int ring_head; /* ring index of the oldest row */
  int n_rows;    /* rows held (< W only early in a sequence) */
  int pad_[2];
} mkv_state_t;

static size_t align16(size_t n) { return (n + 15) & ~(size_t)15; }

static int rows_per_query(const mk_kv_config_t *cfg, int group) {
  return cfg->gqa == MK_KV_GQA_PROB_MAX ? (group > 0 ? group : 1) : 1;
}

typedef struct mkv_view {
  mkv_state_t *st;
  float *ring; /* (W, R, n_slots) */
  int *cand;   /* (n_slots) */
  float *score, *p, *hmax; /* (n_slots) each */
  int R;
} mkv_view_t;

static size_t mkv_layout(const mk_kv_config_t *cfg, int n_slots, int group, char *base,
                         mkv_view_t *v) {
  int R = rows_per_query(cfg, group);
  size_t off = align16(sizeof(mkv_state_t));
  size_t ring_off = off;
  off += align16(sizeof(float) * (size_t)cfg->window * R * n_slots);
  size_t cand_off = off;
  off += align16(sizeof(int) * (size_t)n_slots);
  size_t score_off = off;
  off += align16(sizeof(float) * (size_t)n_slots);
  size_t p_off = off;
  off += align16(sizeof(float) * (size_t)n_slots);
  size_t hmax_off = off;
  if (R > 1) off += align16(sizeof(float) * (size_t)n_slots);
  if (v) {
    v->st = (mkv_state_t *)base;
    v->ring = (float *)(base + ring_off);
    v->cand = (int *)(base + cand_off);
    v->score = (float *)(base + score_off);
    v->p = (float *)(base + p_off);
    v->hmax = R > 1 ? (float *)(base + hmax_off) : NULL;
    v->R = R;
  }
  return off;
}

static mkv_view_t mkv_view(const mk_kv_config_t *cfg, mk_kv_head_t *h) {
  mkv_view_t v;
  mkv_layout(cfg, h->n_slots, h->group, (char *)h->state, &v);
  return v;
}

/* E = ceil((C+1)*ea): the reference evicts when the cache, the new token appended, reaches E. */
static long mkv_evict_total(const mk_kv_config_t *cfg) {
  double e = ceil((double)(cfg->capacity + 1) * (double)cfg->evict_after - 1e-9);
  return e < cfg->capacity + 1 ? cfg->capacity + 1 : (long)e;
}

static int mkv_validate(const mk_kv_config_t *cfg, mk_error_t *err) {
  if (cfg->window < 1) return mk_fail(err, "morphkv: kv window %d must be at least 1", cfg->window);
  if (cfg->capacity <= cfg->window)
    return mk_fail(err, "morphkv: kv capacity %d must exceed kv window %d", cfg->capacity,
                   cfg->window);
  if (!(cfg->evict_after >= 1.0f) || !isfinite(cfg->evict_after))
    return mk_fail(err, "morphkv: kv evict-after %g must be a number >= 1", (double)cfg->evict_after);
  if ((double)(cfg->capacity + 1) * cfg->evict_after > (double)INT32_MAX / 2)
    return mk_fail(err, "morphkv: kv capacity %d x evict-after %g is too large", cfg->capacity,
                   (double)cfg->evict_after);
  if (cfg->fusion != MK_KV_FUSION_SUM && cfg->fusion != MK_KV_FUSION_MAX)
    return mk_fail(err, "morphkv: unknown kv fusion %d", (int)cfg->fusion);
  if (cfg->gqa != MK_KV_GQA_LOGIT_SUM && cfg->gqa != MK_KV_GQA_PROB_MAX)
    return mk_fail(err, "morphkv: unknown kv GQA rule %d", (int)cfg->gqa);
  return 0;
}

static int mkv_slots(const mk_kv_config_t *cfg, int max_prompt, int max_total) {
  /* Attention sees at most E-1 slots (the step that reaches E evicts first); at least C+1. */
  long need = mkv_evict_total(cfg) - 1;
  if (need < cfg->capacity + 1) need = cfg->capacity + 1;
  if (max_prompt > need) need = max_prompt;
  /* A run that never reaches the budget needs no more than its own length. */
  if (max_total >= max_prompt && max_total > 0 && max_total < need) need = max_total;
  return (int)need;
}

static size_t mkv_state_bytes(const mk_kv_config_t *cfg, int n_slots, int d, int group) {
  return mkv_layout(cfg, n_slots, group, NULL, NULL);
}

static unsigned mkv_needs(const mk_kv_config_t *cfg) {
  return cfg->gqa == MK_KV_GQA_PROB_MAX ? MK_KV_NEED_PER_HEAD : MK_KV_NEED_LOGIT_SUM;
}

static int mkv_prefill_rows(const mk_kv_config_t *cfg) { return cfg->window; }

static void mkv_reset(const mk_kv_config_t *cfg, mk_kv_head_t *h) {
  mkv_view_t v = mkv_view(cfg, h);
  memset(v.st, 0, sizeof *v.st);
}

static void mkv_observe(const mk_kv_config_t *cfg, mk_kv_head_t *h, const mk_kv_row_t *row) {
  mkv_view_t v = mkv_view(cfg, h);
  mkv_state_t *st = v.st;
  int W = cfg->window, n = h->n_slots;
  int r;
  if (st->n_rows < W) {
    r = (st->ring_head + st->n_rows) % W;
    st->n_rows++;
  } else {
    r = st->ring_head; /* overwrite the oldest */
    st->ring_head = (st->ring_head + 1) % W;
  }
  float *dst = v.ring + (size_t)r * v.R * n; /* (R, n_slots) */
  if (v.R == 1 && cfg->gqa == MK_KV_GQA_LOGIT_SUM) {
    if (row->logit_sum)
      memcpy(dst, row->logit_sum, sizeof(float) * (size_t)n);
    else
      for (int j = 0; j < n; j++) dst[j] = -INFINITY;
    return;
  }
  /* prob_max: one row per query head (heads local to this rank when tensor parallel) */
  int nq = row->logits ? row->n_q : 0;
  if (nq > v.R) nq = v.R;
  if (nq <= 0 && row->logit_sum) { /* no per-head rows: the group row is the only head */
    memcpy(dst, row->logit_sum, sizeof(float) * (size_t)n);
    nq = 1;
  }
  for (int q = 0; q < nq && row->logits; q++)
    memcpy(dst + (size_t)q * n, row->logits[q], sizeof(float) * (size_t)n);
  for (int q = nq; q < v.R; q++)
    for (int j = 0; j < n; j++) dst[(size_t)q * n + j] = -INFINITY;
}

static int mkv_evict(const mk_kv_config_t *cfg, mk_kv_head_t *h, int64_t next_pos, bool prefill,
                     mk_error_t *err) {
  if ((long)h->n_used + 1 < mkv_evict_total(cfg)) return 0;
  mkv_view_t v = mkv_view(cfg, h);
  mkv_state_t *st = v.st;
  int W = cfg->window, n_slots = h->n_slots, keep = cfg->capacity - cfg->window;
  int64_t lim = next_pos - W;
  int n = 0;
  for (int j = 0; j < n_slots; j++)
    if (h->pos[j] >= 0 && h->pos[j] < lim) v.cand[n++] = j;
  if (n <= keep) return 0;

  for (int i = 0; i < n; i++) v.score[v.cand[i]] = 0.0f;
  bool use_max = cfg->fusion == MK_KV_FUSION_MAX;
  for (int k = 0; k < st->n_rows; k++) { /* oldest to newest: a fixed summation order */
    const float *zr = v.ring + (size_t)((st->ring_head + k) % W) * v.R * n_slots;
    const float *pr; /* (n) this row's probabilities over the candidates */
    if (v.R == 1) {
      if (!mk_kv_softmax_cand(zr, v.cand, n, v.p)) continue;
      pr = v.p;
    } else {
      /* prob_max: softmax per query head, then the max over heads */
      bool any = false;
      for (int q = 0; q < v.R; q++) { /* rows of absent heads are -INF and skipped */
        if (!mk_kv_softmax_cand(zr + (size_t)q * n_slots, v.cand, n, v.p)) continue;
        if (!any)
          memcpy(v.hmax, v.p, sizeof(float) * (size_t)n);
        else
          for (int i = 0; i < n; i++) v.hmax[i] = v.p[i] > v.hmax[i] ? v.p[i] : v.hmax[i];
        any = true;
      }
      if (!any) continue;
      pr = v.hmax;
    }
    if (use_max) {
      for (int i = 0; i < n; i++) {
        float *s = &v.score[v.cand[i]];
        if (pr[i] > *s) *s = pr[i];
      }
    } else {
      for (int i = 0; i < n; i++) v.score[v.cand[i]] += pr[i];
    }
  }
  mk_kv_select_top(v.cand, n, keep, v.score, h->pos);
  for (int i = keep; i < n; i++) mk_kv_release(h, v.cand[i]);
  return 0;
}

const mk_kv_policy_ops_t mk_kv_policy_morphkv = {
    .name = "morphkv",
    .validate = mkv_validate,
    .slots_needed = mkv_slots,
    .state_bytes = mkv_state_bytes,
    .needs = mkv_needs,
    .prefill_rows = mkv_prefill_rows,
    .reset = mkv_reset,
    .observe = mkv_observe,
    .evict = mkv_evict,
};
