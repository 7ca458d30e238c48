/* Hugging Face checkpoint loader (see src/hf_model.h for the mapping and the invariants).
 *
 * Design note: open = (1) config.json -> hf_cfg_t (architecture checked by name), (2) the shard
 * list (index.json's weight_map, or model.safetensors alone), each shard mmapped and its header
 * validated by mk_st_parse, (3) every tensor renamed to its GGUF name and checked against the
 * config (shape, dtype, layer index) and, with an index, against the file the index names,
 * (4) the metadata GGUF built from config + tokenizer files. The tensor table is sorted by GGUF
 * name for bsearch; data pointers stay valid until mk_hf_close. */
#define _POSIX_C_SOURCE 200809L
#include "src/hf_model.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/gguf_build.h"
#include "src/safetensors.h"

typedef struct shard {
  char *path;
  void *map;
  size_t size;
  mk_st_header_t hdr;
} shard_t;

typedef struct hf_tensor {
  mk_tensor_info_t info; /* info.name = GGUF name (owned) */
  const char *hf_name;   /* borrowed from the shard header */
  int shard;             /* -1: synthesized (rope_freqs) */
  mk_type_t file_type;
  float *owned; /* f32 copy of a 1-D tensor, an aligned copy of a misaligned matrix, or synthesized data */
} hf_tensor_t;

typedef struct hf_cfg {
  const char *arch_hf; /* architectures[0] */
  const char *arch;    /* "llama" | "qwen2" */
  int n_layer, n_embd, n_ff, n_head, n_kv, head_dim, n_vocab, n_ctx;
  double eps, theta;
  bool tied, qkv_bias;
  bool llama3_rope;
  double rs_factor, rs_low, rs_high, rs_orig_ctx;
  int torch_type; /* mk_type_t, or -1 when config.json has no torch_dtype */
} hf_cfg_t;

struct mk_hf {
  char *dir;
  shard_t *shards;
  size_t n_shards;
  hf_tensor_t *t;
  size_t n_t, cap_t;
  uint8_t *meta_buf;
  mk_gguf_t *meta;
  hf_cfg_t cfg;
  json_t *config;
};

bool mk_hf_is_dir(const char *path) {
  struct stat st;
  return path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static char *path_join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s", dir, name);
  return p;
}

/* Loads a JSON file; *out NULL (rc 0) when optional and absent. */
static int load_json(const char *dir, const char *name, bool optional, json_t **out, mk_error_t *err) {
  *out = NULL;
  char *p = path_join(dir, name);
  if (!p) return mk_fail(err, "out of memory");
  int rc = 0;
  if (access(p, F_OK) != 0) {
    if (!optional) rc = mk_fail(err, "%s: missing (a Hugging Face model directory needs it)", p);
  } else {
    json_error_t je;
    *out = json_load_file(p, JSON_REJECT_DUPLICATES, &je);
    if (!*out) rc = mk_fail(err, "%s: malformed JSON at line %d, column %d: %s", p, je.line, je.column, je.text);
    else if (!json_is_object(*out)) {
      rc = mk_fail(err, "%s: not a JSON object", p);
      json_decref(*out);
      *out = NULL;
    }
  }
  free(p);
  return rc;
}

/* ---- config.json ----------------------------------------------------------------------------- */

static int cfg_int(const json_t *c, const char *dir, const char *key, int dflt, int *out, mk_error_t *err) {
  const json_t *v = json_object_get(c, key);
  if (!v || json_is_null(v)) {
    if (dflt < 0) return mk_fail(err, "%s/config.json: missing key '%s'", dir, key);
    *out = dflt;
    return 0;
  }
  if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > (1 << 30))
    return mk_fail(err, "%s/config.json: '%s' must be a positive integer", dir, key);
  *out = (int)json_integer_value(v);
  return 0;
}

static int cfg_num(const json_t *c, const char *dir, const char *key, double dflt, double *out, mk_error_t *err) {
  const json_t *v = json_object_get(c, key);
  if (!v || json_is_null(v)) {
    *out = dflt;
    return 0;
  }
  if (!json_is_number(v) || !(json_number_value(v) > 0))
    return mk_fail(err, "%s/config.json: '%s' must be a positive number", dir, key);
  *out = json_number_value(v);
  return 0;
}

static int cfg_rope_scaling(const json_t *c, const char *dir, hf_cfg_t *h, mk_error_t *err) {
  const json_t *rs = json_object_get(c, "rope_scaling");
  if (!rs || json_is_null(rs)) return 0;
  if (!json_is_object(rs)) return mk_fail(err, "%s/config.json: 'rope_scaling' must be an object or null", dir);
  const char *type = json_string_value(json_object_get(rs, "rope_type"));
  if (!type) type = json_string_value(json_object_get(rs, "type"));
  if (!type || strcmp(type, "llama3") != 0)
    return mk_fail(err, "%s/config.json: rope_scaling type '%s' is not supported (supported: llama3)", dir,
                   type ? type : "(none)");
  h->llama3_rope = true;
  int orig = 0;
  if (cfg_num(rs, dir, "factor", 8.0, &h->rs_factor, err) || cfg_num(rs, dir, "low_freq_factor", 1.0, &h->rs_low, err) ||
      cfg_num(rs, dir, "high_freq_factor", 4.0, &h->rs_high, err) ||
      cfg_int(rs, dir, "original_max_position_embeddings", 8192, &orig, err))
    return -1;
  if (!(h->rs_high > h->rs_low))
    return mk_fail(err, "%s/config.json: rope_scaling: high_freq_factor must exceed low_freq_factor", dir);
  h->rs_orig_ctx = orig;
  return 0;
}

static int cfg_torch_dtype(const json_t *c, const char *dir, hf_cfg_t *h, mk_error_t *err) {
  h->torch_type = -1;
  const char *s = json_string_value(json_object_get(c, "torch_dtype"));
  if (!s) return 0;
  if (strcmp(s, "bfloat16") == 0) h->torch_type = MK_TYPE_BF16;
  else if (strcmp(s, "float16") == 0) h->torch_type = MK_TYPE_F16;
  else if (strcmp(s, "float32") == 0) h->torch_type = MK_TYPE_F32;
  else return mk_fail(err, "%s/config.json: torch_dtype '%s' is not supported (bfloat16, float16, float32)", dir, s);
  return 0;
}

static int parse_config(const json_t *c, const char *dir, hf_cfg_t *h, mk_error_t *err) {
  memset(h, 0, sizeof *h);
  const json_t *archs = json_object_get(c, "architectures");
  h->arch_hf = json_string_value(json_array_get(archs, 0));
  if (!h->arch_hf) return mk_fail(err, "%s/config.json: no 'architectures' list", dir);
  if (strcmp(h->arch_hf, "LlamaForCausalLM") == 0 || strcmp(h->arch_hf, "MistralForCausalLM") == 0)
    h->arch = "llama";
  else if (strcmp(h->arch_hf, "Qwen2ForCausalLM") == 0)
    h->arch = "qwen2";
  else
    return mk_fail(err, "%s/config.json: unsupported architecture '%s' (supported: LlamaForCausalLM, "
                   "MistralForCausalLM, Qwen2ForCausalLM)", dir, h->arch_hf);
  if (cfg_int(c, dir, "num_hidden_layers", -1, &h->n_layer, err) || cfg_int(c, dir, "hidden_size", -1, &h->n_embd, err) ||
      cfg_int(c, dir, "intermediate_size", -1, &h->n_ff, err) ||
      cfg_int(c, dir, "num_attention_heads", -1, &h->n_head, err) ||
      cfg_int(c, dir, "num_key_value_heads", h->n_head, &h->n_kv, err) ||
      cfg_int(c, dir, "vocab_size", -1, &h->n_vocab, err) ||
      cfg_int(c, dir, "max_position_embeddings", 2048, &h->n_ctx, err))
    return -1;
  if (h->n_embd % h->n_head) return mk_fail(err, "%s/config.json: hidden_size is not a multiple of num_attention_heads", dir);
  if (cfg_int(c, dir, "head_dim", h->n_embd / h->n_head, &h->head_dim, err) ||
      cfg_num(c, dir, "rms_norm_eps", 1e-6, &h->eps, err) || cfg_num(c, dir, "rope_theta", 10000.0, &h->theta, err) ||
      cfg_rope_scaling(c, dir, h, err) || cfg_torch_dtype(c, dir, h, err))
    return -1;
  const json_t *sw = json_object_get(c, "sliding_window");
  const json_t *use_sw = json_object_get(c, "use_sliding_window");
  bool sw_on = json_is_integer(sw) && (strcmp(h->arch, "llama") == 0 || json_is_true(use_sw));
  if (sw_on && json_integer_value(sw) > 0 && json_integer_value(sw) < h->n_ctx)
    h->n_ctx = (int)json_integer_value(sw); /* full attention is exact only inside the window */
  h->tied = json_is_true(json_object_get(c, "tie_word_embeddings"));
  h->qkv_bias = strcmp(h->arch, "qwen2") == 0;
  if (json_is_true(json_object_get(c, "attention_bias")) && !h->qkv_bias)
    return mk_fail(err, "%s/config.json: attention_bias (an o_proj bias) is not supported for %s", dir, h->arch_hf);
  if (json_is_true(json_object_get(c, "mlp_bias")))
    return mk_fail(err, "%s/config.json: mlp_bias is not supported", dir);
  const char *act = json_string_value(json_object_get(c, "hidden_act"));
  if (act && strcmp(act, "silu") != 0)
    return mk_fail(err, "%s/config.json: hidden_act '%s' is not supported (silu)", dir, act);
  return 0;
}

/* ---- shards ---------------------------------------------------------------------------------- */

static int shard_open(shard_t *s, mk_error_t *err) {
  int fd = open(s->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return mk_fail(err, "%s: cannot open: %s", s->path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return mk_fail(err, "%s: not a regular file", s->path);
  }
  s->size = (size_t)st.st_size;
  static const uint8_t empty[1];
  const void *base = empty;
  if (s->size > 0) {
    s->map = mmap(NULL, s->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (s->map == MAP_FAILED) {
      s->map = NULL;
      close(fd);
      return mk_fail(err, "%s: mmap of %zu bytes failed: %s", s->path, s->size, strerror(errno));
    }
    base = s->map;
  }
  close(fd);
  return mk_st_parse(base, s->size, s->path, &s->hdr, err);
}

/* Adds a shard by file name (deduplicated); returns its index or -1. */
static int shard_add(mk_hf_t *h, const char *file, mk_error_t *err) {
  if (strchr(file, '/') || strcmp(file, "..") == 0)
    return mk_fail(err, "%s/model.safetensors.index.json: shard name '%s' is not a file name in the directory", h->dir,
                   file);
  for (size_t i = 0; i < h->n_shards; i++)
    if (strcmp(strrchr(h->shards[i].path, '/') + 1, file) == 0) return (int)i;
  shard_t *ns = realloc(h->shards, (h->n_shards + 1) * sizeof *ns);
  if (!ns) return mk_fail(err, "out of memory");
  h->shards = ns;
  shard_t *s = &h->shards[h->n_shards];
  memset(s, 0, sizeof *s);
  if (!(s->path = path_join(h->dir, file))) return mk_fail(err, "out of memory");
  h->n_shards++;
  if (access(s->path, F_OK) != 0)
    return mk_fail(err, "%s: missing shard (named by model.safetensors.index.json)", s->path);
  if (shard_open(s, err) != 0) return -1;
  return (int)(h->n_shards - 1);
}

/* ---- tensor names and expected shapes --------------------------------------------------------- */

static const struct {
  const char *hf, *gguf;
} LAYER_NAMES[] = {
    {"input_layernorm.weight", "attn_norm.weight"}, {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},   {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},   {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},       {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},       {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},        {"mlp.down_proj.weight", "ffn_down.weight"},
};

/* GGUF name of a HF tensor: 1 mapped, 0 ignored (rotary inv_freq buffers), -1 unknown. *layer is
 * the layer index or -1. */
static int map_name(const char *hf, char *out, size_t cap, int *layer) {
  *layer = -1;
  if (strcmp(hf, "model.embed_tokens.weight") == 0) return snprintf(out, cap, "token_embd.weight"), 1;
  if (strcmp(hf, "lm_head.weight") == 0) return snprintf(out, cap, "output.weight"), 1;
  if (strcmp(hf, "model.norm.weight") == 0) return snprintf(out, cap, "output_norm.weight"), 1;
  int l, n = 0;
  if (sscanf(hf, "model.layers.%d.%n", &l, &n) != 1 || n == 0 || l < 0) return -1;
  const char *suf = hf + n;
  if (strcmp(suf, "self_attn.rotary_emb.inv_freq") == 0) return 0;
  for (size_t i = 0; i < sizeof LAYER_NAMES / sizeof LAYER_NAMES[0]; i++)
    if (strcmp(suf, LAYER_NAMES[i].hf) == 0) {
      *layer = l;
      snprintf(out, cap, "blk.%d.%s", l, LAYER_NAMES[i].gguf);
      return 1;
    }
  return -1;
}

/* Expected GGUF shape (ne0, ne1; ne1 = 0 for a vector) of a GGUF tensor name; false if this
 * config has no such tensor (e.g. a bias without qkv_bias). */
static bool expected_shape(const hf_cfg_t *c, const char *g, int64_t *ne0, int64_t *ne1) {
  const char *suf = strncmp(g, "blk.", 4) == 0 ? strchr(g + 4, '.') + 1 : g;
  int64_t q = (int64_t)c->n_head * c->head_dim, kv = (int64_t)c->n_kv * c->head_dim;
  *ne1 = 0;
  if (!strcmp(suf, "token_embd.weight") || !strcmp(suf, "output.weight")) *ne0 = c->n_embd, *ne1 = c->n_vocab;
  else if (!strcmp(suf, "output_norm.weight") || !strcmp(suf, "attn_norm.weight") || !strcmp(suf, "ffn_norm.weight"))
    *ne0 = c->n_embd;
  else if (!strcmp(suf, "attn_q.weight")) *ne0 = c->n_embd, *ne1 = q;
  else if (!strcmp(suf, "attn_k.weight") || !strcmp(suf, "attn_v.weight")) *ne0 = c->n_embd, *ne1 = kv;
  else if (!strcmp(suf, "attn_output.weight")) *ne0 = q, *ne1 = c->n_embd;
  else if (!strcmp(suf, "ffn_gate.weight") || !strcmp(suf, "ffn_up.weight")) *ne0 = c->n_embd, *ne1 = c->n_ff;
  else if (!strcmp(suf, "ffn_down.weight")) *ne0 = c->n_ff, *ne1 = c->n_embd;
  else if (!strcmp(suf, "attn_q.bias")) *ne0 = q;
  else if (!strcmp(suf, "attn_k.bias") || !strcmp(suf, "attn_v.bias")) *ne0 = kv;
  else return false;
  return c->qkv_bias || !strstr(suf, ".bias");
}

static const char *dtype_name(int t) {
  return t == MK_TYPE_BF16 ? "bfloat16" : t == MK_TYPE_F16 ? "float16" : "float32";
}

/* Checks one stored tensor against config.json; fills in its GGUF view. */
static int check_tensor(const mk_hf_t *h, const shard_t *s, const mk_st_tensor_t *st, hf_tensor_t *t, int layer,
                        mk_error_t *err) {
  const hf_cfg_t *c = &h->cfg;
  int64_t ne0, ne1;
  if (layer >= c->n_layer)
    return mk_fail(err, "%s: tensor '%s' is for layer %d, but config.json has num_hidden_layers %d", s->path,
                   st->name, layer, c->n_layer);
  if (!expected_shape(c, t->info.name, &ne0, &ne1))
    return mk_fail(err, "%s: tensor '%s' is not part of %s (config.json)", s->path, st->name, c->arch_hf);
  int nd = ne1 ? 2 : 1;
  int64_t g0 = st->shape[st->n_dims - 1], g1 = st->n_dims == 2 ? st->shape[0] : 0;
  if (st->n_dims != nd || g0 != ne0 || g1 != ne1) {
    char got[64] = "[";
    for (int d = 0; d < st->n_dims; d++)
      snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "", (long long)st->shape[d]);
    return mk_fail(err, "%s: tensor '%s' has shape %s], but config.json (hidden_size %d, intermediate_size %d, "
                   "heads %d/%d, head_dim %d, vocab_size %d) needs [%lld%s%lld]", s->path, st->name, got, c->n_embd,
                   c->n_ff, c->n_head, c->n_kv, c->head_dim, c->n_vocab, (long long)(ne1 ? ne1 : ne0), ne1 ? ", " : "",
                   (long long)(ne1 ? ne0 : 0));
  }
  if (nd == 2 && c->torch_type >= 0 && (int)st->type != c->torch_type)
    return mk_fail(err, "%s: tensor '%s' is %s, but config.json says torch_dtype %s", s->path, st->name,
                   dtype_name(st->type), dtype_name(c->torch_type));
  const uint8_t *data = (const uint8_t *)s->map + s->hdr.data_offset + st->begin;
  t->file_type = st->type;
  t->info.type = nd == 2 ? st->type : MK_TYPE_F32;
  t->info.n_dims = nd;
  t->info.ne[0] = ne0;
  t->info.ne[1] = nd == 2 ? ne1 : 1;
  t->info.ne[2] = t->info.ne[3] = 1;
  t->info.data = data;
  t->info.nbytes = (size_t)(st->end - st->begin);
  if (nd == 2 && ((uintptr_t)data % 16) != 0) {
    /* a legal but unpadded header (the reference writer pads it to 8 bytes): an aligned copy */
    if (!(t->owned = aligned_alloc(64, (t->info.nbytes + 63) & ~(size_t)63))) return mk_fail(err, "out of memory");
    memcpy(t->owned, data, t->info.nbytes);
    t->info.data = t->owned;
  }
  if (nd == 1) { /* norms and biases: f32 copies (the binder reads them as float arrays) */
    if (!(t->owned = malloc((size_t)ne0 * sizeof(float)))) return mk_fail(err, "out of memory");
    for (int64_t i = 0; i < ne0; i++) {
      uint16_t u16;
      if (st->type == MK_TYPE_F32) {
        memcpy(&t->owned[i], data + 4 * i, 4);
        continue;
      }
      memcpy(&u16, data + 2 * i, 2);
      t->owned[i] = st->type == MK_TYPE_BF16 ? mk_bf16_to_f32(u16) : mk_f16_to_f32(u16);
    }
    t->info.data = t->owned;
    t->info.nbytes = (size_t)ne0 * sizeof(float);
  }
  return 0;
}

/* ---- the tensor table ------------------------------------------------------------------------ */

static hf_tensor_t *table_push(mk_hf_t *h, const char *gname, mk_error_t *err) {
  if (h->n_t == h->cap_t) {
    size_t cap = h->cap_t ? h->cap_t * 2 : 64;
    hf_tensor_t *nt = realloc(h->t, cap * sizeof *nt);
    if (!nt) return mk_fail(err, "out of memory"), NULL;
    h->t = nt;
    h->cap_t = cap;
  }
  hf_tensor_t *t = &h->t[h->n_t];
  memset(t, 0, sizeof *t);
  if (!(t->info.name = strdup(gname))) return mk_fail(err, "out of memory"), NULL;
  h->n_t++;
  return t;
}

static int cmp_tensor(const void *a, const void *b) {
  return strcmp(((const hf_tensor_t *)a)->info.name, ((const hf_tensor_t *)b)->info.name);
}

static const hf_tensor_t *table_find(const mk_hf_t *h, const char *gname) {
  hf_tensor_t key;
  key.info.name = gname;
  return bsearch(&key, h->t, h->n_t, sizeof *h->t, cmp_tensor);
}

/* Adds shard si's tensors. want_file: with an index, only tensors the index assigns here are
 * expected (a stored tensor the index puts elsewhere is refused by the caller's pass). */
static int add_shard_tensors(mk_hf_t *h, size_t si, const json_t *weight_map, mk_error_t *err) {
  shard_t *s = &h->shards[si];
  const char *base = strrchr(s->path, '/') + 1;
  for (size_t i = 0; i < s->hdr.n; i++) {
    const mk_st_tensor_t *st = &s->hdr.t[i];
    char g[128];
    int layer, m = map_name(st->name, g, sizeof g, &layer);
    if (m == 0) continue;
    if (m < 0)
      return mk_fail(err, "%s: tensor '%s' is not part of the %s layout this engine runs", s->path, st->name,
                     h->cfg.arch_hf);
    if (weight_map) {
      const char *f = json_string_value(json_object_get(weight_map, st->name));
      if (!f || strcmp(f, base) != 0) continue; /* not indexed here: the index is authoritative */
    }
    if (h->cfg.tied && strcmp(g, "output.weight") == 0) continue; /* tie_word_embeddings: lm_head unused */
    hf_tensor_t *t = table_push(h, g, err);
    if (!t) return -1;
    t->hf_name = st->name;
    t->shard = (int)si;
    if (check_tensor(h, s, st, t, layer, err) != 0) return -1;
  }
  return 0;
}

/* Every name in the index must be in the file it names. */
static int check_index(mk_hf_t *h, const json_t *weight_map, mk_error_t *err) {
  const char *name;
  json_t *v;
  json_object_foreach((json_t *)weight_map, name, v) {
    const char *file = json_string_value(v);
    if (!file)
      return mk_fail(err, "%s/model.safetensors.index.json: weight_map['%s'] is not a file name", h->dir, name);
    int si = shard_add(h, file, err);
    if (si < 0) return -1;
    if (!mk_st_find(&h->shards[si].hdr, name))
      return mk_fail(err, "%s: tensor '%s' is not in this file, but model.safetensors.index.json names it there",
                     h->shards[si].path, name);
  }
  return 0;
}

static int load_tensors(mk_hf_t *h, mk_error_t *err) {
  json_t *index = NULL;
  if (load_json(h->dir, "model.safetensors.index.json", true, &index, err) != 0) return -1;
  int rc = 0;
  const json_t *wm = NULL;
  if (index) {
    wm = json_object_get(index, "weight_map");
    if (!json_is_object(wm)) rc = mk_fail(err, "%s/model.safetensors.index.json: no 'weight_map' object", h->dir);
    else rc = check_index(h, wm, err);
  } else {
    char *p = path_join(h->dir, "model.safetensors");
    if (!p) return mk_fail(err, "out of memory");
    if (access(p, F_OK) != 0)
      rc = mk_fail(err, "%s: neither model.safetensors nor model.safetensors.index.json is there", h->dir);
    free(p);
    if (rc == 0 && shard_add(h, "model.safetensors", err) < 0) rc = -1;
  }
  for (size_t i = 0; rc == 0 && i < h->n_shards; i++) rc = add_shard_tensors(h, i, wm, err);
  json_decref(index);
  if (rc != 0) return -1;
  qsort(h->t, h->n_t, sizeof *h->t, cmp_tensor);
  for (size_t i = 0; i + 1 < h->n_t; i++)
    if (strcmp(h->t[i].info.name, h->t[i + 1].info.name) == 0)
      return mk_fail(err, "%s: tensor '%s' is stored twice (%s and %s)", h->dir, h->t[i].hf_name,
                     h->shards[h->t[i].shard].path, h->shards[h->t[i + 1].shard].path);
  if (!h->cfg.tied && !table_find(h, "output.weight"))
    return mk_fail(err, "%s: no tensor 'lm_head.weight', and config.json does not set tie_word_embeddings", h->dir);
  return 0;
}

/* llama3 rope_scaling as per-frequency divisors (rope_freqs.weight), the formula of transformers'
 * _compute_llama3_parameters and llama.cpp's converter. */
static int add_rope_freqs(mk_hf_t *h, mk_error_t *err) {
  const hf_cfg_t *c = &h->cfg;
  if (!c->llama3_rope) return 0;
  int n = c->head_dim / 2;
  hf_tensor_t *t = table_push(h, "rope_freqs.weight", err);
  if (!t) return -1;
  t->shard = -1;
  t->hf_name = "rope_scaling (config.json)";
  t->file_type = MK_TYPE_F32;
  if (!(t->owned = malloc((size_t)n * sizeof(float)))) return mk_fail(err, "out of memory");
  double low_wl = c->rs_orig_ctx / c->rs_low, high_wl = c->rs_orig_ctx / c->rs_high;
  for (int i = 0; i < n; i++) {
    double freq = 1.0 / pow(c->theta, (2.0 * i) / c->head_dim), wl = 2.0 * M_PI / freq, f;
    if (wl < high_wl) f = 1.0;
    else if (wl > low_wl) f = c->rs_factor;
    else {
      double smooth = (c->rs_orig_ctx / wl - c->rs_low) / (c->rs_high - c->rs_low);
      f = 1.0 / ((1.0 - smooth) / c->rs_factor + smooth);
    }
    t->owned[i] = (float)f;
  }
  t->info = (mk_tensor_info_t){.name = t->info.name, .type = MK_TYPE_F32, .n_dims = 1, .ne = {n, 1, 1, 1},
                               .data = t->owned, .nbytes = (size_t)n * sizeof(float)};
  qsort(h->t, h->n_t, sizeof *h->t, cmp_tensor);
  return 0;
}

/* ---- metadata -------------------------------------------------------------------------------- */

static int build_meta(mk_hf_t *h, mk_error_t *err) {
  const hf_cfg_t *c = &h->cfg;
  mk_gb_t b = {0};
  char k[96];
  const char *base = strrchr(h->dir, '/') ? strrchr(h->dir, '/') + 1 : h->dir;
  mk_gb_str(&b, "general.architecture", c->arch);
  mk_gb_str(&b, "general.name", *base ? base : h->dir);
  mk_gb_str(&b, "morphkv.source", "huggingface");
  mk_gb_str(&b, "morphkv.hf_architecture", c->arch_hf);
  mk_gb_bool(&b, "morphkv.rope_neox", true);
#define K(s) (snprintf(k, sizeof k, "%s." s, c->arch), k)
  mk_gb_u32(&b, K("block_count"), (uint32_t)c->n_layer);
  mk_gb_u32(&b, K("embedding_length"), (uint32_t)c->n_embd);
  mk_gb_u32(&b, K("feed_forward_length"), (uint32_t)c->n_ff);
  mk_gb_u32(&b, K("attention.head_count"), (uint32_t)c->n_head);
  mk_gb_u32(&b, K("attention.head_count_kv"), (uint32_t)c->n_kv);
  mk_gb_u32(&b, K("attention.key_length"), (uint32_t)c->head_dim);
  mk_gb_u32(&b, K("attention.value_length"), (uint32_t)c->head_dim);
  mk_gb_u32(&b, K("rope.dimension_count"), (uint32_t)c->head_dim);
  mk_gb_u32(&b, K("context_length"), (uint32_t)c->n_ctx);
  mk_gb_u32(&b, K("vocab_size"), (uint32_t)c->n_vocab);
  mk_gb_f32(&b, K("rope.freq_base"), (float)c->theta);
  mk_gb_f32(&b, K("attention.layer_norm_rms_epsilon"), (float)c->eps);
#undef K
  if (mk_hf_tokenizer_meta(h->dir, h->config, c->n_vocab, &b, err) != 0) {
    mk_gb_free(&b);
    return -1;
  }
  size_t n = 0;
  if (!(h->meta_buf = mk_gb_finish(&b, &n))) return mk_fail(err, "out of memory");
  char *label = path_join(h->dir, "config.json");
  if (!label) return mk_fail(err, "out of memory");
  int rc = mk_gguf_open_memory(h->meta_buf, n, label, &h->meta, err);
  free(label);
  if (rc != 0) mk_error_prefix(err, "%s: translated metadata", h->dir);
  return rc;
}

/* ---- the source and the object --------------------------------------------------------------- */

static size_t src_count(const void *impl) { return ((const mk_hf_t *)impl)->n_t; }
static const mk_tensor_info_t *src_at(const void *impl, size_t i) {
  const mk_hf_t *h = impl;
  return i < h->n_t ? &h->t[i].info : NULL;
}
static const mk_tensor_info_t *src_find(const void *impl, const char *name) {
  const hf_tensor_t *t = table_find(impl, name);
  return t ? &t->info : NULL;
}

mk_tensor_source_t mk_hf_tensor_source(const mk_hf_t *h) {
  return (mk_tensor_source_t){.impl = (void *)h, .count = src_count, .at = src_at, .find = src_find};
}

mk_gguf_t *mk_hf_meta(const mk_hf_t *h) { return h->meta; }
const char *mk_hf_tensor_hf_name(const mk_hf_t *h, size_t i) { return h->t[i].hf_name; }
int mk_hf_tensor_file_type(const mk_hf_t *h, size_t i) { return (int)h->t[i].file_type; }
const char *mk_hf_tensor_file(const mk_hf_t *h, size_t i) {
  return h->t[i].shard < 0 ? "config.json" : strrchr(h->shards[h->t[i].shard].path, '/') + 1;
}
size_t mk_hf_n_files(const mk_hf_t *h) { return h->n_shards; }
size_t mk_hf_file_bytes(const mk_hf_t *h) {
  size_t n = 0;
  for (size_t i = 0; i < h->n_shards; i++) n += h->shards[i].size;
  return n;
}

int mk_hf_open(const char *dir, mk_hf_t **out, mk_error_t *err) {
  *out = NULL;
  mk_hf_t *h = calloc(1, sizeof *h);
  if (!h || !(h->dir = strdup(dir))) {
    free(h);
    return mk_fail(err, "out of memory");
  }
  size_t dl = strlen(h->dir);
  while (dl > 1 && h->dir[dl - 1] == '/') h->dir[--dl] = 0;
  if (load_json(h->dir, "config.json", false, &h->config, err) != 0 ||
      parse_config(h->config, h->dir, &h->cfg, err) != 0 || load_tensors(h, err) != 0 ||
      add_rope_freqs(h, err) != 0 || build_meta(h, err) != 0) {
    mk_hf_close(h);
    return -1;
  }
  *out = h;
  return 0;
}

void mk_hf_close(mk_hf_t *h) {
  if (!h) return;
  mk_gguf_close(h->meta);
  free(h->meta_buf);
  for (size_t i = 0; i < h->n_t; i++) {
    free((char *)h->t[i].info.name);
    free(h->t[i].owned);
  }
  free(h->t);
  for (size_t i = 0; i < h->n_shards; i++) {
    mk_st_header_free(&h->shards[i].hdr);
    if (h->shards[i].map) munmap(h->shards[i].map, h->shards[i].size);
    free(h->shards[i].path);
  }
  free(h->shards);
  json_decref(h->config);
  free(h->dir);
  free(h);
}
