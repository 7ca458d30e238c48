/* Model configuration from GGUF metadata and weight binding through a tensor source.
 *
 * Invariant: every weight the forward pass reads is bound here, with its shape and type checked,
 * so that the forward pass itself never meets an unexpected tensor. Slices for a tensor-parallel
 * rank are views into the file mapping (row ranges, or block-aligned column ranges via the row
 * stride), never copies. */
#include "src/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int get_u32_req(const mk_gguf_t *g, const char *key, int *out, mk_error_t *err) {
  uint32_t v;
  int r = mk_gguf_get_u32(g, key, &v, err);
  if (r == MK_GGUF_MISSING) return mk_fail(err, "%s: missing metadata key '%s'", mk_gguf_path(g), key);
  if (r != 0) return -1;
  if (v == 0 || v > (1u << 30)) return mk_fail(err, "%s: metadata '%s' = %u is out of range", mk_gguf_path(g), key, v);
  *out = (int)v;
  return 0;
}

int mk_model_config_read(const mk_gguf_t *g, mk_model_config_t *c, mk_error_t *err) {
  memset(c, 0, sizeof *c);
  char *arch = NULL;
  int r = mk_gguf_get_str(g, "general.architecture", &arch, err);
  if (r == MK_GGUF_MISSING) return mk_fail(err, "%s: no 'general.architecture' key; not a model file?", mk_gguf_path(g));
  if (r != 0) return -1;
  if (strcmp(arch, "llama") == 0) {
    c->arch = MK_ARCH_LLAMA;
  } else if (strcmp(arch, "qwen2") == 0) {
    c->arch = MK_ARCH_QWEN2;
  } else {
    mk_fail(err, "%s: unsupported architecture '%s' (supported: llama, qwen2)", mk_gguf_path(g), arch);
    free(arch);
    return -1;
  }
  snprintf(c->arch_name, sizeof c->arch_name, "%s", arch);
  char *name = NULL;
  if (mk_gguf_get_str(g, "general.name", &name, NULL) == 0) {
    snprintf(c->name, sizeof c->name, "%s", name);
    free(name);
  }
  char key[128];
#define ARCH_KEY(suffix) (snprintf(key, sizeof key, "%s." suffix, arch), key)
  int rc = 0;
  rc |= get_u32_req(g, ARCH_KEY("block_count"), &c->n_layer, err);
  if (!rc) rc |= get_u32_req(g, ARCH_KEY("embedding_length"), &c->n_embd, err);
  if (!rc) rc |= get_u32_req(g, ARCH_KEY("feed_forward_length"), &c->n_ff, err);
  if (!rc) rc |= get_u32_req(g, ARCH_KEY("attention.head_count"), &c->n_head, err);
  if (!rc) rc |= get_u32_req(g, ARCH_KEY("context_length"), &c->n_ctx_train, err);
  if (rc) {
    free(arch);
    return -1;
  }
  uint32_t v;
  c->n_kv_head = c->n_head;
  if (mk_gguf_get_u32(g, ARCH_KEY("attention.head_count_kv"), &v, err) == 0) c->n_kv_head = (int)v;
  c->norm_eps = 1e-5f;
  float f;
  if (mk_gguf_get_f32(g, ARCH_KEY("attention.layer_norm_rms_epsilon"), &f, err) == 0) c->norm_eps = f;
  c->rope_theta = 10000.0f;
  if (mk_gguf_get_f32(g, ARCH_KEY("rope.freq_base"), &f, err) == 0) c->rope_theta = f;
  if (c->n_embd % c->n_head != 0) {
    free(arch);
    return mk_fail(err, "%s: embedding_length %d is not a multiple of head_count %d", mk_gguf_path(g), c->n_embd, c->n_head);
  }
  c->head_dim = c->n_embd / c->n_head;
  if (mk_gguf_get_u32(g, ARCH_KEY("attention.key_length"), &v, err) == 0) c->head_dim = (int)v;
  c->rope_dim = c->head_dim;
  if (mk_gguf_get_u32(g, ARCH_KEY("rope.dimension_count"), &v, err) == 0) c->rope_dim = (int)v;
  uint32_t vocab = 0;
  if (mk_gguf_get_u32(g, ARCH_KEY("vocab_size"), &vocab, err) == 0) c->n_vocab = (int)vocab;
  free(arch);
#undef ARCH_KEY
  if (c->n_kv_head <= 0 || c->n_head % c->n_kv_head != 0)
    return mk_fail(err, "%s: head_count %d is not a multiple of head_count_kv %d", mk_gguf_path(g), c->n_head, c->n_kv_head);
  if (c->head_dim <= 0 || c->head_dim > 1024 || c->head_dim % 2 || c->rope_dim <= 0 || c->rope_dim > c->head_dim || c->rope_dim % 2)
    return mk_fail(err, "%s: unsupported head_dim %d / rope dims %d", mk_gguf_path(g), c->head_dim, c->rope_dim);
  c->rope_neox = c->arch == MK_ARCH_QWEN2;
  c->qkv_bias = c->arch == MK_ARCH_QWEN2;
  /* Hugging Face checkpoints keep q/k rows unpermuted: rotate_half pairing (src/hf_model.h) */
  if (mk_gguf_get_bool(g, "morphkv.rope_neox", &c->rope_neox, err) < 0) return -1;
  return 0;
}

/* Checks a tensor's presence, shape and type; returns it. */
static const mk_tensor_info_t *need(const mk_tensor_source_t *src, const char *name, int64_t ne0,
                                    int64_t ne1, bool matrix, mk_error_t *err) {
  const mk_tensor_info_t *t = mk_tensor_find(src, name);
  if (!t) {
    mk_fail(err, "missing tensor '%s'", name);
    return NULL;
  }
  if (!mk_type_supported(t->type)) {
    mk_fail(err, "tensor '%s' has type %s (id %d), which this engine cannot compute with", name,
            mk_type_name(t->type), (int)t->type);
    return NULL;
  }
  int64_t want1 = matrix ? ne1 : 1;
  if (t->ne[0] != ne0 || t->ne[1] != want1 || t->ne[2] != 1 || t->ne[3] != 1) {
    mk_fail(err, "tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]", name,
            (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
            (long long)ne0, (long long)want1);
    return NULL;
  }
  if (!matrix && t->type != MK_TYPE_F32) {
    mk_fail(err, "tensor '%s' is %s; norm weights and biases must be F32", name, mk_type_name(t->type));
    return NULL;
  }
  return t;
}

/* Rows [r0, r1) of a matrix tensor. */
static mk_qmat_t rows_of(const mk_tensor_info_t *t, int64_t r0, int64_t r1) {
  mk_qmat_t m;
  m.type = t->type;
  m.cols = t->ne[0];
  m.row_bytes = mk_type_row_bytes(t->type, t->ne[0]);
  m.rows = r1 - r0;
  m.data = (const char *)t->data + (size_t)r0 * m.row_bytes;
  return m;
}

/* Columns [c0, c1) of every row; c0 and c1 must be block aligned. */
static int cols_of(const mk_tensor_info_t *t, int64_t c0, int64_t c1, mk_qmat_t *m, mk_error_t *err) {
  int64_t blk = mk_type_block_elems(t->type);
  if (c0 % blk || (c1 % blk && c1 != t->ne[0]))
    return mk_fail(err, "tensor '%s' (%s, block %lld): columns [%lld, %lld) do not fall on block boundaries; "
                   "this tensor-parallel degree cannot slice it", t->name, mk_type_name(t->type), (long long)blk,
                   (long long)c0, (long long)c1);
  m->type = t->type;
  m->rows = t->ne[1];
  m->cols = c1 - c0;
  m->row_bytes = mk_type_row_bytes(t->type, t->ne[0]);
  m->data = (const char *)t->data + (size_t)(c0 / blk) * mk_type_block_bytes(t->type);
  return 0;
}

static size_t qmat_bytes(const mk_qmat_t *m) {
  return (size_t)m->rows * mk_type_row_bytes(m->type, m->cols);
}

/* The column chunk of ffn_down (the numerics note in src/quant.c): the largest multiple of the
 * block size that divides n_ff and still leaves at least n_head chunks, so the MLP never limits
 * the rank count below the query heads. The plan splits n_ff in whole chunks, so every rank
 * boundary is a chunk boundary for every T the plan accepts. */
static int ff_chunk_of(int n_ff, int blk, int n_head) {
  int best = blk;
  for (int c = blk; c <= n_ff; c += blk)
    if (n_ff % c == 0 && n_ff / c >= n_head) best = c;
  return best;
}

int mk_model_attn_out_chunk(const mk_model_config_t *cfg, const mk_tensor_source_t *src) {
  const mk_tensor_info_t *wo = mk_tensor_find(src, "blk.0.attn_output.weight");
  int64_t blk = wo && mk_type_block_elems(wo->type) > 0 ? mk_type_block_elems(wo->type) : 1;
  int64_t c = cfg->head_dim;
  while (c % blk) c += cfg->head_dim; /* lcm(head_dim, block) */
  return (int)c;
}

void mk_model_plan_dims(const mk_model_config_t *cfg, const mk_tensor_source_t *src, mk_plan_dims_t *d) {
  memset(d, 0, sizeof *d);
  d->n_head = cfg->n_head;
  d->n_kv_head = cfg->n_kv_head;
  d->head_dim = cfg->head_dim;
  d->n_ff = cfg->n_ff;
  d->n_vocab = cfg->n_vocab;
  d->n_embd = cfg->n_embd;
  d->ff_align = 1;
  d->vocab_align = 1;
  const mk_tensor_info_t *t = mk_tensor_find(src, "blk.0.ffn_down.weight");
  if (t && mk_type_block_elems(t->type) > 0) d->ff_align = (int)mk_type_block_elems(t->type);
  d->ff_align = ff_chunk_of(cfg->n_ff, d->ff_align, cfg->n_head);
}

/* Whether every rank's column slices of attn_output and ffn_down fall on quantization blocks. */
static bool tp_slices_aligned(const mk_model_config_t *cfg, const mk_tensor_source_t *src, const mk_plan_dims_t *d,
                              int tp) {
  const mk_tensor_info_t *wo = mk_tensor_find(src, "blk.0.attn_output.weight");
  int64_t blk = wo ? mk_type_block_elems(wo->type) : 1;
  if (blk <= 1) return true;
  for (int r = 0; r < tp; r++) {
    mk_plan_t p;
    if (mk_plan_make(d, tp, r, &p, NULL) != 0) return false;
    int64_t c0 = (int64_t)p.q_begin * cfg->head_dim, c1 = (int64_t)p.q_end * cfg->head_dim;
    if (c0 % blk || (c1 % blk && c1 != (int64_t)cfg->n_head * cfg->head_dim)) return false;
  }
  return true;
}

int mk_model_check_tp(const mk_model_config_t *cfg, const mk_tensor_source_t *src, int tp, mk_error_t *err) {
  mk_plan_dims_t d;
  mk_model_plan_dims(cfg, src, &d);
  mk_plan_t p;
  if (mk_plan_make(&d, tp, 0, &p, err) != 0) return -1;
  if (tp_slices_aligned(cfg, src, &d, tp)) return 0;
  char ok[256] = "";
  size_t len = 0;
  int max = mk_plan_max_tp(&d, NULL);
  for (int t = 1; t <= max && len + 8 < sizeof ok; t++)
    if (tp_slices_aligned(cfg, src, &d, t)) len += (size_t)snprintf(ok + len, sizeof ok - len, "%s%d", len ? ", " : "", t);
  const mk_tensor_info_t *wo = mk_tensor_find(src, "blk.0.attn_output.weight");
  return mk_fail(err, "tensor parallelism over %d ranks would cut attn_output (%s, blocks of %lld) inside a block "
                 "(head_dim %d); rank counts that work: %s", tp, wo ? mk_type_name(wo->type) : "?",
                 (long long)(wo ? mk_type_block_elems(wo->type) : 0), cfg->head_dim, ok);
}

int mk_model_bind(mk_model_t *m, const mk_model_config_t *cfg, const mk_tensor_source_t *src,
                  const mk_plan_t *plan, mk_error_t *err) {
  memset(m, 0, sizeof *m);
  m->cfg = *cfg;
  const mk_tensor_info_t *emb = mk_tensor_find(src, "token_embd.weight");
  if (!emb) return mk_fail(err, "missing tensor 'token_embd.weight'");
  if (m->cfg.n_vocab == 0) m->cfg.n_vocab = (int)emb->ne[1];
  mk_model_config_t *c = &m->cfg;
  if (plan) {
    m->plan = *plan;
  } else {
    memset(&m->plan, 0, sizeof m->plan);
    m->plan.tp = 1;
    m->plan.q_end = c->n_head;
    m->plan.kv_end = c->n_kv_head;
    m->plan.ff_end = c->n_ff;
    m->plan.vocab_end = c->n_vocab;
    for (int i = 0; i < c->n_kv_head && i < 64; i++) m->plan.kv_replicas[i] = 1;
  }
  const mk_plan_t *p = &m->plan;
  int d = c->head_dim;
  if (!(emb = need(src, "token_embd.weight", c->n_embd, c->n_vocab, true, err))) return -1;
  m->tok_embd = rows_of(emb, 0, c->n_vocab);
  const mk_tensor_info_t *out = mk_tensor_find(src, "output.weight");
  c->tied_output = out == NULL;
  if (out && !(out = need(src, "output.weight", c->n_embd, c->n_vocab, true, err))) return -1;
  m->output = rows_of(out ? out : emb, p->vocab_begin, p->vocab_end);
  m->weight_bytes += qmat_bytes(&m->output);
  const mk_tensor_info_t *t;
  if (!(t = need(src, "output_norm.weight", c->n_embd, 1, false, err))) return -1;
  m->out_norm = t->data;
  if ((t = mk_tensor_find(src, "rope_freqs.weight")) != NULL) {
    if (!(t = need(src, "rope_freqs.weight", c->rope_dim / 2, 1, false, err))) return -1;
    m->rope_freqs = t->data;
  }
  /* The header's block_count is checked against the tensor table before anything is sized by
   * it: every layer has at least 9 tensors, and the last layer's must exist. */
  char name[96];
  size_t n_tensors = src->count ? src->count(src->impl) : 0;
  snprintf(name, sizeof name, "blk.%d.attn_norm.weight", c->n_layer - 1);
  if (c->n_layer < 1 || (src->count && (size_t)c->n_layer > n_tensors / 9) ||
      !mk_tensor_find(src, name))
    return mk_fail(err, "%s.block_count is %d, but the file has %zu tensors%s%s", c->arch_name,
                   c->n_layer, n_tensors, c->n_layer >= 1 ? " and no tensor " : "",
                   c->n_layer >= 1 ? name : "");
  m->layers = calloc((size_t)c->n_layer, sizeof *m->layers);
  if (!m->layers) return mk_fail(err, "out of memory");
  for (int l = 0; l < c->n_layer; l++) {
    mk_layer_w_t *L = &m->layers[l];
#define T(suffix, n0, n1, mat) \
  (snprintf(name, sizeof name, "blk.%d." suffix, l), need(src, name, n0, n1, mat, err))
    if (!(t = T("attn_norm.weight", c->n_embd, 1, false))) goto fail;
    L->attn_norm = t->data;
    if (!(t = T("ffn_norm.weight", c->n_embd, 1, false))) goto fail;
    L->ffn_norm = t->data;
    if (!(t = T("attn_q.weight", c->n_embd, (int64_t)c->n_head * d, true))) goto fail;
    L->wq = rows_of(t, (int64_t)p->q_begin * d, (int64_t)p->q_end * d);
    if (!(t = T("attn_k.weight", c->n_embd, (int64_t)c->n_kv_head * d, true))) goto fail;
    L->wk = rows_of(t, (int64_t)p->kv_begin * d, (int64_t)p->kv_end * d);
    if (!(t = T("attn_v.weight", c->n_embd, (int64_t)c->n_kv_head * d, true))) goto fail;
    L->wv = rows_of(t, (int64_t)p->kv_begin * d, (int64_t)p->kv_end * d);
    if (!(t = T("attn_output.weight", (int64_t)c->n_head * d, c->n_embd, true))) goto fail;
    if (cols_of(t, (int64_t)p->q_begin * d, (int64_t)p->q_end * d, &L->wo, err)) goto fail;
    if (!(t = T("ffn_gate.weight", c->n_embd, c->n_ff, true))) goto fail;
    L->w_gate = rows_of(t, p->ff_begin, p->ff_end);
    if (!(t = T("ffn_up.weight", c->n_embd, c->n_ff, true))) goto fail;
    L->w_up = rows_of(t, p->ff_begin, p->ff_end);
    if (!(t = T("ffn_down.weight", c->n_ff, c->n_embd, true))) goto fail;
    if (cols_of(t, p->ff_begin, p->ff_end, &L->w_down, err)) goto fail;
    if (c->qkv_bias) {
      if (!(t = T("attn_q.bias", (int64_t)c->n_head * d, 1, false))) goto fail;
      L->bq = (const float *)t->data + (size_t)p->q_begin * d;
      if (!(t = T("attn_k.bias", (int64_t)c->n_kv_head * d, 1, false))) goto fail;
      L->bk = (const float *)t->data + (size_t)p->kv_begin * d;
      if (!(t = T("attn_v.bias", (int64_t)c->n_kv_head * d, 1, false))) goto fail;
      L->bv = (const float *)t->data + (size_t)p->kv_begin * d;
    }
#undef T
    m->weight_bytes += qmat_bytes(&L->wq) + qmat_bytes(&L->wk) + qmat_bytes(&L->wv) +
                       qmat_bytes(&L->wo) + qmat_bytes(&L->w_gate) + qmat_bytes(&L->w_up) +
                       qmat_bytes(&L->w_down) + 2 * sizeof(float) * (size_t)c->n_embd;
  }
  return 0;
fail:
  free(m->layers);
  m->layers = NULL;
  return -1;
}

void mk_model_free(mk_model_t *m) {
  free(m->layers);
  memset(m, 0, sizeof *m);
}
