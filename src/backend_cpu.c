/* CPU backend: the reference implementation of every op in src/backend.h.
 *
 * Weights are read in their file format (src/quant.h kernels, SIMD level chosen at start-up);
 * activations are fp32 host memory. Attention is math only (the cache policy is kvcache/driver.c's):
 * kv_write stores the new K/V into the slots the driver acquired, attention attends each query
 * over the visible slots (pos <= qpos) and fills the score rows the driver asked for.
 * Scratch buffers grow at most a few times (first prefill) and are then reused: no allocation on
 * the decode path. An allocation that fails is reported by the op that needed it. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "src/backend.h"

typedef struct cpu_impl {
  const mk_cpu_kernels_t *k;
  void *mm_scratch;
  size_t mm_scratch_bytes;
  float *att_scratch; /* per local query head: logits and probs rows; per KV head: row sums */
  size_t att_scratch_floats;
} cpu_impl_t;

static cpu_impl_t *impl_of(mk_backend_t *b) { return (cpu_impl_t *)b->impl; }

static void *cpu_alloc(mk_backend_t *b, size_t bytes) {
  size_t n = (bytes + 63) & ~(size_t)63;
  void *p = aligned_alloc(64, n ? n : 64);
  if (p) memset(p, 0, n ? n : 64);
  return p;
}

static void cpu_dealloc(mk_backend_t *b, void *p) { free(p); }

static int cpu_copy(mk_backend_t *b, void *dst, const void *src, size_t bytes, mk_error_t *err) {
  memcpy(dst, src, bytes);
  return 0;
}

static int cpu_copy2d(mk_backend_t *b, void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                      size_t height, mk_error_t *err) {
  for (size_t r = 0; r < height; r++)
    memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
  return 0;
}

static void *cpu_host_alloc(mk_backend_t *b, size_t bytes) { return malloc(bytes ? bytes : 1); }

static void cpu_host_free(mk_backend_t *b, void *p) { free(p); }

static int cpu_weight_prepare(mk_backend_t *b, const mk_qmat_t *w, mk_bweight_t *out, mk_error_t *err) {
  memset(out, 0, sizeof *out);
  out->host = *w;
  return 0;
}

static void cpu_weight_release(mk_backend_t *b, mk_bweight_t *w) { (void)w; }

static int cpu_embed(mk_backend_t *b, const mk_bweight_t *table, const int32_t *ids, int n, float *x,
                     mk_error_t *err) {
  const mk_qmat_t *t = &table->host;
  for (int i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= t->rows)
      return mk_fail(err, "embed: token id %d out of range (%lld rows)", ids[i], (long long)t->rows);
    impl_of(b)->k->dequant_row(t->type, (const char *)t->data + (size_t)ids[i] * t->row_bytes,
                               x + (size_t)i * t->cols, t->cols);
  }
  return 0;
}

static int mm_scratch(cpu_impl_t *c, size_t need, int n, const mk_qmat_t *w, mk_error_t *err) {
  if (need > c->mm_scratch_bytes) {
    free(c->mm_scratch);
    c->mm_scratch = aligned_alloc(64, (need + 63) & ~(size_t)63);
    c->mm_scratch_bytes = c->mm_scratch ? need : 0;
    if (!c->mm_scratch)
      return mk_fail(err, "matmul: out of memory for %zu bytes of quantized activations (%d tokens x %lld columns)",
                     need, n, (long long)w->cols);
  }
  return 0;
}

static int cpu_matmul(mk_backend_t *b, const mk_bweight_t *w, const float *x, int n, float *y, mk_error_t *err) {
  cpu_impl_t *c = impl_of(b);
  if (mm_scratch(c, mk_matmul_scratch_bytes(&w->host, n), n, &w->host, err)) return -1;
  mk_matmul(c->k, &w->host, x, n, y, c->mm_scratch);
  return 0;
}

static int cpu_matmul_chunks(mk_backend_t *b, const mk_bweight_t *w, const float *x, int n, int chunk_cols,
                             float *parts, float *y, mk_error_t *err) {
  cpu_impl_t *c = impl_of(b);
  if (mm_scratch(c, mk_matmul_chunks_scratch_bytes(&w->host, n, chunk_cols), n, &w->host, err)) return -1;
  mk_matmul_chunks(c->k, &w->host, x, n, chunk_cols, parts, y, c->mm_scratch);
  return 0;
}

static int cpu_sum_parts(mk_backend_t *b, float *y, const float *parts, const int *idx, int n_idx, size_t n,
                         mk_error_t *err) {
  mk_sum_parts(y, parts, idx, n_idx, n);
  return 0;
}

static int cpu_rmsnorm(mk_backend_t *b, float *y, const float *x, const float *w, int n, int dim, float eps,
                       mk_error_t *err) {
  for (int t = 0; t < n; t++) {
    const float *xt = x + (size_t)t * dim;
    float *yt = y + (size_t)t * dim;
    double ss = 0;
    for (int i = 0; i < dim; i++) ss += (double)xt[i] * xt[i];
    float s = (float)(1.0 / sqrt(ss / dim + eps));
    for (int i = 0; i < dim; i++) yt[i] = xt[i] * s * w[i];
  }
  return 0;
}

static int cpu_add_bias(mk_backend_t *b, float *y, const float *bias, int n, int dim, mk_error_t *err) {
  for (int t = 0; t < n; t++)
    for (int i = 0; i < dim; i++) y[(size_t)t * dim + i] += bias[i];
  return 0;
}

static int cpu_rope(mk_backend_t *b, const mk_rope_params_t *p, mk_error_t *err) {
  int half = p->rope_dim / 2;
  float cs[512], sn[512];
  if (half > 512) return mk_fail(err, "rope: %d rotated dimensions exceed the supported 1024", p->rope_dim);
  for (int t = 0; t < p->n_tok; t++) {
    for (int i = 0; i < half; i++) {
      double inv = pow((double)p->theta, -2.0 * i / p->rope_dim);
      if (p->freq_factors) inv /= p->freq_factors[i];
      double a = (double)p->pos[t] * inv;
      cs[i] = (float)cos(a);
      sn[i] = (float)sin(a);
    }
    for (int h = 0; h < p->n_head; h++) {
      float *x = p->x + ((size_t)t * p->n_head + h) * p->head_dim;
      for (int i = 0; i < half; i++) {
        int i0 = p->neox ? i : 2 * i, i1 = p->neox ? i + half : 2 * i + 1;
        float x0 = x[i0], x1 = x[i1];
        x[i0] = x0 * cs[i] - x1 * sn[i];
        x[i1] = x0 * sn[i] + x1 * cs[i];
      }
    }
  }
  return 0;
}

static int cpu_swiglu(mk_backend_t *b, float *y, const float *gate, const float *up, size_t n, mk_error_t *err) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (size_t i = 0; i < n; i++) {
    float g = gate[i];
    y[i] = g / (1.0f + expf(-g)) * up[i];
  }
  return 0;
}

static int cpu_add(mk_backend_t *b, float *y, const float *x, size_t n, mk_error_t *err) {
  for (size_t i = 0; i < n; i++) y[i] += x[i];
  return 0;
}

static int cpu_group_qsum(mk_backend_t *b, float *qsum, const float *q, int n_tok, int n_q, int n_kv,
                          int d, const int *q_to_kv, mk_error_t *err) {
  memset(qsum, 0, sizeof(float) * (size_t)n_tok * n_kv * d);
  for (int t = 0; t < n_tok; t++)
    for (int u = 0; u < n_q; u++) {
      float *dst = qsum + ((size_t)t * n_kv + q_to_kv[u]) * d;
      const float *src = q + ((size_t)t * n_q + u) * d;
      for (int i = 0; i < d; i++) dst[i] += src[i];
    }
  return 0;
}

/* score(slot) = q . K[slot] * scale for visible slots, -INF otherwise; returns the max. */
static float scores_row(const mk_cpu_kernels_t *k, mk_kv_dtype_t dt, const mk_kv_head_t *h,
                        const float *q, int64_t qpos, float scale, float *row) {
  float mx = -INFINITY;
  int d = h->head_dim;
  for (int s = 0; s < h->hi; s++) {
    int32_t pp = h->pos[s];
    if (pp < 0 || pp > qpos) {
      row[s] = -INFINITY;
      continue;
    }
    float v = dt == MK_KV_F16 ? k->dot_f16((const uint16_t *)h->k + (size_t)s * d, q, d)
                              : k->dot_f32((const float *)h->k + (size_t)s * d, q, d);
    v *= scale;
    row[s] = v;
    if (v > mx) mx = v;
  }
  return mx;
}

/* One query head over one KV head: out = softmax(scores) V. Leaves logits in lg (if non-NULL)
 * and probabilities in pr (n_slots entries, 0 beyond hi and for invisible slots). */
static void attend_one(const mk_cpu_kernels_t *k, mk_kv_dtype_t dt, const mk_kv_head_t *h,
                       const float *q, int64_t qpos, float scale, float *lg, float *pr, float *out) {
  int d = h->head_dim;
  float mx = scores_row(k, dt, h, q, qpos, scale, pr);
  if (lg) memcpy(lg, pr, sizeof(float) * (size_t)h->hi);
  double sum = 0;
  for (int s = 0; s < h->hi; s++) {
    float e = pr[s] == -INFINITY ? 0.0f : expf(pr[s] - mx);
    pr[s] = e;
    sum += e;
  }
  float inv = sum > 0 ? (float)(1.0 / sum) : 0.0f;
  memset(out, 0, sizeof(float) * (size_t)d);
  for (int s = 0; s < h->hi; s++) {
    if (pr[s] == 0.0f) continue;
    pr[s] *= inv;
    if (dt == MK_KV_F16)
      k->axpy_f16(out, pr[s], (const uint16_t *)h->v + (size_t)s * d, d);
    else
      k->axpy_f32(out, pr[s], (const float *)h->v + (size_t)s * d, d);
  }
  for (int s = h->hi; s < h->n_slots; s++) pr[s] = 0.0f;
  if (lg)
    for (int s = h->hi; s < h->n_slots; s++) lg[s] = -INFINITY;
}

static int cpu_kv_write(mk_backend_t *b, const mk_attn_params_t *p, mk_error_t *err) {
  mk_kv_cache_t *cache = p->cache;
  const int d = p->head_dim;
  for (int sp = 0; sp < p->n_spans; sp++) {
    const mk_seq_span_t *span = &p->spans[sp];
    for (int j = 0; j < p->n_kv; j++) {
      mk_kv_head_t *h = mk_kv_cache_head(cache, span->seq, p->layer, j);
      for (int i = 0; i < span->n; i++) {
        size_t t = (size_t)(span->row + i), r = (t * p->n_kv + j) * d;
        mk_kv_write(h, cache->cfg.dtype, p->slots[t * p->n_kv + j], p->k + r, p->v + r);
      }
    }
  }
  return 0;
}

/* Score rows of batch row tok (rows->row0 <= tok < rows->row1): logit sums from qsum, prob sums
 * over each KV head's local query heads (in query-head order). */
static void cpu_group_rows(const mk_cpu_kernels_t *k, const mk_attn_params_t *p, const mk_attn_rows_t *rows,
                           int seq, int tok, int64_t qpos) {
  mk_kv_cache_t *cache = p->cache;
  const int d = p->head_dim, n_slots = cache->n_slots;
  const float scale = 1.0f / sqrtf((float)d);
  const size_t kr = (size_t)(tok - rows->row0);
  for (int j = 0; j < p->n_kv; j++) {
    const mk_kv_head_t *h = mk_kv_cache_head(cache, seq, p->layer, j);
    float *ps = rows->prob_sum + (kr * p->n_kv + j) * n_slots;
    if (rows->logit_sum) {
      float *ls = rows->logit_sum + (kr * p->n_kv + j) * n_slots;
      scores_row(k, cache->cfg.dtype, h, p->qsum + ((size_t)tok * p->n_kv + j) * d, qpos, scale, ls);
      for (int s = h->hi; s < n_slots; s++) ls[s] = -INFINITY;
    }
    memset(ps, 0, sizeof(float) * (size_t)n_slots);
    for (int u = 0; u < p->n_q; u++) {
      if (p->q_to_kv[u] != j) continue;
      const float *pu = rows->probs + (kr * p->n_q + u) * n_slots;
      for (int s = 0; s < h->hi; s++) ps[s] += pu[s];
    }
  }
}

static int cpu_attention(mk_backend_t *b, const mk_attn_params_t *p, const mk_attn_rows_t *rows, mk_error_t *err) {
  cpu_impl_t *c = impl_of(b);
  mk_kv_cache_t *cache = p->cache;
  const int d = p->head_dim, n_slots = cache->n_slots;
  const float scale = 1.0f / sqrtf((float)d);
  const mk_kv_dtype_t dt = cache->cfg.dtype;

  /* scratch: probs of one query (n_q x n_slots) for rows the policy does not read */
  size_t need = (size_t)p->n_q * n_slots;
  if (need > c->att_scratch_floats) {
    free(c->att_scratch);
    c->att_scratch = aligned_alloc(64, ((need * sizeof(float)) + 63) & ~(size_t)63);
    if (!c->att_scratch) {
      c->att_scratch_floats = 0;
      return mk_fail(err, "attention, layer %d: out of memory for %zu floats of scratch", p->layer, need);
    }
    c->att_scratch_floats = need;
  }
  for (int sp = 0; sp < p->n_spans; sp++) {
    const mk_seq_span_t *span = &p->spans[sp];
    for (int i = 0; i < span->n; i++) {
      const int tok = span->row + i;
      if (tok < p->tok0 || tok >= p->tok1) continue;
      const int64_t qpos = (int64_t)span->pos0 + i;
      const bool want_row = rows && tok >= rows->row0 && tok < rows->row1;
      const size_t kr = want_row ? (size_t)(tok - rows->row0) * p->n_q : 0;
      float *lg = want_row && rows->logits ? rows->logits + kr * n_slots : NULL;
      float *pr = want_row ? rows->probs + kr * n_slots : c->att_scratch;
#pragma omp parallel for schedule(dynamic, 1)
      for (int u = 0; u < p->n_q; u++) {
        const mk_kv_head_t *h = mk_kv_cache_head(cache, span->seq, p->layer, p->q_to_kv[u]);
        attend_one(c->k, dt, h, p->q + ((size_t)tok * p->n_q + u) * d, qpos, scale,
                   lg ? lg + (size_t)u * n_slots : NULL, pr + (size_t)u * n_slots,
                   p->out + ((size_t)tok * p->n_q + u) * d);
      }
      if (want_row) cpu_group_rows(c->k, p, rows, span->seq, tok, qpos);
    }
  }
  return 0;
}

static int cpu_sync(mk_backend_t *b, mk_error_t *err) { return 0; }

static void cpu_free(mk_backend_t *b) {
  cpu_impl_t *c = impl_of(b);
  if (!c) return;
  free(c->mm_scratch);
  free(c->att_scratch);
  free(c);
  b->impl = NULL;
}

static const mk_backend_ops_t cpu_ops = {
    .name = "cpu",
    .free = cpu_free,
    .alloc = cpu_alloc,
    .dealloc = cpu_dealloc,
    .upload = cpu_copy,
    .download = cpu_copy,
    .weight_prepare = cpu_weight_prepare,
    .weight_release = cpu_weight_release,
    .embed = cpu_embed,
    .matmul = cpu_matmul,
    .matmul_chunks = cpu_matmul_chunks,
    .sum_parts = cpu_sum_parts,
    .rmsnorm = cpu_rmsnorm,
    .add_bias = cpu_add_bias,
    .rope = cpu_rope,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .group_qsum = cpu_group_qsum,
    .kv_write = cpu_kv_write,
    .attention = cpu_attention,
    .sync = cpu_sync,
    .copy2d = cpu_copy2d,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
};

int mk_backend_cpu_init(mk_backend_t *b, const mk_backend_params_t *p, mk_error_t *err) {
  memset(b, 0, sizeof *b);
  cpu_impl_t *c = calloc(1, sizeof *c);
  if (!c) return mk_fail(err, "cpu backend: out of memory");
  mk_simd_t level = p->simd < 0 ? mk_simd_best() : (mk_simd_t)p->simd;
  c->k = mk_cpu_kernels_get(level);
  if (!c->k) {
    free(c);
    return mk_fail(err, "cpu backend: this CPU does not support SIMD level %s", mk_simd_name(level));
  }
  if (p->n_threads > 0) omp_set_num_threads(p->n_threads);
  b->ops = &cpu_ops;
  b->impl = c;
  b->n_threads = p->n_threads > 0 ? p->n_threads : omp_get_max_threads();
  b->comm.device = -1; /* host memory, no stream */
  return 0;
}

int mk_backend_init(mk_backend_t *b, const mk_backend_params_t *p, mk_error_t *err) {
  switch (p->kind) {
    case MK_BACKEND_CPU: return mk_backend_cpu_init(b, p, err);
    case MK_BACKEND_CUDA:
      if (mk_backend_cuda_init) return mk_backend_cuda_init(b, p, err);
      return mk_fail(err, "backend 'cuda' requested, but this morphkv was built without CUDA (configure with -DMORPHKV_CUDA=ON)");
  }
  return mk_fail(err, "unknown backend kind %d", (int)p->kind);
}
