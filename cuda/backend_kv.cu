/* CUDA backend, the device KV mirror (cuda/backend_cuda.cuh): K/V writes into the slots the
 * cache-policy driver acquired, attention over them, and the score rows of host-side policies.
 *
 * Score rows (streaming, h2o, snapkv, MorphKV prob_max or a window over MK_MKV_WMAX, and every
 * policy under MORPHKV_CUDA_POLICY=host) are computed on the host, in fp32, from a host copy of
 * the fp16 K/V that kv_write keeps for such caches: correct and slow (a device row kernel is
 * future work, docs/cuda.md). Device MorphKV needs no host rows: the attention kernel writes the
 * group logit row into the device ring (rows->device). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/attention.cuh"
#include "cuda/backend_cuda.cuh"
#include "cuda/elementwise.cuh"
#include "cuda/morphkv.cuh"

void cb_mirror_free(cuda_mirror_t *m) {
  if (!m) return;
  cudaFree(m->k);
  cudaFree(m->v);
  cudaFree(m->pos);
  cudaFree(m->zring);
  cudaFree(m->victims);
  cudaFree(m->counters);
  cudaFree(m->stats);
  cudaFree(m->best);
  cudaFree(m->dump);
  if (m->log_host) cudaFreeHost(m->log_host);
  if (m->log_ev)
    for (int l = 0; l < m->n_layer; l++)
      if (m->log_ev[l]) cudaEventDestroy(m->log_ev[l]);
  free(m->log_ev);
  free(m->log_hf);
  free(m->log_n);
  free(m->log_pending);
  free(m);
}

static bool mirror_matches(const cuda_mirror_t *m, const mk_kv_cache_t *c) {
  return m->cache == c && m->serial == c->serial && m->heads == c->heads && m->n_seq == c->n_seq && m->n_layer == c->n_layer &&
         m->n_heads == c->n_heads && m->d == c->head_dim && m->n_slots == c->n_slots &&
         m->window == c->cfg.window;
}

static int mirror_create(cuda_impl_t *c, const mk_kv_cache_t *kc, cuda_mirror_t **out, mk_error_t *err) {
  cuda_mirror_t *m = (cuda_mirror_t *)calloc(1, sizeof *m);
  if (!m) return mk_fail(err, "cuda backend: out of memory");
  m->cache = kc;
  m->serial = kc->serial;
  m->heads = kc->heads;
  m->n_seq = kc->n_seq;
  m->n_layer = kc->n_layer;
  m->n_heads = kc->n_heads;
  m->d = kc->head_dim;
  m->n_slots = kc->n_slots;
  m->window = kc->cfg.window;
  /* MORPHKV_CUDA_POLICY=host (a test hook, read once per cache): every policy, MorphKV included,
   * runs on the host (kvcache/driver.c) from rows computed here; test_cuda_e2e compares the two. */
  const char *force = getenv("MORPHKV_CUDA_POLICY");
  const bool host_only = force && strcmp(force, "host") == 0;
  m->fast_mkv = !host_only && kc->cfg.policy == MK_KV_MORPHKV && kc->cfg.gqa == MK_KV_GQA_LOGIT_SUM &&
               kc->cfg.window <= MK_MKV_WMAX && mk_kv_sinks(&kc->cfg) == 0; /* sinks: host policy */
  m->host_rows = !m->fast_mkv && kc->ops->needs(&kc->cfg) != 0;
  const size_t nh = (size_t)m->n_seq * m->n_layer * m->n_heads, ns = (size_t)m->n_slots;
  const size_t jobs = (size_t)m->n_seq * m->n_heads;
  cudaError_t e = cudaSuccess;
#define MK_TRY(call) \
  if (e == cudaSuccess) e = (call)
  MK_TRY(cudaMalloc((void **)&m->k, nh * ns * m->d * sizeof(__half)));
  MK_TRY(cudaMalloc((void **)&m->v, nh * ns * m->d * sizeof(__half)));
  MK_TRY(cudaMalloc((void **)&m->pos, nh * ns * sizeof(int32_t)));
  MK_TRY(cudaMemcpy(m->pos, kc->pos_arena, nh * ns * sizeof(int32_t), cudaMemcpyHostToDevice));
  if (m->fast_mkv) {
    MK_TRY(cudaMalloc((void **)&m->zring, nh * (size_t)m->window * ns * sizeof(float)));
    MK_TRY(cudaMemset(m->zring, 0, nh * (size_t)m->window * ns * sizeof(float)));
    MK_TRY(cudaMalloc((void **)&m->victims, jobs * 2 * sizeof(int)));
    MK_TRY(cudaMalloc((void **)&m->counters, jobs * sizeof(unsigned)));
    MK_TRY(cudaMemset(m->counters, 0, jobs * sizeof(unsigned)));
    MK_TRY(cudaMalloc((void **)&m->stats, jobs * 16 * (size_t)m->window * sizeof(float2)));
    MK_TRY(cudaMalloc((void **)&m->best, jobs * 16 * sizeof(int4)));
    MK_TRY(cudaMallocHost((void **)&m->log_host, (size_t)m->n_layer * jobs * 2 * sizeof(int)));
    m->log_hf = (int *)calloc((size_t)m->n_layer * jobs, sizeof(int));
    m->log_n = (int *)calloc((size_t)m->n_layer, sizeof(int));
    m->log_pending = (bool *)calloc((size_t)m->n_layer, sizeof(bool));
    m->log_ev = (cudaEvent_t *)calloc((size_t)m->n_layer, sizeof(cudaEvent_t));
    if (!m->log_hf || !m->log_n || !m->log_pending || !m->log_ev) {
      cb_mirror_free(m);
      return mk_fail(err, "cuda backend: out of memory");
    }
    for (int l = 0; l < m->n_layer; l++) MK_TRY(cudaEventCreateWithFlags(&m->log_ev[l], cudaEventDisableTiming));
  }
#undef MK_TRY
  if (e != cudaSuccess) {
    cb_mirror_free(m);
    return mk_fail(err, "cuda backend: allocating the device KV cache (%zu heads x %d slots x %d dims, fp16) failed: %s (device %d)",
                   nh, m->n_slots, m->d, cudaGetErrorString(e), c->dev);
  }
  *out = m;
  return 0;
}

int cb_mirror_get(cuda_impl_t *c, const mk_kv_cache_t *kc, cuda_mirror_t **out, mk_error_t *err) {
  for (int i = 0; i < c->n_mir; i++) {
    if (c->mir[i]->cache != kc) continue;
    if (mirror_matches(c->mir[i], kc)) {
      *out = c->mir[i];
      return 0;
    }
    cudaCheck(err, c->dev, cudaStreamSynchronize(c->stream));
    cb_mirror_free(c->mir[i]); /* the cache was freed and another took its address */
    c->mir[i] = c->mir[--c->n_mir];
    break;
  }
  cuda_mirror_t **grown = (cuda_mirror_t **)realloc(c->mir, sizeof *grown * (size_t)(c->n_mir + 1));
  if (!grown) return mk_fail(err, "cuda backend: out of memory");
  c->mir = grown;
  if (mirror_create(c, kc, &c->mir[c->n_mir], err) != 0) return -1;
  *out = c->mir[c->n_mir++];
  return 0;
}

/* Uploads the host pos[] rows of heads hf[0..n) to the device mirror. */
static int mirror_push_pos(cuda_impl_t *c, cuda_mirror_t *m, const int *hf, int n, mk_error_t *err) {
  if (n <= 0) return 0;
  const size_t row = (size_t)m->n_slots * sizeof(int32_t);
  int r;
  unsigned char *h = cb_stage_begin(c, row * (size_t)n, &r, err);
  if (!h) return -1;
  const mk_kv_cache_t *kc = m->cache;
  for (int i = 0; i < n; i++) {
    memcpy(h + row * i, kc->heads[hf[i]].pos, row);
    cudaCheck(err, c->dev, cudaMemcpyAsync(m->pos + (size_t)hf[i] * m->n_slots, h + row * i, row,
                                           cudaMemcpyHostToDevice, c->stream));
  }
  return cb_stage_end(c, r, NULL, 0, err);
}

int cb_kv_pos_changed(mk_backend_t *b, mk_kv_cache_t *kc, const int *heads, int n, mk_error_t *err) {
  cuda_impl_t *c = cb_impl(b);
  if (cb_sticky(c, err)) return -1;
  cudaCheck(err, c->dev, cudaSetDevice(c->dev));
  cuda_mirror_t *m = NULL;
  if (cb_mirror_get(c, kc, &m, err) != 0) return -1;
  return mirror_push_pos(c, m, heads, n, err);
}

/* Per batch row t in [t0, t1): flat head of (seq, layer, head 0), query position, and the slots
 * scanned (the largest high-water mark of the span's heads). Rows outside every span: 0, 0, 0. */
static void tok_args(const mk_attn_params_t *p, int t0, int t1, int *head0, int *qpos, int *nscan) {
  const mk_kv_cache_t *kc = p->cache;
  for (int i = 0; i < t1 - t0; i++) {
    head0[i] = qpos[i] = 0;
    if (nscan) nscan[i] = 0;
  }
  for (int sp = 0; sp < p->n_spans; sp++) {
    const mk_seq_span_t *s = &p->spans[sp];
    const int h0 = (s->seq * kc->n_layer + p->layer) * kc->n_heads;
    int hi = 0;
    for (int j = 0; j < kc->n_heads; j++)
      if (kc->heads[h0 + j].hi > hi) hi = kc->heads[h0 + j].hi;
    for (int i = 0; i < s->n; i++) {
      const int t = s->row + i;
      if (t < t0 || t >= t1) continue;
      head0[t - t0] = h0;
      qpos[t - t0] = s->pos0 + i;
      if (nscan) nscan[t - t0] = hi;
    }
  }
}

/* Host copy of the new K/V (fp32 in, the cache's dtype) for the score rows of host policies. */
static int host_kv_write(cuda_impl_t *c, const mk_attn_params_t *p, mk_error_t *err) {
  const size_t nf = (size_t)p->n_tok * p->n_kv * p->head_dim;
  float *hk = cb_host_scratch(c, 2 * nf);
  if (!hk) return mk_fail(err, "cuda backend: out of host memory (%zu floats)", 2 * nf);
  float *hv = hk + nf;
  cudaCheck(err, c->dev, cudaMemcpyAsync(hk, p->k, nf * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
  cudaCheck(err, c->dev, cudaMemcpyAsync(hv, p->v, nf * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
  cudaCheck(err, c->dev, cudaStreamSynchronize(c->stream));
  mk_kv_cache_t *kc = p->cache;
  for (int sp = 0; sp < p->n_spans; sp++)
    for (int i = 0; i < p->spans[sp].n; i++)
      for (int j = 0; j < p->n_kv; j++) {
        const size_t t = (size_t)(p->spans[sp].row + i), r = (t * p->n_kv + j) * p->head_dim;
        mk_kv_write(mk_kv_cache_head(kc, p->spans[sp].seq, p->layer, j), kc->cfg.dtype, p->slots[t * p->n_kv + j],
                    hk + r, hv + r);
      }
  return 0;
}

int cb_kv_write(mk_backend_t *b, const mk_attn_params_t *p, mk_error_t *err) {
  cuda_impl_t *c = cb_impl(b);
  if (cb_sticky(c, err)) return -1;
  cudaCheck(err, c->dev, cudaSetDevice(c->dev));
  const int n_tok = p->n_tok, n_kv = p->n_kv;
  if (n_tok <= 0) return 0;
  if (n_tok > 65535) return mk_fail(err, "cuda attention: %d tokens in one call (at most 65535)", n_tok);
  cuda_mirror_t *m = NULL;
  if (cb_mirror_get(c, p->cache, &m, err) != 0) return -1;
  /* argument blob: slots (n_tok, n_kv) | head0 (n_tok) | qpos (n_tok) */
  const size_t o_head0 = mk_align16(sizeof(int) * (size_t)n_tok * n_kv);
  const size_t o_qpos = mk_align16(o_head0 + sizeof(int) * n_tok), blob = mk_align16(o_qpos + sizeof(int) * n_tok);
  if (cb_dev_reserve(c, (void **)&c->args, &c->args_cap, blob, err) != 0) return -1;
  int region;
  unsigned char *h = cb_stage_begin(c, blob, &region, err);
  if (!h) return -1;
  memcpy(h, p->slots, sizeof(int) * (size_t)n_tok * n_kv);
  tok_args(p, 0, n_tok, (int *)(h + o_head0), (int *)(h + o_qpos), NULL);
  if (cb_stage_end(c, region, c->args, blob, err) != 0) return -1;
  mk_cuda_kv_write(m->k, m->v, m->pos, p->k, p->v, (const int *)c->args, (const int *)(c->args + o_head0),
                   (const int *)(c->args + o_qpos), n_tok, n_kv, p->head_dim, m->n_slots, c->stream);
  cudaCheckLaunch(err, c->dev, "kv_write");
  return m->host_rows ? host_kv_write(c, p, err) : 0;
}

/* Attention units: each KV head with up to MK_ATTN_GMAX of its query heads; a KV head with no
 * local query head gets a unit for its ring row alone. units has room for n_q + n_kv. */
static int attn_units(const mk_attn_params_t *p, mk_cuda_attn_unit_t *units) {
  int n_units = 0;
  for (int j = 0; j < p->n_kv; j++) {
    const int first = n_units;
    for (int u = 0; u < p->n_q; u++) {
      if (p->q_to_kv[u] != j) continue;
      if (n_units == first || units[n_units - 1].nq == MK_ATTN_GMAX) {
        memset(&units[n_units], 0, sizeof units[n_units]);
        units[n_units].kv = j;
        units[n_units].zwrite = n_units == first;
        n_units++;
      }
      mk_cuda_attn_unit_t *un = &units[n_units - 1];
      un->q[un->nq++] = u;
    }
    if (n_units == first) {
      memset(&units[n_units], 0, sizeof units[n_units]);
      units[n_units].kv = j;
      units[n_units].zwrite = 1;
      n_units++;
    }
  }
  return n_units;
}

/* q . K[slot] with the CPU backend's own dot kernels, so that a host policy sees the very rows
 * the CPU reference would compute from the same K/V and queries. */
static float key_dot(const mk_cpu_kernels_t *K, mk_kv_dtype_t dt, const mk_kv_head_t *h, int s, const float *q,
                     int d) {
  return dt == MK_KV_F16 ? K->dot_f16((const uint16_t *)h->k + (size_t)s * d, q, d)
                         : K->dot_f32((const float *)h->k + (size_t)s * d, q, d);
}

/* Score rows of one KV head for the query of batch row t (host K/V copy, host q/qsum). */
static void host_row_head(const mk_attn_params_t *p, const mk_attn_rows_t *rows, const mk_kv_head_t *h, int j,
                          int t, int64_t qpos, const float *hq, const float *hqs, float *tmp) {
  const mk_kv_cache_t *kc = p->cache;
  const int d = p->head_dim, ns = kc->n_slots, n_q = p->n_q, n_kv = p->n_kv;
  const mk_kv_dtype_t dt = kc->cfg.dtype;
  const float scale = 1.0f / sqrtf((float)d);
  const size_t kr = (size_t)(t - rows->row0);
  float *ls = rows->logit_sum ? rows->logit_sum + (kr * n_kv + j) * ns : NULL;
  float *ps = rows->prob_sum + (kr * n_kv + j) * ns;
  for (int s = 0; s < ns; s++) {
    if (ls) ls[s] = -INFINITY;
    ps[s] = 0.f;
  }
  const mk_cpu_kernels_t *K = mk_cpu_kernels_get(mk_simd_best());
  for (int u = 0; u < n_q; u++) {
    if (p->q_to_kv[u] != j) continue;
    float *lu = rows->logits ? rows->logits + (kr * n_q + u) * ns : tmp, *pu = rows->probs + (kr * n_q + u) * ns;
    const float *qv = hq + (kr * n_q + u) * d;
    float mx = -INFINITY;
    for (int s = 0; s < ns; s++) {
      lu[s] = -INFINITY;
      if (s >= h->hi || h->pos[s] < 0 || h->pos[s] > qpos) continue;
      lu[s] = key_dot(K, dt, h, s, qv, d) * scale;
      if (lu[s] > mx) mx = lu[s];
    }
    double sum = 0;
    for (int s = 0; s < ns; s++) {
      pu[s] = lu[s] == -INFINITY ? 0.f : expf(lu[s] - mx);
      sum += pu[s];
    }
    const float inv = sum > 0 ? (float)(1.0 / sum) : 0.f;
    for (int s = 0; s < ns; s++) {
      pu[s] *= inv;
      ps[s] += pu[s];
    }
    if (ls && !hqs)
      for (int s = 0; s < ns; s++)
        if (lu[s] != -INFINITY) ls[s] = (ls[s] == -INFINITY ? 0.f : ls[s]) + lu[s];
  }
  if (ls && hqs) {
    const float *qv = hqs + (kr * n_kv + j) * d;
    for (int s = 0; s < h->hi; s++) {
      if (h->pos[s] < 0 || h->pos[s] > qpos) continue;
      ls[s] = key_dot(K, dt, h, s, qv, d) * scale;
    }
  }
}

/* The score rows [row0, row1) of a host policy, from the host copy of K/V. */
static int host_rows(cuda_impl_t *c, const mk_attn_params_t *p, const mk_attn_rows_t *rows, mk_error_t *err) {
  const int d = p->head_dim, ns = p->cache->n_slots;
  const size_t n_r = (size_t)(rows->row1 - rows->row0);
  const size_t nq_f = n_r * p->n_q * d, nkv_f = n_r * p->n_kv * d;
  const bool qs = rows->logit_sum && p->qsum;
  float *hq = cb_host_scratch(c, nq_f + nkv_f + ns);
  if (!hq) return mk_fail(err, "cuda backend: out of host memory (%zu floats)", nq_f + nkv_f + ns);
  float *hqs = hq + nq_f, *tmp = hqs + nkv_f;
  cudaCheck(err, c->dev, cudaMemcpyAsync(hq, p->q + (size_t)rows->row0 * p->n_q * d, nq_f * sizeof(float),
                                         cudaMemcpyDeviceToHost, c->stream));
  if (qs)
    cudaCheck(err, c->dev, cudaMemcpyAsync(hqs, p->qsum + (size_t)rows->row0 * p->n_kv * d, nkv_f * sizeof(float),
                                           cudaMemcpyDeviceToHost, c->stream));
  cudaCheck(err, c->dev, cudaStreamSynchronize(c->stream));
  for (int sp = 0; sp < p->n_spans; sp++) {
    const mk_seq_span_t *s = &p->spans[sp];
    for (int i = 0; i < s->n; i++) {
      const int t = s->row + i;
      if (t < rows->row0 || t >= rows->row1) continue;
      for (int j = 0; j < p->n_kv; j++)
        host_row_head(p, rows, mk_kv_cache_head(p->cache, s->seq, p->layer, j), j, t, (int64_t)s->pos0 + i, hq,
                      qs ? hqs : NULL, tmp);
    }
  }
  return 0;
}

/* Launches the attention kernel over batch rows [t0, t1) whose arguments sit at da. */
static int attn_launch(cuda_impl_t *c, cuda_mirror_t *m, const mk_attn_params_t *p, const unsigned char *da,
                       const size_t off[6], int n_units, int max_nscan, bool ring, mk_error_t *err) {
  const int t0 = p->tok0, nt = p->tok1 - p->tok0, d = p->head_dim, n_q = p->n_q, n_kv = p->n_kv;
  const float *qsum = p->qsum ? p->qsum + (size_t)t0 * n_kv * d : NULL;
  if (ring && !qsum) { /* single rank without a caller qsum: sum the local heads */
    if (cb_dev_reserve(c, (void **)&c->qsum, &c->qsum_cap, sizeof(float) * (size_t)nt * n_kv * d, err) != 0) return -1;
    mk_cuda_group_qsum(c->qsum, p->q + (size_t)t0 * n_q * d, nt, n_q, n_kv, d, (const int *)(da + off[5]), c->stream);
    cudaCheckLaunch(err, c->dev, "group_qsum");
    qsum = c->qsum;
  }
  mk_cuda_attn_args_t a;
  memset(&a, 0, sizeof a);
  a.q = p->q + (size_t)t0 * n_q * d;
  a.qsum = ring ? qsum : NULL;
  a.out = p->out + (size_t)t0 * n_q * d;
  a.k = m->k;
  a.v = m->v;
  a.pos = m->pos;
  a.zring = ring ? m->zring : NULL;
  a.tok_head0 = (const int *)(da + off[0]);
  a.tok_qpos = (const int *)(da + off[1]);
  a.tok_nscan = (const int *)(da + off[2]);
  a.tok_zrow = ring ? (const int *)(da + off[3]) : NULL;
  a.units = (const mk_cuda_attn_unit_t *)(da + off[4]);
  a.n_units = n_units;
  a.n_tok = nt;
  a.n_q = n_q;
  a.n_kv = n_kv;
  a.d = d;
  a.n_slots = m->n_slots;
  a.window = p->cache->cfg.window;
  a.scale = 1.0f / sqrtf((float)d);
  mk_cuda_attn_plan(n_units, nt, max_nscan, 4 * c->n_sm, &a.n_split, &a.split_len);
  const size_t pf = mk_cuda_attn_part_floats(nt, a.n_split, n_q, d);
  if (pf) {
    const size_t total = pf + (size_t)nt * a.n_split * n_q * 2;
    if (cb_dev_reserve(c, (void **)&c->part, &c->part_cap, total * sizeof(float), err) != 0) return -1;
    a.part_o = c->part;
    a.part_ml = c->part + pf;
  }
  mk_cuda_attention(&a, c->stream);
  cudaCheckLaunch(err, c->dev, "attention");
  return 0;
}

int cb_attention(mk_backend_t *b, const mk_attn_params_t *p, const mk_attn_rows_t *rows, mk_error_t *err) {
  cuda_impl_t *c = cb_impl(b);
  if (cb_sticky(c, err)) return -1;
  cudaCheck(err, c->dev, cudaSetDevice(c->dev));
  const int t0 = p->tok0, nt = p->tok1 - p->tok0, n_q = p->n_q, n_kv = p->n_kv;
  if (!mk_cuda_attn_supported_dim(p->head_dim))
    return mk_fail(err, "cuda attention: head dim %d is not compiled (64, 128, 256)", p->head_dim);
  if (nt <= 0) return 0;
  if (nt > 65535) return mk_fail(err, "cuda attention: %d tokens in one call (at most 65535)", nt);
  cuda_mirror_t *m = NULL;
  if (cb_mirror_get(c, p->cache, &m, err) != 0) return -1;
  const bool ring = rows && rows->device;
  if (ring && !m->fast_mkv) return mk_fail(err, "cuda attention: device rows asked for a cache scored on the host");
  /* argument blob: head0, qpos, nscan, zrow (nt each) | units (n_q + n_kv at most) | map (n_q) */
  size_t off[6];
  off[0] = 0;
  for (int i = 1; i < 5; i++) off[i] = mk_align16(off[i - 1] + sizeof(int) * nt);
  off[5] = mk_align16(off[4] + sizeof(mk_cuda_attn_unit_t) * (size_t)(n_q + n_kv));
  const size_t blob = mk_align16(off[5] + sizeof(int) * n_q);
  if (cb_dev_reserve(c, (void **)&c->args, &c->args_cap, blob, err) != 0) return -1;
  int region;
  unsigned char *h = cb_stage_begin(c, blob, &region, err);
  if (!h) return -1;
  int *nscan = (int *)(h + off[2]), *zrow = (int *)(h + off[3]), *qpos = (int *)(h + off[1]);
  tok_args(p, t0, p->tok1, (int *)(h + off[0]), qpos, nscan);
  int max_nscan = 0;
  for (int i = 0; i < nt; i++) {
    if (nscan[i] > max_nscan) max_nscan = nscan[i];
    const int t = t0 + i;
    zrow[i] = ring && t >= rows->row0 && t < rows->row1 ? qpos[i] % p->cache->cfg.window : -1;
  }
  const int n_units = attn_units(p, (mk_cuda_attn_unit_t *)(h + off[4]));
  memcpy(h + off[5], p->q_to_kv, sizeof(int) * (size_t)n_q);
  if (cb_stage_end(c, region, c->args, blob, err) != 0) return -1;
  if (attn_launch(c, m, p, c->args, off, n_units, max_nscan, ring, err) != 0) return -1;
  return rows && !ring ? host_rows(c, p, rows, err) : 0;
}
