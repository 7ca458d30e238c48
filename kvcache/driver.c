/* The cache-policy driver (kvcache/driver.h): slots, rows, observe, evict, for every backend. */
#include "kvcache/driver.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/topk.h"

struct mk_kv_driver_scratch {
  int *slots;      /* (n_tok, n_kv) */
  int *tok_span;   /* (n_tok) span of each batch row, -1 for none */
  int *heads;      /* (n_spans * n_kv) flat heads whose pos[] changed */
  mk_kv_mkv_job_t *jobs;
  int *cand;       /* (n_slots) */
  float *rows;     /* score rows of one attention call */
  float *scores;   /* (n_dump, n_slots) device MorphKV scores */
  size_t slots_cap, tok_span_cap, heads_cap, jobs_cap, cand_cap, rows_cap, scores_cap;
};

void mk_kv_driver_scratch_free(struct mk_kv_driver_scratch *s) {
  if (!s) return;
  free(s->slots);
  free(s->tok_span);
  free(s->heads);
  free(s->jobs);
  free(s->cand);
  free(s->rows);
  free(s->scores);
  free(s);
}

static int grow_(void **p, size_t *cap, size_t n, size_t elem) {
  if (n <= *cap) return 0;
  size_t want = n + n / 4 + 16;
  void *q = realloc(*p, want * elem);
  if (!q) return -1;
  *p = q;
  *cap = want;
  return 0;
}
#define GROW(s, field, n) grow_((void **)&(s)->field, &(s)->field##_cap, (n), sizeof *(s)->field)

static struct mk_kv_driver_scratch *scratch(mk_kv_cache_t *c, const mk_attn_params_t *p, mk_error_t *err) {
  if (!c->drv) c->drv = calloc(1, sizeof *c->drv);
  struct mk_kv_driver_scratch *s = c->drv;
  const size_t nh = (size_t)p->n_spans * p->n_kv;
  if (!s || GROW(s, slots, (size_t)p->n_tok * p->n_kv) || GROW(s, tok_span, (size_t)p->n_tok) ||
      GROW(s, heads, nh) || GROW(s, jobs, nh) || GROW(s, cand, (size_t)c->n_slots)) {
    mk_fail(err, "kv driver: out of memory for a batch of %d tokens", p->n_tok);
    return NULL;
  }
  return s;
}

void mk_kv_driver_apply_victims(mk_kv_cache_t *c, const int *heads, const int *slot_pos, int n) {
  for (int i = 0; i < n; i++) {
    if (heads[i] < 0) continue;
    mk_kv_head_t *h = &c->heads[heads[i]];
    const int slot = slot_pos[2 * i], pos = slot_pos[2 * i + 1];
    if (slot >= 0 && slot < h->n_slots && h->pos[slot] == pos) mk_kv_release(h, slot);
  }
}

static bool row_wanted(const mk_seq_span_t *s, int i, unsigned needs, int prefill_rows) {
  return needs != 0 && (!s->prefill || (int64_t)s->n - i <= (int64_t)prefill_rows);
}

/* A slot for every new token of every span; tok_span maps batch rows to spans. */
static int acquire_all(mk_kv_cache_t *c, const mk_attn_params_t *p, struct mk_kv_driver_scratch *s,
                       mk_error_t *err) {
  const int n_kv = p->n_kv;
  for (size_t i = 0; i < (size_t)p->n_tok * n_kv; i++) s->slots[i] = -1;
  for (int t = 0; t < p->n_tok; t++) s->tok_span[t] = -1;
  for (int sp = 0; sp < p->n_spans; sp++) {
    const mk_seq_span_t *span = &p->spans[sp];
    if (span->seq < 0 || span->seq >= c->n_seq || span->row < 0 || span->n < 0 || span->row + span->n > p->n_tok)
      return mk_fail(err, "attention: span %d (sequence %d, rows %d..%d) out of range", sp, span->seq, span->row,
                     span->row + span->n);
    for (int i = 0; i < span->n; i++) s->tok_span[span->row + i] = sp;
    for (int j = 0; j < n_kv; j++) {
      mk_kv_head_t *h = mk_kv_cache_head(c, span->seq, p->layer, j);
      for (int i = 0; i < span->n; i++) {
        int64_t pos = (int64_t)span->pos0 + i;
        int slot = c->acquire ? c->acquire(h, pos, c->acquire_ctx) : mk_kv_acquire(h, pos);
        if (slot < 0)
          return mk_fail(err, "KV cache full: layer %d, KV head %d, sequence %d holds %d slots, token at position %lld does not fit (policy %s)",
                         p->layer, h->kv_head, span->seq, h->n_slots, (long long)pos, c->ops->name);
        s->slots[(size_t)(span->row + i) * n_kv + j] = slot;
      }
    }
  }
  mk_kv_cache_note_peak(c);
  return 0;
}

/* Hands the policy the rows of one attention call, batch row by batch row (order per head). */
static void observe_rows(mk_kv_cache_t *c, const mk_attn_params_t *p, const mk_attn_rows_t *r,
                         const int *tok_span) {
  const int ns = c->n_slots, n_kv = p->n_kv, n_q = p->n_q;
  const bool per_head = (r->needs & MK_KV_NEED_PER_HEAD) != 0;
  for (int t = r->row0; t < r->row1; t++) {
    const mk_seq_span_t *span = &p->spans[tok_span[t]];
    const size_t k = (size_t)(t - r->row0);
    for (int j = 0; j < n_kv; j++) {
      mk_kv_head_t *h = mk_kv_cache_head(c, span->seq, p->layer, j);
      const float *lgp[64], *prp[64];
      int nq = 0;
      for (int u = 0; u < n_q && nq < 64; u++) {
        if (p->q_to_kv[u] != j) continue;
        lgp[nq] = per_head ? r->logits + (k * n_q + u) * ns : NULL;
        prp[nq] = r->probs + (k * n_q + u) * ns;
        nq++;
      }
      mk_kv_row_t row = {.qpos = (int64_t)span->pos0 + (t - span->row),
                         .logit_sum = r->logit_sum ? r->logit_sum + (k * n_kv + j) * ns : NULL,
                         .prob_sum = r->prob_sum + (k * n_kv + j) * ns,
                         .n_q = nq,
                         .logits = per_head ? lgp : NULL,
                         .probs = prp};
      c->ops->observe(&c->cfg, h, &row);
    }
  }
}

/* Score-row buffers of n_r rows inside s->rows. */
static int rows_setup(mk_kv_cache_t *c, const mk_attn_params_t *p, struct mk_kv_driver_scratch *s, unsigned needs,
                      int row0, int row1, mk_attn_rows_t *r, mk_error_t *err) {
  const size_t ns = (size_t)c->n_slots, n_r = (size_t)(row1 - row0);
  const size_t kvf = n_r * p->n_kv * ns, qf = n_r * p->n_q * ns;
  const bool lsum = (needs & MK_KV_NEED_LOGIT_SUM) != 0, per_head = (needs & MK_KV_NEED_PER_HEAD) != 0;
  if (GROW(s, rows, (lsum ? kvf : 0) + kvf + qf + (per_head ? qf : 0)))
    return mk_fail(err, "kv driver: out of memory for %zu score rows of %zu slots", n_r, ns);
  memset(r, 0, sizeof *r);
  r->row0 = row0;
  r->row1 = row1;
  r->needs = needs;
  float *f = s->rows;
  r->prob_sum = f;
  f += kvf;
  r->probs = f;
  f += qf;
  if (lsum) r->logit_sum = f, f += kvf;
  if (per_head) r->logits = f;
  return 0;
}

/* Attention over runs of batch rows: rows that carry score rows apart from those that do not,
 * the former in chunks of at most MK_KV_DRIVER_ROW_FLOATS floats. */
static int attend_all(mk_backend_t *b, const mk_attn_params_t *a0, struct mk_kv_driver_scratch *s, bool dev,
                      mk_error_t *err) {
  mk_kv_cache_t *c = a0->cache;
  const unsigned needs = c->ops->needs(&c->cfg);
  const int prefill_rows = c->ops->prefill_rows(&c->cfg);
  const size_t per_row = (size_t)c->n_slots * (2 * (size_t)a0->n_kv + 2 * (size_t)a0->n_q);
  int max_rows = a0->n_tok;
  if (!dev && per_row * (size_t)max_rows > MK_KV_DRIVER_ROW_FLOATS)
    max_rows = per_row >= MK_KV_DRIVER_ROW_FLOATS ? 1 : (int)(MK_KV_DRIVER_ROW_FLOATS / per_row);
  mk_attn_params_t a = *a0;
#define WANT(t) row_wanted(&a0->spans[s->tok_span[t]], (t) - a0->spans[s->tok_span[t]].row, needs, prefill_rows)
  for (int t = 0; t < a0->n_tok;) {
    if (s->tok_span[t] < 0) {
      t++;
      continue;
    }
    const bool w = WANT(t);
    int e = t + 1;
    while (e < a0->n_tok && s->tok_span[e] >= 0 && WANT(e) == w && (!w || e - t < max_rows)) e++;
    a.tok0 = t;
    a.tok1 = e;
    mk_attn_rows_t r;
    if (w && dev) {
      memset(&r, 0, sizeof r);
      r.row0 = t;
      r.row1 = e;
      r.needs = needs;
      r.device = true;
    } else if (w && rows_setup(c, a0, s, needs, t, e, &r, err) != 0) {
      return -1;
    }
    if (b->ops->attention(b, &a, w ? &r : NULL, err) != 0) return -1;
    if (w && !dev) observe_rows(c, a0, &r, s->tok_span);
    t = e;
  }
#undef WANT
  return 0;
}

static int evict_host(mk_backend_t *b, const mk_attn_params_t *p, struct mk_kv_driver_scratch *s, mk_error_t *err) {
  mk_kv_cache_t *c = p->cache;
  int n_changed = 0;
  for (int sp = 0; sp < p->n_spans; sp++) {
    const mk_seq_span_t *span = &p->spans[sp];
    for (int j = 0; j < p->n_kv; j++) {
      mk_kv_head_t *h = mk_kv_cache_head(c, span->seq, p->layer, j);
      const int before = h->n_used;
      if (c->ops->evict(&c->cfg, h, (int64_t)span->pos0 + span->n, span->prefill, err) != 0) {
        mk_error_prefix(err, "cache policy %s, layer %d, KV head %d", c->ops->name, p->layer, h->kv_head);
        return -1;
      }
      if (h->n_used != before) s->heads[n_changed++] = (int)(h - c->heads);
    }
  }
  if (n_changed && b->ops->kv_pos_changed) return b->ops->kv_pos_changed(b, c, s->heads, n_changed, err);
  return 0;
}

/* Device MorphKV: the policy's trigger per head, the device's scores, the policy's top-k here. */
static int evict_device(mk_backend_t *b, const mk_attn_params_t *p, struct mk_kv_driver_scratch *s,
                        mk_error_t *err) {
  mk_kv_cache_t *c = p->cache;
  const mk_kv_config_t *cfg = &c->cfg;
  int n_jobs = 0, n_multi = 0;
  for (int sp = 0; sp < p->n_spans; sp++) {
    const int64_t next_pos = (int64_t)p->spans[sp].pos0 + p->spans[sp].n;
    for (int j = 0; j < p->n_kv; j++) {
      mk_kv_head_t *h = mk_kv_cache_head(c, p->spans[sp].seq, p->layer, j);
      int lose = c->ops->losers(cfg, h, next_pos);
      if (lose <= 0) continue;
      s->jobs[n_jobs++] = (mk_kv_mkv_job_t){.head = (int)(h - c->heads), .next_pos = (int)next_pos,
                                            .nscan = h->hi, .losers = lose};
      n_multi += lose > 1;
    }
  }
  if (!n_jobs) return 0;
  const size_t ns = (size_t)c->n_slots;
  if (n_multi && GROW(s, scores, (size_t)n_multi * ns))
    return mk_fail(err, "kv driver: out of memory for %d MorphKV score rows", n_multi);
  if (b->ops->mkv_select(b, c, p->layer, s->jobs, n_jobs, s->scores, err) != 0) return -1;
  const int keep = cfg->capacity - cfg->window;
  int n_changed = 0, k = 0;
  for (int i = 0; i < n_jobs; i++) {
    const mk_kv_mkv_job_t *jb = &s->jobs[i];
    if (jb->losers <= 1) continue;
    mk_kv_head_t *h = &c->heads[jb->head];
    const float *sc = s->scores + (size_t)k++ * ns;
    const int64_t lim = (int64_t)jb->next_pos - cfg->window;
    int n = 0;
    for (int slot = 0; slot < jb->nscan; slot++)
      if (h->pos[slot] >= 0 && h->pos[slot] < lim) s->cand[n++] = slot;
    if (n > keep) {
      mk_kv_select_top(s->cand, n, keep, sc, h->pos);
      for (int x = keep; x < n; x++) mk_kv_release(h, s->cand[x]);
    }
    s->heads[n_changed++] = jb->head;
  }
  if (n_changed && b->ops->kv_pos_changed) return b->ops->kv_pos_changed(b, c, s->heads, n_changed, err);
  return 0;
}

int mk_kv_driver_attend(mk_backend_t *b, const mk_attn_params_t *p, mk_error_t *err) {
  mk_kv_cache_t *c = p->cache;
  if (p->n_kv != c->n_heads || p->head_dim != c->head_dim)
    return mk_fail(err, "attention: %d KV heads of dim %d, but the cache holds %d of dim %d", p->n_kv, p->head_dim,
                   c->n_heads, c->head_dim);
  if (p->layer < 0 || p->layer >= c->n_layer) return mk_fail(err, "attention: layer %d out of range", p->layer);
  if (p->n_tok <= 0) return 0;
  struct mk_kv_driver_scratch *s = scratch(c, p, err);
  if (!s) return -1;
  bool dev = false;
  if (c->ops->losers && b->ops->mkv_begin && b->ops->mkv_select &&
      b->ops->mkv_begin(b, c, p->layer, &dev, err) != 0)
    return -1;
  if (acquire_all(c, p, s, err) != 0) return -1;
  if (b->ops->kv_pos_changed) { /* a prefill span (re)starts its sequence: stale pos[] elsewhere */
    int n = 0;
    for (int sp = 0; sp < p->n_spans; sp++)
      if (p->spans[sp].prefill)
        for (int j = 0; j < p->n_kv; j++)
          s->heads[n++] = (int)(mk_kv_cache_head(c, p->spans[sp].seq, p->layer, j) - c->heads);
    if (n && b->ops->kv_pos_changed(b, c, s->heads, n, err) != 0) return -1;
  }
  mk_attn_params_t a = *p;
  a.slots = s->slots;
  a.tok0 = 0;
  a.tok1 = p->n_tok;
  if (b->ops->kv_write(b, &a, err) != 0) return -1;
  if (attend_all(b, &a, s, dev, err) != 0) return -1;
  return dev ? evict_device(b, &a, s, err) : evict_host(b, &a, s, err);
}
