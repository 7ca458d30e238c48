/* MorphKV policy (kvcache/policy_morphkv.c) driven directly, without a model: the worked
 * examples of docs/morphkv.md §9, invalid settings, and the properties of §11 on random q/k checked
 * against a reference that recomputes every score from the stored query and key vectors. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kvcache/kvcache.h"
#include "kvcache/topk.h"
#include "tests/unit/test_kv_sim.h"

static mk_kv_config_t mkv_cfg(int W, int C) {
  mk_kv_config_t cfg;
  mk_kv_config_default(&cfg);
  cfg.policy = MK_KV_MORPHKV;
  cfg.window = W;
  cfg.capacity = C;
  return cfg;
}

/* ---- invalid settings ------------------------------------------------------------------- */

static void test_validate(void **unused) {
  const mk_kv_policy_ops_t *ops = mk_kv_policy_get(MK_KV_MORPHKV);
  assert_non_null(ops);
  mk_error_t err = {{0}};
  mk_kv_config_t cfg = mkv_cfg(32, 16);
  assert_int_equal(ops->validate(&cfg, &err), -1);
  assert_non_null(strstr(err.msg, "kv capacity 16 must exceed kv window 32"));
  cfg = mkv_cfg(32, 32);
  assert_int_equal(ops->validate(&cfg, &err), -1);
  assert_non_null(strstr(err.msg, "32"));
  cfg = mkv_cfg(0, 16);
  assert_int_equal(ops->validate(&cfg, &err), -1);
  assert_non_null(strstr(err.msg, "window 0"));
  cfg = mkv_cfg(4, 16);
  cfg.evict_after = 0.5f;
  assert_int_equal(ops->validate(&cfg, &err), -1);
  assert_non_null(strstr(err.msg, "0.5"));
  cfg.evict_after = NAN;
  assert_int_equal(ops->validate(&cfg, &err), -1);
  cfg = mkv_cfg(4, 16);
  assert_int_equal(ops->validate(&cfg, &err), 0);
  cfg.evict_after = 1.5f;
  assert_int_equal(ops->validate(&cfg, &err), 0);
  /* the cache refuses it too */
  mk_kv_cache_t c;
  mk_kv_cache_params_t p = {.n_seq = 1, .n_layer = 1, .n_heads = 1, .head_dim = 4, .group = 1,
                            .max_prompt = 8, .max_total = 64};
  cfg = mkv_cfg(8, 8);
  assert_int_equal(mk_kv_cache_init(&c, &cfg, &p, &err), -1);
  assert_non_null(strstr(err.msg, "kv capacity 8 must exceed kv window 8"));
}

/* ---- hand-built rows -------------------------------------------------------------------- */

/* A cache of one head holding positions 0..P-1 in slots 0..P-1. */
static void manual_cache(mk_kv_cache_t *c, mk_kv_config_t *cfg, int g, int P) {
  mk_error_t err;
  mk_kv_cache_params_t p = {.n_seq = 1, .n_layer = 1, .n_heads = 1, .head_dim = 4, .group = g,
                            .max_prompt = P, .max_total = P + 8};
  assert_int_equal(mk_kv_cache_init(c, cfg, &p, &err), 0);
  mk_kv_head_t *h = mk_kv_cache_head(c, 0, 0, 0);
  for (int t = 0; t < P; t++) assert_int_equal(mk_kv_acquire(h, t), t);
}

static int kept_positions(mk_kv_head_t *h, int32_t *out) {
  int n = 0;
  for (int j = 0; j < h->n_slots; j++)
    if (h->pos[j] >= 0) out[n++] = h->pos[j];
  qsort(out, (size_t)n, sizeof *out, kvsim_cmp_i32);
  return n;
}

static void assert_kept(mk_kv_head_t *h, const int32_t *want, int n) {
  int32_t got[64];
  int m = kept_positions(h, got);
  if (m != n || memcmp(got, want, sizeof(int32_t) * n) != 0) {
    fprintf(stderr, "kept:");
    for (int i = 0; i < m; i++) fprintf(stderr, " %d", got[i]);
    fprintf(stderr, "   want:");
    for (int i = 0; i < n; i++) fprintf(stderr, " %d", want[i]);
    fprintf(stderr, "\n");
  }
  assert_int_equal(m, n);
  assert_memory_equal(got, want, sizeof(int32_t) * n);
}

/* docs/morphkv.md §9 fusion: candidates a,b,c,d (pos 0..3), k_sel = 2, two rows already softmaxed over the
 * candidates. Sum keeps {a,b}; max keeps {a,d}. W = 2, C = 4, P = 6: rows are q4 and q5. */
static void fusion_case(mk_kv_fusion_t fusion, const int32_t *want) {
  static const float p1[4] = {.60f, .25f, .10f, .05f}, p2[4] = {.05f, .25f, .30f, .40f};
  mk_kv_config_t cfg = mkv_cfg(2, 4);
  cfg.fusion = fusion;
  mk_kv_cache_t c;
  manual_cache(&c, &cfg, 1, 6);
  mk_kv_head_t *h = mk_kv_cache_head(&c, 0, 0, 0);
  float r4[16], r5[16];
  for (int j = 0; j < h->n_slots; j++) r4[j] = r5[j] = -INFINITY;
  for (int j = 0; j < 4; j++) {
    r4[j] = logf(p1[j]) + 3.0f; /* a shift changes nothing after the softmax */
    r5[j] = logf(p2[j]) - 1.0f;
  }
  r4[4] = 7.0f; /* recent columns are never scored */
  r5[4] = 9.0f;
  r5[5] = -5.0f;
  mk_kv_row_t a = {.qpos = 4, .logit_sum = r4}, b = {.qpos = 5, .logit_sum = r5};
  c.ops->observe(&cfg, h, &a);
  c.ops->observe(&cfg, h, &b);
  mk_error_t err;
  assert_int_equal(c.ops->evict(&cfg, h, 6, true, &err), 0);
  assert_kept(h, want, 4);
  mk_kv_cache_free(&c);
}

static void test_fusion_example(void **unused) {
  static const int32_t sum_keep[4] = {0, 1, 4, 5}, max_keep[4] = {0, 3, 4, 5};
  fusion_case(MK_KV_FUSION_SUM, sum_keep);
  fusion_case(MK_KV_FUSION_MAX, max_keep);
}

/* docs/morphkv.md §9 GQA: g = 2, one row (W = 1), candidates x,y,z at pos 0..2, the recent token at pos 3. */
static void gqa_case(mk_kv_gqa_t gqa, const float h1[3], const float h2[3], int C,
                     const int32_t *want, int n_want) {
  mk_kv_config_t cfg = mkv_cfg(1, C);
  cfg.gqa = gqa;
  mk_kv_cache_t c;
  manual_cache(&c, &cfg, 2, 4);
  mk_kv_head_t *h = mk_kv_cache_head(&c, 0, 0, 0);
  float l1[16], l2[16], ls[16];
  for (int j = 0; j < h->n_slots; j++) l1[j] = l2[j] = ls[j] = -INFINITY;
  for (int j = 0; j < 3; j++) {
    l1[j] = h1[j];
    l2[j] = h2[j];
    ls[j] = h1[j] + h2[j];
  }
  l1[3] = l2[3] = 0.5f;
  ls[3] = 1.0f;
  const float *per[2] = {l1, l2};
  mk_kv_row_t row = {.qpos = 3, .logit_sum = ls, .n_q = 2, .logits = per};
  c.ops->observe(&cfg, h, &row);
  mk_error_t err;
  assert_int_equal(c.ops->evict(&cfg, h, 4, true, &err), 0);
  assert_kept(h, want, n_want);
  mk_kv_cache_free(&c);
}

static void test_gqa_example(void **unused) {
  /* the table's numbers */
  static const float h1[3] = {2, 0, 0}, h2[3] = {0, 0, 2}, sum[3] = {2, 0, 2};
  static const int cand[3] = {0, 1, 2};
  float p[3];
  assert_true(mk_kv_softmax_cand(sum, cand, 3, p));
  assert_float_equal(p[0], .47, .005);
  assert_float_equal(p[1], .06, .005);
  assert_float_equal(p[2], .47, .005);
  assert_true(mk_kv_softmax_cand(h1, cand, 3, p));
  assert_float_equal(p[0], .79, .005);
  assert_float_equal(p[1], .11, .005);
  assert_float_equal(p[2], .11, .005);
  assert_true(mk_kv_softmax_cand(h2, cand, 3, p));
  assert_float_equal(p[2], .79, .005);
  /* both rules keep {x, z} of three (k_sel = 2: C = 3) */
  static const int32_t xz[3] = {0, 2, 3}, x[2] = {0, 3}, y[2] = {1, 3};
  gqa_case(MK_KV_GQA_LOGIT_SUM, h1, h2, 3, xz, 3);
  gqa_case(MK_KV_GQA_PROB_MAX, h1, h2, 3, xz, 3);
  /* k_sel = 1: under logit_sum x and z tie exactly; the smaller position wins */
  gqa_case(MK_KV_GQA_LOGIT_SUM, h1, h2, 2, x, 2);
  /* a token liked by one head only: logit_sum (0, 1.5, 1.5) keeps y (tie with z, smaller
   * position); prob_max (.91, .50, .50) keeps x */
  static const float g1[3] = {3, 0, 0}, g2[3] = {-3, 1.5f, 1.5f};
  gqa_case(MK_KV_GQA_LOGIT_SUM, g1, g2, 2, y, 2);
  gqa_case(MK_KV_GQA_PROB_MAX, g1, g2, 2, x, 2);
}

/* Eviction with no candidates (or no more than k_sel) is a no-op; so is an empty ring. */
static void test_no_candidates(void **unused) {
  mk_kv_config_t cfg = mkv_cfg(8, 10);
  mk_kv_cache_t c;
  manual_cache(&c, &cfg, 1, 11); /* 11 = C+1 tokens, but next_pos 9: candidates pos < 1 */
  mk_kv_head_t *h = mk_kv_cache_head(&c, 0, 0, 0);
  mk_error_t err;
  assert_int_equal(c.ops->evict(&cfg, h, 9, false, &err), 0);
  assert_int_equal(h->n_used, 11);
  /* no rows observed: every score is 0, the tie rule keeps the oldest */
  assert_int_equal(c.ops->evict(&cfg, h, 11, false, &err), 0);
  static const int32_t want[10] = {0, 1, 3, 4, 5, 6, 7, 8, 9, 10}; /* candidates 0,1,2: keep 0,1 */
  assert_kept(h, want, 10);
  mk_kv_cache_free(&c);
}

/* ---- reference: scores recomputed from q and k, in double ------------------------------- */

typedef struct ref_case {
  int W, C, P, T, g, d;
  int S; /* sinks: positions < S are never candidates (0: the paper's MorphKV) */
  mk_kv_fusion_t fusion;
  mk_kv_gqa_t gqa;
  float ea;
  uint64_t seed;
} ref_case_t;

/* Score of each candidate position (cand[i]) from the rows of queries next_pos-W..next_pos-1. */
static void ref_scores(const ref_case_t *rc, const float *q, const float *k, int64_t next_pos,
                       const int32_t *cand, int n, double *score) {
  double *z = malloc(sizeof(double) * n * rc->g), *p = malloc(sizeof(double) * n);
  double scale = 1.0 / sqrt((double)rc->d);
  for (int i = 0; i < n; i++) score[i] = 0;
  for (int64_t qi = next_pos - rc->W; qi < next_pos; qi++) {
    if (qi < 0) continue;
    for (int hq = 0; hq < rc->g; hq++)
      for (int i = 0; i < n; i++) {
        double a = 0;
        for (int e = 0; e < rc->d; e++)
          a += (double)q[((size_t)qi * rc->g + hq) * rc->d + e] * k[(size_t)cand[i] * rc->d + e];
        z[hq * n + i] = a * scale;
      }
    for (int i = 0; i < n; i++) p[i] = 0.0;
    int nh = rc->gqa == MK_KV_GQA_PROB_MAX ? rc->g : 1;
    if (rc->gqa == MK_KV_GQA_LOGIT_SUM)
      for (int i = 0; i < n; i++) {
        double s = 0;
        for (int hq = 0; hq < rc->g; hq++) s += z[hq * n + i];
        z[i] = s; /* head 0 row now holds the group sum */
      }
    for (int hq = 0; hq < nh; hq++) {
      double m = -INFINITY, s = 0;
      for (int i = 0; i < n; i++) m = fmax(m, z[hq * n + i]);
      for (int i = 0; i < n; i++) s += exp(z[hq * n + i] - m);
      for (int i = 0; i < n; i++) p[i] = fmax(p[i], exp(z[hq * n + i] - m) / s);
    }
    for (int i = 0; i < n; i++)
      score[i] = rc->fusion == MK_KV_FUSION_MAX ? fmax(score[i], p[i]) : score[i] + p[i];
  }
  free(z);
  free(p);
}

static long evict_total(const ref_case_t *rc) {
  long e = (long)ceil((double)(rc->C + 1) * (double)rc->ea - 1e-9);
  return e < rc->C + 1 ? rc->C + 1 : e;
}

static bool contains(const int32_t *set, int n, int32_t x) {
  for (int i = 0; i < n; i++)
    if (set[i] == x) return true;
  return false;
}

typedef struct check_stats {
  int evictions, exact, steady_one;
} check_stats_t;

/* Checks one eviction decision: `before` (sorted, nb) is the set the policy saw, `after` (na)
 * what it kept. Kept candidates must score at least as high as released ones (tolerance for
 * fp32 against double), recent tokens must stay, and the count must be exactly C when it
 * evicts. When the boundary gap exceeds the tolerance the kept set is the reference top-k. */
static void check_decision(const ref_case_t *rc, const float *q, const float *k, int64_t next_pos,
                           const int32_t *before, int nb, const int32_t *after, int na,
                           check_stats_t *cs) {
  const double tol = 1e-4;
  int32_t cand[1024];
  int n = 0;
  for (int i = 0; i < nb; i++)
    if (before[i] >= rc->S && before[i] < next_pos - rc->W) cand[n++] = before[i];
  for (int i = 0; i < na; i++) assert_true(contains(before, nb, after[i]));
  for (int i = 0; i < nb; i++) /* recent tokens and sinks stay */
    if (before[i] >= next_pos - rc->W || before[i] < rc->S) assert_true(contains(after, na, before[i]));
  int keep = rc->C - rc->W - rc->S;
  bool evicts = nb + 1 >= evict_total(rc) && n > keep;
  if (!evicts) {
    assert_int_equal(na, nb);
    return;
  }
  cs->evictions++;
  assert_int_equal(na, rc->C);
  if (nb == rc->C + 1) cs->steady_one++;
  double score[1024];
  ref_scores(rc, q, k, next_pos, cand, n, score);
  double min_kept = INFINITY, max_dropped = -INFINITY;
  int kept = 0;
  for (int i = 0; i < n; i++) {
    if (contains(after, na, cand[i])) {
      min_kept = fmin(min_kept, score[i]);
      kept++;
    } else {
      max_dropped = fmax(max_dropped, score[i]);
    }
  }
  assert_int_equal(kept, keep);
  if (min_kept < max_dropped - tol)
    fprintf(stderr, "next_pos %lld: kept score %.6f < released %.6f\n", (long long)next_pos,
            min_kept, max_dropped);
  assert_true(min_kept >= max_dropped - tol);
  if (min_kept > max_dropped + tol) cs->exact++;
}

/* Runs a case through the simulated engine; checks every step; stores the attention sets of
 * each decode step (T x (C+ea slack)) in traj if not NULL. */
static void run_case(const ref_case_t *rc, bool random_slots, int32_t *traj, int traj_stride) {
  int n_pos = rc->P + rc->T;
  float *q, *k;
  kvsim_random_qk(rc->seed, n_pos, rc->g, rc->d, 6.0f, &q, &k);
  mk_kv_config_t cfg = mkv_cfg(rc->W, rc->C);
  cfg.fusion = rc->fusion;
  cfg.gqa = rc->gqa;
  cfg.evict_after = rc->ea;
  cfg.sinks = rc->S;
  kvsim_t s;
  assert_int_equal(kvsim_init(&s, &cfg, rc->g, rc->d, rc->P, n_pos, q, k), 0);
  s.random_slots = random_slots;
  long E = evict_total(rc);
  int32_t *before = malloc(sizeof(int32_t) * s.h->n_slots);
  int32_t *after = malloc(sizeof(int32_t) * s.h->n_slots);
  check_stats_t cs = {0};
  /* prefill: the first compression (P > C) is checked like any decision */
  assert_int_equal(kvsim_prefill(&s, rc->P), 0); /* rows of qpos >= P - W, then evict */
  int nb = s.n_att;
  memcpy(before, s.att, sizeof(int32_t) * (size_t)nb);
  int na = kvsim_kept(&s, after);
  check_decision(rc, q, k, rc->P, before, nb, after, na, &cs);
  if (rc->P > rc->C && rc->P >= E - 1) assert_int_equal(na, rc->C);
  for (int t = rc->P; t < n_pos; t++) {
    int n_att = 0;
    assert_int_equal(kvsim_step(&s, t, before, &n_att), 0);
    /* kept count at attention time */
    if (rc->ea == 1.0f)
      assert_int_equal(n_att, t + 1 < rc->C + 1 ? t + 1 : rc->C + 1);
    else
      assert_true(n_att <= (E - 1 > rc->C + 1 ? E - 1 : rc->C + 1) &&
                  n_att >= (t + 1 < rc->C + 1 ? t + 1 : rc->C + 1));
    /* the W+1 most recent positions are always there */
    for (int64_t r = t - rc->W; r <= t; r++)
      if (r >= 0) assert_true(contains(before, n_att, (int32_t)r));
    for (int32_t r = 0; r < rc->S && r <= t; r++) assert_true(contains(before, n_att, r)); /* sinks */
    if (traj) {
      memset(traj + (size_t)(t - rc->P) * traj_stride, 0xff, sizeof(int32_t) * traj_stride);
      memcpy(traj + (size_t)(t - rc->P) * traj_stride, before, sizeof(int32_t) * n_att);
    }
    na = kvsim_kept(&s, after);
    check_decision(rc, q, k, t + 1, before, n_att, after, na, &cs);
    /* steady state with ea = 1: exactly one eviction per step */
    if (rc->ea == 1.0f && n_att == rc->C + 1) assert_int_equal(na, n_att - 1);
  }
  assert_true(cs.evictions > 0);
  assert_true(cs.exact * 10 >= cs.evictions * 9); /* most decisions were clear-cut */
  /* peak slots never exceed C+1 (ea = 1) */
  if (rc->ea == 1.0f)
    assert_true(s.cache.peak_used_slots <= (size_t)(rc->P > rc->C + 1 ? rc->P : rc->C + 1));
  free(before);
  free(after);
  kvsim_free(&s);
  free(q);
  free(k);
}

static const ref_case_t cases[] = {
    {.W = 4, .C = 12, .P = 8, .T = 150, .g = 3, .d = 16, .fusion = MK_KV_FUSION_SUM, .gqa = MK_KV_GQA_LOGIT_SUM, .ea = 1.0f, .seed = 1},
    {.W = 4, .C = 12, .P = 12, .T = 150, .g = 3, .d = 16, .fusion = MK_KV_FUSION_MAX, .gqa = MK_KV_GQA_LOGIT_SUM, .ea = 1.0f, .seed = 2},
    {.W = 4, .C = 12, .P = 30, .T = 150, .g = 3, .d = 16, .fusion = MK_KV_FUSION_SUM, .gqa = MK_KV_GQA_PROB_MAX, .ea = 1.0f, .seed = 3},
    {.W = 8, .C = 20, .P = 3, .T = 150, .g = 3, .d = 16, .fusion = MK_KV_FUSION_MAX, .gqa = MK_KV_GQA_PROB_MAX, .ea = 1.0f, .seed = 4},
    {.W = 1, .C = 6, .P = 20, .T = 150, .g = 2, .d = 16, .fusion = MK_KV_FUSION_SUM, .gqa = MK_KV_GQA_LOGIT_SUM, .ea = 1.0f, .seed = 5},
    {.W = 16, .C = 40, .P = 100, .T = 150, .g = 1, .d = 32, .fusion = MK_KV_FUSION_SUM, .gqa = MK_KV_GQA_LOGIT_SUM, .ea = 1.0f, .seed = 6},
    {.W = 4, .C = 12, .P = 10, .T = 150, .g = 3, .d = 16, .fusion = MK_KV_FUSION_SUM, .gqa = MK_KV_GQA_LOGIT_SUM, .ea = 1.5f, .seed = 7},
    {.W = 4, .C = 12, .P = 25, .T = 150, .g = 3, .d = 16, .fusion = MK_KV_FUSION_MAX, .gqa = MK_KV_GQA_LOGIT_SUM, .ea = 1.3f, .seed = 8},
};

static void test_properties(void **unused) {
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], false, NULL, 0);
}

/* Sinks (--kv-sinks S): the first S positions are always kept and never scored; the other
 * C - W - S kept tokens are the reference's top scores among the rest. Prompts shorter and longer
 * than C, bursty eviction, both fusions and GQA rules, W + S = C - 1 (one scored slot). */
static const ref_case_t sink_cases[] = {
    {.W = 4, .C = 12, .P = 8, .T = 150, .g = 3, .d = 16, .S = 2, .fusion = MK_KV_FUSION_SUM, .gqa = MK_KV_GQA_LOGIT_SUM, .ea = 1.0f, .seed = 11},
    {.W = 4, .C = 12, .P = 30, .T = 150, .g = 3, .d = 16, .S = 4, .fusion = MK_KV_FUSION_MAX, .gqa = MK_KV_GQA_PROB_MAX, .ea = 1.0f, .seed = 12},
    {.W = 8, .C = 20, .P = 3, .T = 150, .g = 3, .d = 16, .S = 6, .fusion = MK_KV_FUSION_SUM, .gqa = MK_KV_GQA_LOGIT_SUM, .ea = 1.0f, .seed = 13},
    {.W = 4, .C = 12, .P = 25, .T = 150, .g = 3, .d = 16, .S = 3, .fusion = MK_KV_FUSION_SUM, .gqa = MK_KV_GQA_LOGIT_SUM, .ea = 1.5f, .seed = 14},
    {.W = 4, .C = 9, .P = 20, .T = 100, .g = 2, .d = 16, .S = 4, .fusion = MK_KV_FUSION_SUM, .gqa = MK_KV_GQA_LOGIT_SUM, .ea = 1.0f, .seed = 15},
};

static void test_sinks(void **unused) {
  for (size_t i = 0; i < sizeof sink_cases / sizeof sink_cases[0]; i++) {
    run_case(&sink_cases[i], false, NULL, 0);
    run_case(&sink_cases[i], true, NULL, 0); /* random slots */
  }
  /* the default: none for MorphKV (the paper), 4 for StreamingLLM, whatever is set otherwise */
  mk_kv_config_t cfg = mkv_cfg(4, 12);
  assert_int_equal(cfg.sinks, MK_KV_SINKS_DEFAULT);
  assert_int_equal(mk_kv_sinks(&cfg), 0);
  cfg.policy = MK_KV_STREAMING;
  assert_int_equal(mk_kv_sinks(&cfg), 4);
  cfg = mkv_cfg(4, 12);
  cfg.sinks = 3;
  assert_int_equal(mk_kv_sinks(&cfg), 3);
  mk_error_t err = {{0}};
  const mk_kv_policy_ops_t *ops = mk_kv_policy_get(MK_KV_MORPHKV);
  assert_int_equal(ops->validate(&cfg, &err), 0);
  cfg.sinks = 8; /* C = W + S: no slot left to score */
  assert_int_not_equal(ops->validate(&cfg, &err), 0);
  assert_non_null(strstr(err.msg, "kv capacity 12 must exceed kv window 4 + kv sinks 8"));
  cfg.sinks = -2;
  assert_int_not_equal(ops->validate(&cfg, &err), 0);
}

/* Which free slot a token lands in must not change what is kept (a random free slot instead
 * of the lowest one): the ring is slot-indexed and never needs invalidation. */
static void test_slot_order(void **unused) {
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const ref_case_t *rc = &cases[i];
    int stride = 64;
    int32_t *a = malloc(sizeof(int32_t) * stride * rc->T), *b = malloc(sizeof(int32_t) * stride * rc->T);
    run_case(rc, false, a, stride);
    run_case(rc, true, b, stride);
    assert_memory_equal(a, b, sizeof(int32_t) * stride * rc->T);
    free(a);
    free(b);
  }
}

/* W = 1 is TOVA-like: at the end of step t the released token is the one with the lowest logit
 * (group sum) from query t, among all but t itself. */
static void test_w1_tova(void **unused) {
  const int C = 10, P = 5, T = 80, g = 3, d = 16;
  float *q, *k;
  kvsim_random_qk(99, P + T, g, d, 6.0f, &q, &k);
  for (int f = 0; f < 2; f++) {
    mk_kv_config_t cfg = mkv_cfg(1, C);
    cfg.fusion = f ? MK_KV_FUSION_MAX : MK_KV_FUSION_SUM;
    kvsim_t s;
    assert_int_equal(kvsim_init(&s, &cfg, g, d, P, P + T, q, k), 0);
    assert_int_equal(kvsim_prefill(&s, P), 0);
    int checked = 0;
    for (int t = P; t < P + T; t++) {
      int32_t before[64];
      int nb = 0;
      assert_int_equal(kvsim_step(&s, t, before, &nb), 0); /* s.lsum holds query t's row */
      int victim = -1; /* from the slots at attention time (s.att_pos) */
      for (int j = 0; j < s.h->n_slots; j++)
        if (s.att_pos[j] >= 0 && s.att_pos[j] < t &&
            (victim < 0 || s.lsum[j] < s.lsum[victim])) victim = j;
      int32_t vpos = s.att_pos[victim];
      if (nb == C + 1) {
        assert_int_equal(s.h->n_used, C);
        assert_int_equal(s.h->pos[victim], -1);
        (void)vpos;
        checked++;
      }
    }
    assert_true(checked > T / 2);
    kvsim_free(&s);
  }
  free(q);
  free(k);
}

/* The count trigger (ops->losers, what the driver runs for device scoring) predicts exactly how
 * many slots evict releases, at the prompt compression and at every decode step, for ea = 1 and a
 * bursty ea = 1.5. */
static void test_losers_trigger(void **unused) {
  const struct { int W, C, P; float ea; } cases[] = {{8, 32, 5, 1.0f}, {8, 32, 60, 1.0f}, {4, 16, 40, 1.5f}, {1, 10, 3, 1.0f}};
  const int T = 80, g = 2, d = 16;
  for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
    float *q, *k;
    kvsim_random_qk(31 + ci, cases[ci].P + T, g, d, 6.0f, &q, &k);
    mk_kv_config_t cfg = mkv_cfg(cases[ci].W, cases[ci].C);
    cfg.evict_after = cases[ci].ea;
    kvsim_t s;
    assert_int_equal(kvsim_init(&s, &cfg, g, d, cases[ci].P, cases[ci].P + T, q, k), 0);
    const mk_kv_policy_ops_t *ops = s.cache.ops;
    assert_non_null(ops->losers);
    int checked = 0;
    for (int t = cases[ci].P - 1; t < cases[ci].P + T; t++) {
      const bool pre = t == cases[ci].P - 1;
      assert_int_equal(pre ? kvsim_prefill(&s, cases[ci].P) : kvsim_step(&s, t, NULL, NULL), 0);
      mk_kv_head_t at = *s.h; /* the head as the trigger sees it: counts at attention time */
      at.n_used = s.n_att;
      at.pos = s.att_pos;
      const int want = ops->losers(&cfg, &at, t + 1), got = s.n_att - s.h->n_used;
      if (want != got)
        fail_msg("W %d C %d ea %.1f: step %d: losers() says %d, evict released %d", cases[ci].W, cases[ci].C,
                 (double)cases[ci].ea, t, want, got);
      checked += got > 0;
    }
    assert_true(checked >= 3); /* the trigger fired (bursty: every ~9 steps), not only quiet steps */
    kvsim_free(&s);
    free(q);
    free(k);
  }
}

/* The state and the slot count do not depend on the output length. */
static void test_state_constant(void **unused) {
  const mk_kv_policy_ops_t *ops = mk_kv_policy_get(MK_KV_MORPHKV);
  for (int gq = 0; gq < 2; gq++) {
    mk_kv_config_t cfg = mkv_cfg(32, 256);
    cfg.gqa = gq ? MK_KV_GQA_PROB_MAX : MK_KV_GQA_LOGIT_SUM;
    int s1 = ops->slots_needed(&cfg, 100, 4100), s2 = ops->slots_needed(&cfg, 100, 100100);
    assert_int_equal(s1, 257);
    assert_int_equal(s2, 257);
    assert_int_equal(ops->slots_needed(&cfg, 1000, 5000), 1000); /* a long prompt needs its slots */
    size_t b = ops->state_bytes(&cfg, s1, 64, 3);
    /* the ring alone: W rows of n_slots fp32, times g for prob_max */
    size_t ring = (size_t)32 * 257 * 4 * (gq ? 3 : 1);
    assert_true(b >= ring);
    assert_true(b < ring + 8 * 257 * 4);
  }
  mk_kv_config_t cfg = mkv_cfg(32, 256);
  cfg.evict_after = 1.5f; /* bursty: ceil(257 * 1.5) = 386 -> attention sees up to 385 */
  assert_int_equal(ops->slots_needed(&cfg, 100, 100100), 385);
  assert_int_equal(ops->slots_needed(&cfg, 100, 150), 150); /* never reaches the budget */
  /* a run that holds C+1 from step C on: the peak does not grow with the output */
  float *q, *k;
  const int P = 20, C = 40, g = 3, d = 16;
  size_t peak_at[2];
  int lens[2] = {200, 600};
  for (int r = 0; r < 2; r++) {
    kvsim_random_qk(5, P + lens[r], g, d, 6.0f, &q, &k);
    cfg = mkv_cfg(8, C);
    kvsim_t s;
    assert_int_equal(kvsim_init(&s, &cfg, g, d, P, P + lens[r], q, k), 0);
    assert_int_equal(kvsim_prefill(&s, P), 0);
    for (int t = P; t < P + lens[r]; t++) assert_int_equal(kvsim_step(&s, t, NULL, NULL), 0);
    peak_at[r] = mk_kv_cache_peak_bytes(&s.cache);
    assert_int_equal(s.cache.state_bytes_alloc, (ops->state_bytes(&cfg, C + 1, d, g) + 63) & ~(size_t)63);
    kvsim_free(&s);
    free(q);
    free(k);
  }
  assert_int_equal(peak_at[0], peak_at[1]);
  assert_int_equal(peak_at[0], (size_t)(C + 1) * 2 * d * 4);
}

/* docs/morphkv.md §9 sliding sets: W = 2, C = 5, P = 6. */
static void test_sliding_example(void **unused) {
  const int W = 2, C = 5, P = 6, g = 1, d = 8;
  float *q, *k;
  kvsim_random_qk(17, P + 4, g, d, 6.0f, &q, &k);
  mk_kv_config_t cfg = mkv_cfg(W, C);
  kvsim_t s;
  assert_int_equal(kvsim_init(&s, &cfg, g, d, P, P + 4, q, k), 0);
  assert_int_equal(kvsim_prefill(&s, P), 0);
  int32_t kept[16];
  int n = kvsim_kept(&s, kept);
  assert_int_equal(n, 5); /* one of 0..3 released, 4 and 5 kept */
  assert_int_equal(kept[3], 4);
  assert_int_equal(kept[4], 5);
  int n_att = 0;
  assert_int_equal(kvsim_step(&s, 6, kept, &n_att), 0);
  assert_int_equal(n_att, 6); /* q6 attends over C+1 = 6 tokens */
  assert_int_equal(kept[5], 6);
  n = kvsim_kept(&s, kept);
  assert_int_equal(n, 5);
  assert_true(contains(kept, n, 5) && contains(kept, n, 6));
  kvsim_free(&s);
  free(q);
  free(k);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_validate),         cmocka_unit_test(test_fusion_example),
      cmocka_unit_test(test_sinks),
      cmocka_unit_test(test_gqa_example),      cmocka_unit_test(test_no_candidates),
      cmocka_unit_test(test_sliding_example),  cmocka_unit_test(test_properties),
      cmocka_unit_test(test_slot_order),       cmocka_unit_test(test_w1_tova),
      cmocka_unit_test(test_state_constant),   cmocka_unit_test(test_losers_trigger),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
