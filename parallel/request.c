/* Request packing, validation and broadcast (see request.h). The C struct and the wire message
 * are kept apart on purpose: enums are mapped by name, never by number, and every field is
 * range-checked after unpacking, so a malformed or foreign message is an error on the receiving
 * rank instead of a wrong generation. */
#include "parallel/request.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/mpi_check.h"
#include "parallel/request.pb-c.h"

void mk_request_init(mk_request_t *r) {
  memset(r, 0, sizeof *r);
  r->kind = MK_REQUEST_GENERATE;
  r->sampling.temperature = 0.0f;
  r->sampling.top_k = 0;
  r->sampling.top_p = 1.0f;
  r->sampling.min_p = 0.0f;
  r->sampling.repeat_penalty = 1.0f;
  r->sampling.repeat_last_n = 64;
  mk_kv_config_default(&r->cache);
}

void mk_request_free(mk_request_t *r) {
  if (!r) return;
  free(r->prompt);
  for (size_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
  free(r->stop);
  mk_request_init(r);
}

/* ---- validation ---- */

int mk_request_validate(const mk_request_t *r, int n_vocab, mk_error_t *err) {
  if (r->kind != MK_REQUEST_GENERATE && r->kind != MK_REQUEST_SHUTDOWN)
    return mk_fail(err, "request: unknown kind %d", (int)r->kind);
  if (r->n_prompt > MK_REQUEST_MAX_PROMPT)
    return mk_fail(err, "request: %zu prompt tokens, more than the %d allowed", r->n_prompt,
                   MK_REQUEST_MAX_PROMPT);
  if (r->n_prompt && !r->prompt)
    return mk_fail(err, "request: %zu prompt tokens but no array", r->n_prompt);
  for (size_t i = 0; i < r->n_prompt; i++) {
    if (r->prompt[i] < 0 || (n_vocab > 0 && r->prompt[i] >= n_vocab))
      return mk_fail(err, "request: prompt token %zu has id %d, outside 0..%d", i,
                     (int)r->prompt[i], n_vocab > 0 ? n_vocab - 1 : INT32_MAX);
  }
  if (r->n_stop > MK_REQUEST_MAX_STOP)
    return mk_fail(err, "request: %zu stop strings, more than the %d allowed", r->n_stop,
                   MK_REQUEST_MAX_STOP);
  for (size_t i = 0; i < r->n_stop; i++) {
    if (!r->stop[i]) return mk_fail(err, "request: stop string %zu is missing", i);
    size_t n = strlen(r->stop[i]);
    if (n == 0 || n > MK_REQUEST_MAX_STOP_LEN)
      return mk_fail(err, "request: stop string %zu has %zu bytes (allowed 1..%d)", i, n,
                     MK_REQUEST_MAX_STOP_LEN);
  }

  const mk_sampler_params_t *s = &r->sampling;
  if (!isfinite(s->temperature) || s->temperature < 0)
    return mk_fail(err, "request: temperature %g must be finite and >= 0", (double)s->temperature);
  if (s->top_k < 0) return mk_fail(err, "request: top_k %d must be >= 0", s->top_k);
  if (!(s->top_p > 0 && s->top_p <= 1))
    return mk_fail(err, "request: top_p %g must be in (0, 1]", (double)s->top_p);
  if (!(s->min_p >= 0 && s->min_p <= 1))
    return mk_fail(err, "request: min_p %g must be in [0, 1]", (double)s->min_p);
  if (!isfinite(s->repeat_penalty) || !(s->repeat_penalty > 0))
    return mk_fail(err, "request: repeat_penalty %g must be finite and > 0",
                   (double)s->repeat_penalty);
  if (s->repeat_last_n < 0)
    return mk_fail(err, "request: repeat_last_n %d must be >= 0", s->repeat_last_n);
  if (r->max_new_tokens < 0)
    return mk_fail(err, "request: max_new_tokens %d must be >= 0", r->max_new_tokens);

  const mk_kv_config_t *c = &r->cache;
  if ((unsigned)c->policy >= MK_KV_POLICY_COUNT)
    return mk_fail(err, "request: unknown cache policy %d", (int)c->policy);
  if (c->window < 0 || c->capacity < 0 || c->sinks < MK_KV_SINKS_DEFAULT)
    return mk_fail(err, "request: cache window %d, capacity %d, sinks %d must be >= 0 (sinks -1: the policy's default)", c->window,
                   c->capacity, c->sinks);
  if (!isfinite(c->evict_after) || !(c->evict_after >= 1))
    return mk_fail(err, "request: cache evict_after %g must be finite and >= 1",
                   (double)c->evict_after);
  if (c->fusion != MK_KV_FUSION_SUM && c->fusion != MK_KV_FUSION_MAX)
    return mk_fail(err, "request: unknown cache fusion %d", (int)c->fusion);
  if (c->gqa != MK_KV_GQA_LOGIT_SUM && c->gqa != MK_KV_GQA_PROB_MAX)
    return mk_fail(err, "request: unknown cache gqa mode %d", (int)c->gqa);
  if (c->dtype != MK_KV_F32 && c->dtype != MK_KV_F16)
    return mk_fail(err, "request: unknown cache dtype %d", (int)c->dtype);
  if (c->h2o_mode != MK_KV_H2O_GROUP && c->h2o_mode != MK_KV_H2O_PER_HEAD)
    return mk_fail(err, "request: unknown h2o mode %d", (int)c->h2o_mode);
  if (c->snapkv_pool < 1 || c->snapkv_pool % 2 == 0)
    return mk_fail(err, "request: snapkv_pool %d must be odd and >= 1", c->snapkv_pool);
  return 0;
}

/* ---- enum mapping (by name, both ways; -1 = not a known value) ---- */

static int kind_to_wire(mk_request_kind_t k) {
  switch (k) {
    case MK_REQUEST_GENERATE:
      return MORPHKV__REQUEST_KIND__REQUEST_KIND_GENERATE;
    case MK_REQUEST_SHUTDOWN:
      return MORPHKV__REQUEST_KIND__REQUEST_KIND_SHUTDOWN;
  }
  return -1;
}
static int kind_from_wire(int k) {
  switch (k) {
    case MORPHKV__REQUEST_KIND__REQUEST_KIND_GENERATE:
      return MK_REQUEST_GENERATE;
    case MORPHKV__REQUEST_KIND__REQUEST_KIND_SHUTDOWN:
      return MK_REQUEST_SHUTDOWN;
  }
  return -1;
}

static int policy_to_wire(mk_kv_policy_kind_t p) {
  switch (p) {
    case MK_KV_FULL:
      return MORPHKV__KV_POLICY__KV_POLICY_FULL;
    case MK_KV_MORPHKV:
      return MORPHKV__KV_POLICY__KV_POLICY_MORPHKV;
    case MK_KV_STREAMING:
      return MORPHKV__KV_POLICY__KV_POLICY_STREAMING;
    case MK_KV_H2O:
      return MORPHKV__KV_POLICY__KV_POLICY_H2O;
    case MK_KV_SNAPKV:
      return MORPHKV__KV_POLICY__KV_POLICY_SNAPKV;
    default:
      return -1;
  }
}
static int policy_from_wire(int p) {
  switch (p) {
    case MORPHKV__KV_POLICY__KV_POLICY_FULL:
      return MK_KV_FULL;
    case MORPHKV__KV_POLICY__KV_POLICY_MORPHKV:
      return MK_KV_MORPHKV;
    case MORPHKV__KV_POLICY__KV_POLICY_STREAMING:
      return MK_KV_STREAMING;
    case MORPHKV__KV_POLICY__KV_POLICY_H2O:
      return MK_KV_H2O;
    case MORPHKV__KV_POLICY__KV_POLICY_SNAPKV:
      return MK_KV_SNAPKV;
  }
  return -1;
}

/* Two-valued enums: C value a <-> wire value wa, C value b <-> wire value wb. */
static int map2(int v, int a, int wa, int b, int wb) {
  return v == a ? wa : v == b ? wb : -1;
}

/* ---- pack ---- */

int mk_request_pack(const mk_request_t *r, int n_vocab, uint8_t **buf, size_t *len,
                    mk_error_t *err) {
  *buf = NULL;
  *len = 0;
  if (mk_request_validate(r, n_vocab, err)) return -1;

  Morphkv__Sampling s = MORPHKV__SAMPLING__INIT;
  s.temperature = r->sampling.temperature;
  s.top_k = r->sampling.top_k;
  s.top_p = r->sampling.top_p;
  s.min_p = r->sampling.min_p;
  s.repeat_penalty = r->sampling.repeat_penalty;
  s.repeat_last_n = r->sampling.repeat_last_n;
  s.seed = r->sampling.seed;
  s.max_new_tokens = r->max_new_tokens;

  const mk_kv_config_t *c = &r->cache;
  Morphkv__CacheSettings cs = MORPHKV__CACHE_SETTINGS__INIT;
  cs.policy = (Morphkv__KvPolicy)policy_to_wire(c->policy);
  cs.window = c->window;
  cs.capacity = c->capacity;
  cs.fusion =
      (Morphkv__KvFusion)map2(c->fusion, MK_KV_FUSION_SUM, MORPHKV__KV_FUSION__KV_FUSION_SUM,
                              MK_KV_FUSION_MAX, MORPHKV__KV_FUSION__KV_FUSION_MAX);
  cs.gqa = (Morphkv__KvGqa)map2(c->gqa, MK_KV_GQA_LOGIT_SUM, MORPHKV__KV_GQA__KV_GQA_LOGIT_SUM,
                                MK_KV_GQA_PROB_MAX, MORPHKV__KV_GQA__KV_GQA_PROB_MAX);
  cs.sinks = c->sinks;
  cs.evict_after = c->evict_after;
  cs.dtype = (Morphkv__KvDtype)map2(c->dtype, MK_KV_F32, MORPHKV__KV_DTYPE__KV_DTYPE_F32, MK_KV_F16,
                                    MORPHKV__KV_DTYPE__KV_DTYPE_F16);
  cs.h2o_mode =
      (Morphkv__KvH2oMode)map2(c->h2o_mode, MK_KV_H2O_GROUP, MORPHKV__KV_H2O_MODE__KV_H2O_GROUP,
                               MK_KV_H2O_PER_HEAD, MORPHKV__KV_H2O_MODE__KV_H2O_PER_HEAD);
  cs.snapkv_pool = c->snapkv_pool;
  cs.snapkv_maxpool = c->snapkv_maxpool;

  Morphkv__Request m = MORPHKV__REQUEST__INIT;
  m.version = MK_REQUEST_VERSION;
  m.kind = (Morphkv__RequestKind)kind_to_wire(r->kind);
  m.request_id = r->id;
  m.n_prompt = r->n_prompt;
  m.prompt = r->prompt;
  m.sampling = &s;
  m.cache = &cs;
  m.n_stop = r->n_stop;
  m.stop = r->stop;

  size_t n = morphkv__request__get_packed_size(&m);
  if (n > MK_REQUEST_MAX_BYTES)
    return mk_fail(err, "request: packs to %zu bytes, more than the %zu allowed", n,
                   MK_REQUEST_MAX_BYTES);
  uint8_t *b = malloc(n ? n : 1);
  if (!b) return mk_fail(err, "request: out of memory packing %zu bytes", n);
  size_t w = morphkv__request__pack(&m, b);
  if (w != n) {
    free(b);
    return mk_fail(err, "request: packed %zu bytes, expected %zu", w, n);
  }
  *buf = b;
  *len = n;
  return 0;
}

/* ---- unpack ---- */

static int from_wire(const Morphkv__Request *m, mk_request_t *r, mk_error_t *err) {
  if (m->version != MK_REQUEST_VERSION)
    return mk_fail(err, "request: message version %u, this build reads version %u",
                   (unsigned)m->version, MK_REQUEST_VERSION);
  int kind = kind_from_wire(m->kind);
  if (kind < 0) return mk_fail(err, "request: unknown or missing kind %d", (int)m->kind);
  r->kind = (mk_request_kind_t)kind;
  r->id = m->request_id;
  if (kind == MK_REQUEST_GENERATE && (!m->sampling || !m->cache))
    return mk_fail(err, "request: GENERATE without %s settings",
                   !m->sampling ? "sampling" : "cache");
  if (m->n_prompt > MK_REQUEST_MAX_PROMPT)
    return mk_fail(err, "request: %zu prompt tokens, more than the %d allowed", m->n_prompt,
                   MK_REQUEST_MAX_PROMPT);
  if (m->n_stop > MK_REQUEST_MAX_STOP)
    return mk_fail(err, "request: %zu stop strings, more than the %d allowed", m->n_stop,
                   MK_REQUEST_MAX_STOP);

  if (m->sampling) {
    const Morphkv__Sampling *s = m->sampling;
    /* -0.0 reads as +0.0: protobuf-c does not send a zero float, so a sender's -0.0 arrives as
     * +0.0 and the two ranks would hold different bits (found by tests/fuzz/fuzz_request) */
    r->sampling.temperature = s->temperature == 0 ? 0.0f : s->temperature;
    r->sampling.top_k = s->top_k;
    r->sampling.top_p = s->top_p;
    r->sampling.min_p = s->min_p == 0 ? 0.0f : s->min_p;
    r->sampling.repeat_penalty = s->repeat_penalty;
    r->sampling.repeat_last_n = s->repeat_last_n;
    r->sampling.seed = s->seed;
    r->max_new_tokens = s->max_new_tokens;
  }
  if (m->cache) {
    const Morphkv__CacheSettings *cs = m->cache;
    mk_kv_config_t *c = &r->cache;
    int policy = policy_from_wire(cs->policy);
    int fusion = map2(cs->fusion, MORPHKV__KV_FUSION__KV_FUSION_SUM, MK_KV_FUSION_SUM,
                      MORPHKV__KV_FUSION__KV_FUSION_MAX, MK_KV_FUSION_MAX);
    int gqa = map2(cs->gqa, MORPHKV__KV_GQA__KV_GQA_LOGIT_SUM, MK_KV_GQA_LOGIT_SUM,
                   MORPHKV__KV_GQA__KV_GQA_PROB_MAX, MK_KV_GQA_PROB_MAX);
    int dtype = map2(cs->dtype, MORPHKV__KV_DTYPE__KV_DTYPE_F32, MK_KV_F32,
                     MORPHKV__KV_DTYPE__KV_DTYPE_F16, MK_KV_F16);
    int h2o = map2(cs->h2o_mode, MORPHKV__KV_H2O_MODE__KV_H2O_GROUP, MK_KV_H2O_GROUP,
                   MORPHKV__KV_H2O_MODE__KV_H2O_PER_HEAD, MK_KV_H2O_PER_HEAD);
    if (policy < 0) return mk_fail(err, "request: unknown cache policy %d", (int)cs->policy);
    if (fusion < 0) return mk_fail(err, "request: unknown cache fusion %d", (int)cs->fusion);
    if (gqa < 0) return mk_fail(err, "request: unknown cache gqa mode %d", (int)cs->gqa);
    if (dtype < 0) return mk_fail(err, "request: unknown cache dtype %d", (int)cs->dtype);
    if (h2o < 0) return mk_fail(err, "request: unknown h2o mode %d", (int)cs->h2o_mode);
    c->policy = (mk_kv_policy_kind_t)policy;
    c->window = cs->window;
    c->capacity = cs->capacity;
    c->fusion = (mk_kv_fusion_t)fusion;
    c->gqa = (mk_kv_gqa_t)gqa;
    c->sinks = cs->sinks;
    c->evict_after = cs->evict_after;
    c->dtype = (mk_kv_dtype_t)dtype;
    c->h2o_mode = (mk_kv_h2o_mode_t)h2o;
    c->snapkv_pool = cs->snapkv_pool;
    c->snapkv_maxpool = cs->snapkv_maxpool;
  }

  if (m->n_prompt) {
    r->prompt = malloc(m->n_prompt * sizeof *r->prompt);
    if (!r->prompt)
      return mk_fail(err, "request: out of memory for %zu prompt tokens", m->n_prompt);
    memcpy(r->prompt, m->prompt, m->n_prompt * sizeof *r->prompt);
    r->n_prompt = m->n_prompt;
  }
  if (m->n_stop) {
    r->stop = calloc(m->n_stop, sizeof *r->stop);
    if (!r->stop) return mk_fail(err, "request: out of memory for %zu stop strings", m->n_stop);
    r->n_stop = m->n_stop;
    for (size_t i = 0; i < m->n_stop; i++) {
      size_t n = m->stop[i] ? strlen(m->stop[i]) : 0; /* protobuf-c NUL-terminates */
      if (n == 0 || n > MK_REQUEST_MAX_STOP_LEN)
        return mk_fail(err, "request: stop string %zu has %zu bytes (allowed 1..%d)", i, n,
                       MK_REQUEST_MAX_STOP_LEN);
      r->stop[i] = malloc(n + 1);
      if (!r->stop[i]) return mk_fail(err, "request: out of memory for stop string %zu", i);
      memcpy(r->stop[i], m->stop[i], n + 1);
    }
  }
  return 0;
}

int mk_request_unpack(const uint8_t *buf, size_t len, int n_vocab, mk_request_t *out,
                      mk_error_t *err) {
  mk_request_init(out);
  if (len > MK_REQUEST_MAX_BYTES)
    return mk_fail(err, "request: %zu bytes, more than the %zu allowed", len, MK_REQUEST_MAX_BYTES);
  Morphkv__Request *m = morphkv__request__unpack(NULL, len, buf);
  if (!m) return mk_fail(err, "request: %zu bytes do not unpack as a morphkv.Request", len);
  mk_request_t r;
  mk_request_init(&r);
  int rc = from_wire(m, &r, err);
  morphkv__request__free_unpacked(m, NULL);
  if (rc == 0) rc = mk_request_validate(&r, n_vocab, err);
  if (rc) {
    mk_request_free(&r);
    return -1;
  }
  *out = r;
  return 0;
}

/* ---- broadcast ---- */

/* Broadcasts the length and the bytes from rank 0; on ranks != 0 allocates *buf. Every rank makes
 * the same MPI calls whatever happens locally, so no rank waits for a call another skipped. */
static int bcast_bytes(const mk_ctx_t *ctx, uint8_t **buf, size_t *len, mk_error_t *err) {
  uint64_t n = *len;
  if (mk_wd_bcast(ctx->wd, &n, 1, MPI_UINT64_T, 0, ctx->mpi, "request length", err)) return -1;
  int st = 0;
  if (n > MK_REQUEST_MAX_BYTES) /* same n everywhere: every rank refuses */
    return mk_fail(err, "request: rank 0 sent a length of %llu bytes, more than the %zu allowed",
                   (unsigned long long)n, MK_REQUEST_MAX_BYTES);
  if (ctx->rank != 0) {
    *len = (size_t)n;
    *buf = malloc(n ? (size_t)n : 1);
    if (!*buf) st = mk_fail(err, "request: out of memory for %llu bytes", (unsigned long long)n);
  }
  if (mk_ctx_agree(ctx, st, err)) return -1;
  if (mk_wd_bcast(ctx->wd, *buf, (int)n, MPI_BYTE, 0, ctx->mpi, "request", err)) return -1;
  if (ctx->comm && ctx->world > 1) ctx->comm->bytes_other += sizeof n + n;
  return 0;
}

int mk_request_bcast(const mk_ctx_t *ctx, mk_request_t *req, int n_vocab, mk_error_t *err) {
  uint8_t *buf = NULL;
  size_t len = 0;
  int st = 0;
  if (ctx->rank == 0) st = mk_request_pack(req, n_vocab, &buf, &len, err);
  if (mk_ctx_agree(ctx, st, err)) {
    free(buf);
    return -1;
  }
  if (bcast_bytes(ctx, &buf, &len, err)) {
    free(buf);
    return -1;
  }
  /* rank 0 unpacks its own bytes too and runs from that copy, so every rank holds the same
   * request bit for bit (a -0.0 temperature on rank 0 would otherwise stay -0.0 there only) */
  mk_request_t got;
  mk_request_init(&got);
  st = mk_request_unpack(buf, len, n_vocab, &got, err);
  free(buf);
  if (mk_ctx_agree(ctx, st, err)) {
    mk_request_free(&got);
    return -1;
  }
  if (ctx->rank == 0) mk_request_free(req);
  *req = got;
  return 0;
}
