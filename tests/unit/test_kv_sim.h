/* A small simulated engine for the KV-policy tests (header-only, static functions).
 *
 * It drives one stored KV head through the cache-policy driver (kvcache/driver.c, the code the
 * engine runs for every backend) with a backend of its own: kv_write stores the keys; attention
 * computes, for each query the driver asks about, a row from the query vectors and the keys read
 * back from the cache storage (per head: logit = q_h.k/sqrt(d), probability = softmax over the slots the query
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

#include "kvcache/driver.h"
#include "src/backend.h"

#define KVSIM_MAX_G 8

typedef struct kvsim {
  mk_kv_cache_t cache;
  mk_kv_head_t *h;
  mk_backend_t be; /* the sim's backend: kv_write and attention (rows in fp64) for the driver */
  int g, d;
  const float *q, *k; /* borrowed */
  float *lsum, *psum; /* (n_slots) the last row computed */
  float *lh, *ph;     /* (g, n_slots) */
  int32_t *att;       /* (n_slots) sorted positions attended at the last step (before evict) */
  int32_t *att_pos;   /* (n_slots) pos[] at attention time of the last step */
  int n_att;
  int q_to_kv[KVSIM_MAX_G];
  int random_slots; /* acquire a random free slot instead of the lowest */
  uint64_t rng;
  mk_error_t err;
} kvsim_t;

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

/* The cache's acquire hook when random_slots is set: a random free slot. */
static inline int kvsim_acquire_random(mk_kv_head_t *h, int64_t pos, void *ctx) {
  kvsim_t *s = (kvsim_t *)ctx;
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

/* kv_write: the key of each new position into its slot (and the key again as value). */
static inline int kvsim_kv_write(mk_backend_t *b, const mk_attn_params_t *p, mk_error_t *err) {
  kvsim_t *s = (kvsim_t *)b->impl;
  const mk_seq_span_t *sp = &p->spans[0];
  for (int i = 0; i < sp->n; i++) {
    const float *kp = s->k + (size_t)(sp->pos0 + i) * s->d;
    mk_kv_write(s->h, s->cache.cfg.dtype, p->slots[sp->row + i], kp, kp);
  }
  return 0;
}

/* The row of query qpos over the current slots, in fp64, into s->lsum/psum/lh/ph. */
static inline void kvsim_row(kvsim_t *s, int64_t qpos) {
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
}

/* attention: no output (the policies read rows only); the rows the driver asked for; records
 * the set attended (the cache between acquisition and eviction). */
static inline int kvsim_attention(mk_backend_t *b, const mk_attn_params_t *p, const mk_attn_rows_t *rows,
                                  mk_error_t *err) {
  kvsim_t *s = (kvsim_t *)b->impl;
  const mk_seq_span_t *sp = &p->spans[0];
  const size_t n = (size_t)s->h->n_slots;
  s->n_att = kvsim_kept(s, s->att);
  memcpy(s->att_pos, s->h->pos, sizeof(int32_t) * n);
  for (int t = rows ? rows->row0 : 0; rows && t < rows->row1; t++) {
    kvsim_row(s, (int64_t)sp->pos0 + (t - sp->row));
    const size_t r = (size_t)(t - rows->row0);
    memcpy(rows->prob_sum + r * n, s->psum, sizeof(float) * n);
    if (rows->logit_sum) memcpy(rows->logit_sum + r * n, s->lsum, sizeof(float) * n);
    memcpy(rows->probs + r * s->g * n, s->ph, sizeof(float) * n * s->g);
    if (rows->logits) memcpy(rows->logits + r * s->g * n, s->lh, sizeof(float) * n * s->g);
  }
  return 0;
}

static const mk_backend_ops_t kvsim_ops = {.name = "kvsim", .kv_write = kvsim_kv_write,
                                           .attention = kvsim_attention};

static inline int kvsim_init(kvsim_t *s, const mk_kv_config_t *cfg, int g, int d, int max_prompt,
                      int max_total, const float *q, const float *k) {
  memset(s, 0, sizeof *s);
  if (g > KVSIM_MAX_G) return mk_fail(&s->err, "sim: group %d > %d", g, KVSIM_MAX_G);
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
  s->att = malloc(sizeof(int32_t) * n);
  s->att_pos = malloc(sizeof(int32_t) * n);
  s->be.ops = &kvsim_ops;
  s->be.impl = s;
  s->rng = 12345;
  return 0;
}

static inline void kvsim_free(kvsim_t *s) {
  mk_kv_cache_free(&s->cache);
  free(s->lsum);
  free(s->psum);
  free(s->lh);
  free(s->ph);
  free(s->att);
  free(s->att_pos);
}

/* n tokens at positions pos0.. through the cache-policy driver (kvcache/driver.c). */
static inline int kvsim_run(kvsim_t *s, int64_t pos0, int n, bool prefill) {
  s->cache.acquire = s->random_slots ? kvsim_acquire_random : NULL;
  s->cache.acquire_ctx = s;
  mk_seq_span_t span = {.seq = 0, .row = 0, .n = n, .pos0 = (int32_t)pos0, .prefill = prefill};
  mk_attn_params_t p = {.layer = 0, .n_tok = n, .n_spans = 1, .spans = &span, .n_q = s->g, .n_kv = 1,
                        .head_dim = s->d, .q_to_kv = s->q_to_kv, .cache = &s->cache};
  return mk_kv_driver_attend(&s->be, &p, &s->err);
}

/* Prompt of P tokens: acquire all, observe the rows the policy asks for (qpos >= P -
 * ops->prefill_rows), evict. s->att / s->n_att: the set before eviction. 0 / -1.
 * The sim's peak leaves out the prompt's transient (the driver notes it at acquisition, as the
 * engine reports it): the policy tests bound the slots held from the first eviction on. */
static inline int kvsim_prefill(kvsim_t *s, int P) {
  size_t peak = s->cache.peak_used_slots;
  int rc = kvsim_run(s, 0, P, true);
  s->cache.peak_used_slots = peak;
  mk_kv_cache_note_peak(&s->cache);
  return rc;
}

/* Decode step for token t. att (n_slots, may be NULL) receives the sorted positions attended
 * (the set at attention time, which is also the set after observe and before evict), *n_att
 * their count; s->lsum holds query t's group logit row. 0 / -1. */
static inline int kvsim_step(kvsim_t *s, int64_t t, int32_t *att, int *n_att) {
  int rc = kvsim_run(s, t, 1, false);
  if (att) {
    memcpy(att, s->att, sizeof(int32_t) * (size_t)s->n_att);
    *n_att = s->n_att;
  }
  return rc;
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
