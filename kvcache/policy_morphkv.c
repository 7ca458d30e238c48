/* MorphKV (docs/morphkv.md: §2 state, §4 prefill, §5 decode step, §6 tie rule): keep the W+1 most recent tokens plus the C-W older
 * tokens that the last W queries attended to most.
 *
 * State per stored head (in the cache's state arena, counted by state_bytes):
 *   ring   e[W][R][n_slots] fp32: for each of the last W queries, its scaled logits z turned
 *          into e = exp(z - m) at observe time, m = the row's largest logit over the slots it
 *          could ever score (positions < the query's own). R = 1 for logit_sum (the group's
 *          logits summed before the softmax), R = group for prob_max (one row per query head).
 *   ring_head (oldest row), n_rows (<= W)
 *   zsum   Z[W][R] fp64: each ring row's softmax denominator over the current candidates
 *   prev_lim  the candidate bound (next_pos - W) that zsum refers to
 *   scratch cand[n_slots] (int), score[n_slots], mask[n_slots], hmax[n_slots] (fp32), so that
 *          the decode path never allocates.
 *
 * Sinks (--kv-sinks S, default 0 as in the paper): the first S positions of the sequence are
 * always kept and never candidates, so C = S sinks + (C - W - S) scored + W recent.
 *
 * Schedule (driven by the engine): write, attend, observe (push the row), evict(next_pos). The
 * eviction at the end of step t chooses the victims for step t+1, so the incoming token takes a
 * victim's slot:
 *   cand  = used slots with S <= pos < next_pos - W (not a sink, not among the W+1 most recent)
 *   rows  = the ring (queries next_pos-W .. next_pos-1)
 *   score = sum_r | max_r of softmax_cand(row r)   (prob_max: max over heads before fusion)
 *   keep the top C-W-S (higher score, then smaller pos), release the rest.
 * Trigger: used + 1 >= E with E = ceil((C+1)*ea); with ea = 1 that is used >= C, and used == C
 * is a no-op (exactly C-W candidates), so a full cache evicts exactly one slot per step (argmin).
 * The first compression of a long prompt (prefill end, next_pos = P > C) and bursty eviction
 * (ea > 1) use a quickselect over all candidates.
 *
 * Cost. The softmax is shift-invariant, so softmax_cand(row r)[j] = e_r[j] / Z_r with
 * Z_r = sum over the candidates of e_r. A row's exponentials are taken once, when it is pushed
 * (n_slots exp per step). Z_r (fp64, zsum) is summed in full once, at the first eviction after
 * the push, and then kept up to date: + e_r[j] when slot j becomes a candidate (its token leaves
 * the recent window), - e_r[j] when j is released. An eviction is then one contiguous pass of
 * multiply-adds over the ring (W, n_slots): no exp, no gather. (Taking the W
 * softmaxes afresh costs W x C exp per step: at C = 1024 that alone is as long as the rest of a
 * decode step of the demo model.) The one difference from a softmax with the candidates' own
 * maximum is fp32 underflow: a candidate more than ~87 nats below its row's maximum gets weight
 * 0 in that row, and a row whose candidates all lie that low carries no score.
 *
 * Why slot reuse needs no invalidation of ring columns: a token u that enters slot j becomes a
 * candidate only when next_pos - W > u, and then every ring row belongs to a query at position
 * > u, written while u already sat in slot j. Stale columns (an evicted tenant's, or rows older
 * than u) are only ever read for recent tokens, which are never scored (mask = 0). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kvcache/kvcache.h"
#include "src/mk_util.h"
#include "kvcache/topk.h"

typedef struct mkv_state {
  int ring_head;    /* ring index of the oldest row */
  int n_rows;       /* rows held (< W only early in a sequence) */
  int32_t prev_lim; /* the candidate bound (next_pos - W) that the rows' Z refer to */
  int pad_;
} mkv_state_t;


static int rows_per_query(const mk_kv_config_t *cfg, int group) {
  return cfg->gqa == MK_KV_GQA_PROB_MAX ? (group > 0 ? group : 1) : 1;
}

typedef struct mkv_view {
  mkv_state_t *st;
  double *zsum; /* (W, R) Z of each ring row over the candidates; < 0: not yet computed */
  float *ring;  /* (W, R, n_slots) e = exp(z - m) */
  int *cand;   /* (n_slots) */
  float *score, *mask, *hmax; /* (n_slots) each */
  int R;
} mkv_view_t;

static size_t mkv_layout(const mk_kv_config_t *cfg, int n_slots, int group, char *base,
                         mkv_view_t *v) {
  int R = rows_per_query(cfg, group);
  size_t off = mk_align16(sizeof(mkv_state_t));
  size_t zsum_off = off;
  off += mk_align16(sizeof(double) * (size_t)cfg->window * R);
  size_t ring_off = off;
  off += mk_align16(sizeof(float) * (size_t)cfg->window * R * n_slots);
  size_t cand_off = off;
  off += mk_align16(sizeof(int) * (size_t)n_slots);
  size_t score_off = off;
  off += mk_align16(sizeof(float) * (size_t)n_slots);
  size_t mask_off = off;
  off += mk_align16(sizeof(float) * (size_t)n_slots);
  size_t hmax_off = off;
  if (R > 1) off += mk_align16(sizeof(float) * (size_t)n_slots);
  if (v) {
    v->st = (mkv_state_t *)base;
    v->zsum = (double *)(base + zsum_off);
    v->ring = (float *)(base + ring_off);
    v->cand = (int *)(base + cand_off);
    v->score = (float *)(base + score_off);
    v->mask = (float *)(base + mask_off);
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

/* Slots evict(next_pos) releases, from counts alone: the candidates are the used slots outside
 * the recent window and the sinks, and the recent positions [next_pos - W, next_pos) and the
 * sinks [0, S) are all present (never candidates, so never released), so candidates = used -
 * min(W, next_pos) - min(S, max(0, next_pos - W)), of which C - W - S are kept. */
static int mkv_losers(const mk_kv_config_t *cfg, const mk_kv_head_t *h, int64_t next_pos) {
  if ((long)h->n_used + 1 < mkv_evict_total(cfg)) return 0;
  const int64_t S = mk_kv_sinks(cfg), lim = next_pos - cfg->window;
  int64_t recent = next_pos < cfg->window ? next_pos : cfg->window;
  int64_t sinks = lim <= 0 ? 0 : lim < S ? lim : S;
  int64_t lose = (int64_t)h->n_used - recent - sinks - (cfg->capacity - cfg->window - S);
  return lose > 0 ? (int)lose : 0;
}

static int mkv_validate(const mk_kv_config_t *cfg, mk_error_t *err) {
  if (cfg->window < 1) return mk_fail(err, "morphkv: kv window %d must be at least 1", cfg->window);
  if (cfg->sinks < MK_KV_SINKS_DEFAULT)
    return mk_fail(err, "morphkv: kv sinks %d must be >= 0", cfg->sinks);
  if (cfg->capacity <= cfg->window + mk_kv_sinks(cfg))
    return mk_fail(err, "morphkv: kv capacity %d must exceed kv window %d + kv sinks %d", cfg->capacity,
                   cfg->window, mk_kv_sinks(cfg));
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

/* The eviction's hot loops, compiled for AVX-512, AVX2 and the baseline and picked at load time
 * (GCC function multiversioning). No FMA contraction in ISO C mode, so every version gives the
 * same bits. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MKV_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MKV_CLONES
#endif

/* dst[j] = exp(z[j] - m) where pos[j] is in [0, qpos) and z[j] - m is in [-87, 0], else 0
 * (e^-87 ~ 1.6e-38: below it, fp32 would go subnormal; NaN and -inf give 0). exp by 2^k 2^f:
 * k = round(x log2 e), |f| <= 1/2, 2^f = e^(f ln 2) by its Taylor series to degree 6. Relative
 * error < 7e-7 for x > -10 and < 4e-6 down to -87 (from rounding x log2 e in fp32), measured
 * against exp in fp64. Written for the vectorizer: no branches, one select at the end; GCC needs
 * -fno-trapping-math to if-convert it (the lanes it discards may hold inf or NaN, which is fine). */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-trapping-math")))
#endif
static void mkv_exp_row(float *restrict dst, const float *restrict z, const int32_t *restrict pos,
                        int64_t qpos, float m, int n) {
  const int32_t q32 = qpos > INT32_MAX ? INT32_MAX : (int32_t)qpos; /* positions are int32 */
  for (int j = 0; j < n; j++) {
    float x = z[j] - m;
    float t = x * 1.44269504088896341f;
    t = t > -126.0f ? t : -126.0f; /* NaN too: every lane stays finite and in range */
    t = t < 0.0f ? t : 0.0f;
    int32_t k = (int32_t)(t - 0.5f); /* t <= 0: truncating t - 1/2 rounds t to nearest */
    float y = (t - (float)k) * 0.693147180559945309f; /* f ln 2, |y| <= 0.35 */
    float p = 1.0f + y * (1.0f + y * (0.5f + y * (1.0f / 6 + y * (1.0f / 24 + y * (1.0f / 120 + y * (1.0f / 720))))));
    union {
      uint32_t i;
      float f;
    } sc = {.i = (uint32_t)(k + 127) << 23}; /* 2^k, k in [-126, 0] */
    const int keep = (pos[j] >= 0) & (pos[j] < q32) & (x >= -87.0f) & (x <= 0.0f);
    dst[j] = keep ? p * sc.f : 0.0f;
  }
}

/* dst[j] = exp(z[j] - m) for the slots the row may ever score (pos < qpos), 0 elsewhere;
 * m = the largest of those logits. A row with none (or a NaN/inf maximum) is all zeros. */
static void mkv_row_exp(const mk_kv_head_t *h, const float *z, int64_t qpos, float *dst) {
  const int n = h->n_slots;
  float m = -INFINITY;
  for (int j = 0; j < n; j++)
    if (h->pos[j] >= 0 && h->pos[j] < qpos && z[j] > m) m = z[j]; /* NaN never compares greater */
  if (!(m > -INFINITY) || isinf(m)) {
    memset(dst, 0, sizeof(float) * (size_t)n);
    return;
  }
  mkv_exp_row(dst, z, h->pos, qpos, m, n);
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
  for (int q = 0; q < v.R; q++) v.zsum[(size_t)r * v.R + q] = -1.0; /* Z: at the next eviction */
  if (v.R == 1 && cfg->gqa == MK_KV_GQA_LOGIT_SUM) {
    if (row->logit_sum)
      mkv_row_exp(h, row->logit_sum, row->qpos, dst);
    else
      memset(dst, 0, sizeof(float) * (size_t)n);
    return;
  }
  /* prob_max: one row per query head (heads local to this rank when tensor parallel) */
  int nq = row->logits ? row->n_q : 0;
  if (nq > v.R) nq = v.R;
  if (nq <= 0 && row->logit_sum) { /* no per-head rows: the group row is the only head */
    mkv_row_exp(h, row->logit_sum, row->qpos, dst);
    nq = 1;
  }
  for (int q = 0; q < nq && row->logits; q++) mkv_row_exp(h, row->logits[q], row->qpos, dst + (size_t)q * n);
  for (int q = nq; q < v.R; q++) memset(dst + (size_t)q * n, 0, sizeof(float) * (size_t)n);
}

/* y[j] += w x[j] */
MKV_CLONES static void mkv_axpy(float *restrict y, const float *restrict x, float w, int n) {
  for (int j = 0; j < n; j++) y[j] += w * x[j];
}

/* y[j] = max(y[j], w x[j]) */
MKV_CLONES static void mkv_axmax(float *restrict y, const float *restrict x, float w, int n) {
  for (int j = 0; j < n; j++) {
    float v = w * x[j];
    y[j] = v > y[j] ? v : y[j];
  }
}

/* sum_j mask[j] e[j] over n slots, in 8 independent lanes (so that the compiler can vectorize
 * the loop without reassociating a single sum). */
static float mkv_masked_sum(const float *e, const float *mask, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; l++) acc[l] += mask[j + l] * e[j + l];
  for (; j < n; j++) acc[0] += mask[j] * e[j];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static int mkv_evict(const mk_kv_config_t *cfg, mk_kv_head_t *h, int64_t next_pos, bool prefill,
                     mk_error_t *err) {
  if ((long)h->n_used + 1 < mkv_evict_total(cfg)) return 0;
  mkv_view_t v = mkv_view(cfg, h);
  mkv_state_t *st = v.st;
  const int S = mk_kv_sinks(cfg);
  int W = cfg->window, n_slots = h->n_slots, keep = cfg->capacity - cfg->window - S;
  int64_t lim = next_pos - W;
  const int RW = v.R * W; /* ring rows x heads, indexed by ring position: Z of row r, head q at
                            zsum[r * R + q], its e at ring[(r * R + q) * n_slots] */
  int n = 0;
  for (int j = 0; j < n_slots; j++) {
    bool c = h->pos[j] >= S && h->pos[j] < lim;
    v.mask[j] = c ? 1.0f : 0.0f;
    if (!c) continue;
    v.cand[n++] = j;
    if (h->pos[j] >= st->prev_lim) /* a candidate since the last eviction: into every known Z */
      for (int x = 0; x < RW; x++)
        if (v.zsum[x] >= 0.0) v.zsum[x] += v.ring[(size_t)x * n_slots + j];
  }
  st->prev_lim = (int32_t)lim;
  if (n <= keep) return 0;

  /* score = sum_r | max_r of e_r / Z_r over all slots (only the candidates' entries are read) */
  for (int j = 0; j < n_slots; j++) v.score[j] = 0.0f;
  const bool use_max = cfg->fusion == MK_KV_FUSION_MAX;
  for (int k = 0; k < st->n_rows; k++) { /* oldest to newest: a fixed summation order */
    const int r = (st->ring_head + k) % W;
    const float *er = v.ring + (size_t)r * v.R * n_slots;
    double *zr = v.zsum + (size_t)r * v.R;
    for (int q = 0; q < v.R; q++) /* a row pushed since the last eviction: its Z in full */
      if (zr[q] < 0.0) zr[q] = mkv_masked_sum(er + (size_t)q * n_slots, v.mask, n_slots);
    const float *pr; /* (n_slots) this row's weights, e / Z */
    float w = 1.0f;
    if (v.R == 1) {
      if (!(zr[0] > 0.0)) continue; /* no candidate in this row */
      w = (float)(1.0 / zr[0]);
      pr = er;
    } else {
      /* prob_max: softmax per query head, then the max over heads */
      bool any = false;
      for (int q = 0; q < v.R; q++) { /* rows of absent heads are zero and skipped */
        const float *eq = er + (size_t)q * n_slots;
        if (!(zr[q] > 0.0)) continue;
        float wq = (float)(1.0 / zr[q]);
        if (!any) {
          for (int j = 0; j < n_slots; j++) v.hmax[j] = eq[j] * wq;
        } else {
          mkv_axmax(v.hmax, eq, wq, n_slots);
        }
        any = true;
      }
      if (!any) continue;
      pr = v.hmax;
    }
    if (use_max)
      mkv_axmax(v.score, pr, w, n_slots);
    else
      mkv_axpy(v.score, pr, w, n_slots);
  }
  mk_kv_select_top(v.cand, n, keep, v.score, h->pos);
  for (int i = keep; i < n; i++) {
    const int j = v.cand[i];
    for (int x = 0; x < RW; x++) /* the victim leaves every row's Z */
      if (v.zsum[x] >= 0.0) v.zsum[x] -= v.ring[(size_t)x * n_slots + j];
    mk_kv_release(h, j);
  }
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
    .losers = mkv_losers,
};
