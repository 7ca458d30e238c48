/* A small simulated engine for the KV-policy tests (header-only, static functions).
 *
 * It drives one stored KV head exactly as kvcache.h prescribes: acquire + write K,V for the new
 * token(s); for each query, a row computed from the query vectors and the keys read back from the
 * cache storage (per head: logit = q_h.k/sqrt(d), probability = softmax over the slots the query
 * attends, i.e. used slots with pos <= qpos; -INF / 0 elsewhere; logit_sum and prob_sum are the
 * sums over the g query heads); observe; evict. Prefill rows are passed for
 * qpos >= P - ops->prefill_rows(cfg).
 *
 * q: (n_pos, g, d) post-RoPE queries by absolute position; k: (n_pos, d) keys by position. */
#ifndef MK_TEST_KV_SIM_H
#define MK_TEST_KV_SIM_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/kvcache.h"
#include "tests/testutil/testutil.h"

#define KVSIM_MAX_G 8

typedef struct kvsim {
  mk_kv_cache_t cache;
  mk_kv_head_t *h;
  int g, d;
  const float *q, *k; /* borrowed */
  float *lsum, *psum; /* (n_slots) */
  float *lh, *ph;     /* (g, n_slots) */
  const float *lh_ptr[KVSIM_MAX_G], *ph_ptr[KVSIM_MAX_G];
  int random_slots; /* acquire a random free slot instead of the lowest */
  uint64_t rng;
  mk_error_t err;
} kvsim_t;

static inline int kvsim_init(kvsim_t *s, const mk_kv_config_t *cfg, int g, int d, int max_prompt,
                      int max_total, const float *q, const float *k) {
  memset(s, 0, sizeof *s);
  mk_kv_cache_params_t p = {.n_seq = 1, .n_layer = 1, .n_heads = 1, .head_dim = d, .group = g,
                            .max_prompt = max_prompt, .max_total = max_total};
  if (mk_kv_cache_init(&s->cache, cfg, &p, &s->err) != 0) return -1;
  s->h = mk_kv_cache_head(&s->cache, 0, 0, 0);
  s->g = g;
  s->d = d;
  s->q = q;
  s->k = k;
  int n = s->h->n_slots;
  s->lsum = malloc(sizeof(float) * n);
  s->psum = malloc(sizeof(float) * n);
  s->lh = malloc(sizeof(float) * n * g);
  s->ph = malloc(sizeof(float) * n * g);
  for (int h = 0; h < g; h++) {
    s->lh_ptr[h] = s->lh + (size_t)h * n;
    s->ph_ptr[h] = s->ph + (size_t)h * n;
  }
  s->rng = 12345;
  return 0;
}

static inline void kvsim_free(kvsim_t *s) {
  mk_kv_cache_free(&s->cache);
  free(s->lsum);
  free(s->psum);
  free(s->lh);
  free(s->ph);
}

static inline int kvsim_acquire(kvsim_t *s, int64_t pos) {
  mk_kv_head_t *h = s->h;
  if (!s->random_slots) return mk_kv_acquire(h, pos);
  int nfree = h->n_slots - h->n_used;
  if (nfree <= 0) return -1;
  int r = (int)(mk_test_rand_u64(&s->rng) % (uint64_t)nfree);
  for (int j = 0; j < h->n_slots; j++)
    if (h->pos[j] < 0 && r-- == 0) {
      h->pos[j] = (int32_t)pos;
      h->n_used++;
      if (j + 1 > h->hi) h->hi = j + 1;
      return j;
    }
  return -1;
}

/* Acquires a slot for token pos and writes its key (and the key again as value). */
static inline int kvsim_add(kvsim_t *s, int64_t pos) {
  int slot = kvsim_acquire(s, pos);
  if (slot < 0) return -1;
  const float *kp = s->k + (size_t)pos * s->d;
  mk_kv_write(s->h, s->cache.cfg.dtype, slot, kp, kp);
  return slot;
}

/* Computes the row of query qpos over the current slots and passes it to observe. */
static inline void kvsim_observe(kvsim_t *s, int64_t qpos) {
  mk_kv_head_t *h = s->h;
  int n = h->n_slots, d = s->d;
  const float *K = (const float *)h->k; /* (n_slots, d), f32 cache */
  double scale = 1.0 / sqrt((double)d);
  for (int j = 0; j < n; j++) {
    s->lsum[j] = -INFINITY;
    s->psum[j] = 0.0f;
  }
  double *lsd = calloc((size_t)(n > 0 ? n : 1), sizeof(double));
  for (int hq = 0; hq < s->g; hq++) {
    const float *qv = s->q + ((size_t)qpos * s->g + hq) * d;
    float *lr = s->lh + (size_t)hq * n, *pr = s->ph + (size_t)hq * n;
    double m = -INFINITY;
    for (int j = 0; j < n; j++) {
      if (h->pos[j] < 0 || h->pos[j] > qpos) {
        lr[j] = -INFINITY;
        continue;
      }
      double acc = 0;
      for (int i = 0; i < d; i++) acc += (double)qv[i] * K[(size_t)j * d + i];
      lr[j] = (float)(acc * scale);
      lsd[j] += acc * scale;
      if (lr[j] > m) m = lr[j];
    }
    double sum = 0;
    for (int j = 0; j < n; j++) sum += lr[j] == -INFINITY ? 0.0 : exp((double)lr[j] - m);
    for (int j = 0; j < n; j++) {
      pr[j] = lr[j] == -INFINITY ? 0.0f : (float)(exp((double)lr[j] - m) / sum);
      s->psum[j] += pr[j];
    }
  }
  for (int j = 0; j < n; j++)
    if (h->pos[j] >= 0 && h->pos[j] <= qpos) s->lsum[j] = (float)lsd[j];
  free(lsd);
  mk_kv_row_t row = {.qpos = qpos, .logit_sum = s->lsum, .prob_sum = s->psum, .n_q = s->g,
                     .logits = s->lh_ptr, .probs = s->ph_ptr};
  s->cache.ops->observe(&s->cache.cfg, h, &row);
}

/* Prompt of P tokens: acquire all, observe the rows the policy asks for, evict. 0 / -1. */
static inline int kvsim_prefill(kvsim_t *s, int P) {
  for (int t = 0; t < P; t++)
    if (kvsim_add(s, t) < 0) return mk_fail(&s->err, "sim: no free slot for prompt token %d", t);
  int64_t first = (int64_t)P - s->cache.ops->prefill_rows(&s->cache.cfg);
  if (first < 0) first = 0;
  for (int64_t i = first; i < P; i++) kvsim_observe(s, i);
  int rc = s->cache.ops->evict(&s->cache.cfg, s->h, P, true, &s->err);
  mk_kv_cache_note_peak(&s->cache);
  return rc;
}

static inline int kvsim_cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

/* Sorted positions of the used slots; returns the count. out: (n_slots). */
static inline int kvsim_kept(const kvsim_t *s, int32_t *out) {
  int n = 0;
  for (int j = 0; j < s->h->n_slots; j++)
    if (s->h->pos[j] >= 0) out[n++] = s->h->pos[j];
  qsort(out, (size_t)n, sizeof *out, kvsim_cmp_i32);
  return n;
}

/* Decode step for token t. att (n_slots, may be NULL) receives the sorted positions attended
 * (the set at attention time), *n_att their count; before (may be NULL) the sorted set after
 * observe and before evict is the same set. 0 / -1. */
static inline int kvsim_step(kvsim_t *s, int64_t t, int32_t *att, int *n_att) {
  if (kvsim_add(s, t) < 0)
    return mk_fail(&s->err, "sim: no free slot for token %lld", (long long)t);
  mk_kv_cache_note_peak(&s->cache);
  if (att) *n_att = kvsim_kept(s, att);
  kvsim_observe(s, t);
  return s->cache.ops->evict(&s->cache.cfg, s->h, t + 1, false, &s->err);
}

/* Random q (n_pos, g, d) scaled by qscale, k (n_pos, d); malloc'd. */
static inline void kvsim_random_qk(uint64_t seed, int n_pos, int g, int d, float qscale, float **q,
                            float **k) {
  uint64_t st = seed;
  *q = malloc(sizeof(float) * (size_t)n_pos * g * d);
  *k = malloc(sizeof(float) * (size_t)n_pos * d);
  for (size_t i = 0; i < (size_t)n_pos * g * d; i++) (*q)[i] = qscale * mk_test_rand_f32(&st);
  for (size_t i = 0; i < (size_t)n_pos * d; i++) (*k)[i] = mk_test_rand_f32(&st);
}

/* Reference (double, from q and k): out[i] = sum over the g heads of the softmax probability
 * that query qpos gives position set[i], the softmax taken over set[0..n). */
static inline void kvsim_ref_prob_sum(const float *q, const float *k, int g, int d, int64_t qpos,
                               const int32_t *set, int n, double *out) {
  double *z = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
  double scale = 1.0 / sqrt((double)d);
  for (int i = 0; i < n; i++) out[i] = 0;
  for (int hq = 0; hq < g; hq++) {
    const float *qv = q + ((size_t)qpos * g + hq) * d;
    double m = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++) {
      double a = 0;
      for (int e = 0; e < d; e++) a += (double)qv[e] * k[(size_t)set[i] * d + e];
      z[i] = a * scale;
      m = fmax(m, z[i]);
    }
    for (int i = 0; i < n; i++) sum += exp(z[i] - m);
    for (int i = 0; i < n; i++) out[i] += exp(z[i] - m) / sum;
  }
  free(z);
}

static inline bool kvsim_contains(const int32_t *set, int n, int32_t x) {
  for (int i = 0; i < n; i++)
    if (set[i] == x) return true;
  return false;
}

#endif
