/* tokenizer.json / tokenizer_config.json / generation_config.json -> llama.cpp's tokenizer.*
 * GGUF keys (read by src/tokenizer.c), as llama.cpp's convert_hf_to_gguf.py maps them.
 *
 * Design note. Supported: model "BPE" with
 *  - byte-level pre-tokenizers (ByteLevel, Split with a regex, Digits, in a Sequence): the regexes
 *    are passed through verbatim as morphkv.tokenizer.pre_regex (compiled by PCRE2 in
 *    src/tokenizer.c), with tokenizer.ggml.pre set to the llama.cpp name of a known set for display;
 *  - SentencePiece-style BPE (Metaspace, or the Prepend/Replace normalizer with a ByteFallback
 *    decoder: Llama 2, Mistral): tokenizer.ggml.model "llama", scores = -(merge rank) of the merge
 *    that forms each token, <0xXX> tokens typed as bytes.
 * added_tokens: special -> CONTROL (matched only with parse_special), others USER_DEFINED. The
 * NFC normalizer (Qwen2) is accepted and not applied (as in llama.cpp). Anything else is refused
 * naming the file and the component. BOS/EOS: tokenizer_config.json's tokens, overridden by the
 * ids of config.json and generation_config.json; every eos_token_id listed there is an
 * end-of-generation id (morphkv.tokenizer.eog_ids). add_bos: tokenizer_config.json's
 * add_bos_token, else whether the post-processor's template starts with a special token. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/gguf_build.h"
#include "src/hf_model.h"

enum { TT_NORMAL = 1, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

#define HF_RE_BYTELEVEL "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define HF_RE_LLAMA3                                                                                 \
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
  "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define HF_RE_QWEN2                                                                                  \
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"      \
  "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

typedef struct tok_ctx {
  const char *dir;
  char path[1024]; /* tokenizer.json's path, for messages */
  const char *re[4];
  int n_re;
  bool byte_level, spm, add_prefix;
} tok_ctx_t;

static int load_opt(const char *dir, const char *name, json_t **out, mk_error_t *err) {
  char p[1024];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  *out = NULL;
  FILE *f = fopen(p, "rb");
  if (!f) return 0;
  fclose(f);
  json_error_t je;
  if (!(*out = json_load_file(p, JSON_REJECT_DUPLICATES, &je)))
    return mk_fail(err, "%s: malformed JSON at line %d, column %d: %s", p, je.line, je.column, je.text);
  if (!json_is_object(*out)) {
    json_decref(*out);
    *out = NULL;
    return mk_fail(err, "%s: not a JSON object", p);
  }
  return 0;
}

/* One pre-tokenizer component (not a Sequence). */
static int pre_one(tok_ctx_t *c, const json_t *p, mk_error_t *err) {
  const char *type = json_string_value(json_object_get(p, "type"));
  if (!type) return mk_fail(err, "%s: pre_tokenizer entry without a type", c->path);
  if (c->n_re >= 4 && strcmp(type, "Metaspace") != 0) return mk_fail(err, "%s: more than 4 pre-tokenizer regexes", c->path);
  if (strcmp(type, "ByteLevel") == 0) {
    if (json_is_true(json_object_get(p, "add_prefix_space")))
      return mk_fail(err, "%s: ByteLevel pre-tokenizer with add_prefix_space is not supported", c->path);
    c->byte_level = true;
    if (!json_is_false(json_object_get(p, "use_regex"))) c->re[c->n_re++] = HF_RE_BYTELEVEL;
  } else if (strcmp(type, "Digits") == 0) {
    c->re[c->n_re++] = json_is_true(json_object_get(p, "individual_digits")) ? "\\p{N}" : "\\p{N}+";
  } else if (strcmp(type, "Split") == 0) {
    const json_t *pat = json_object_get(p, "pattern");
    const char *re = json_string_value(json_object_get(pat, "Regex"));
    const char *beh = json_string_value(json_object_get(p, "behavior"));
    if (!re || json_is_true(json_object_get(p, "invert")) || !beh || strcmp(beh, "Isolated") != 0)
      return mk_fail(err, "%s: Split pre-tokenizer: only {\"pattern\": {\"Regex\": ...}, \"behavior\": \"Isolated\"} "
                     "is supported", c->path);
    c->re[c->n_re++] = re;
  } else if (strcmp(type, "Metaspace") == 0) {
    c->spm = true;
    const char *ps = json_string_value(json_object_get(p, "prepend_scheme"));
    c->add_prefix = ps ? strcmp(ps, "never") != 0 : !json_is_false(json_object_get(p, "add_prefix_space"));
  } else {
    return mk_fail(err, "%s: pre-tokenizer '%s' is not supported (ByteLevel, Split, Digits, Metaspace)", c->path, type);
  }
  return 0;
}

static int read_pre(tok_ctx_t *c, const json_t *tj, mk_error_t *err) {
  const json_t *p = json_object_get(tj, "pre_tokenizer");
  if (p && !json_is_null(p)) {
    const char *type = json_string_value(json_object_get(p, "type"));
    if (type && strcmp(type, "Sequence") == 0) {
      size_t i;
      const json_t *e;
      json_array_foreach(json_object_get(p, "pretokenizers"), i, e) if (pre_one(c, e, err) != 0) return -1;
    } else if (pre_one(c, p, err) != 0) {
      return -1;
    }
  }
  const json_t *n = json_object_get(tj, "normalizer");
  const char *nt = json_string_value(json_object_get(n, "type"));
  if (nt && strcmp(nt, "Sequence") == 0) { /* SentencePiece style: Prepend("▁") + Replace(" ", "▁") */
    size_t i;
    const json_t *e;
    json_array_foreach(json_object_get(n, "normalizers"), i, e) {
      const char *t = json_string_value(json_object_get(e, "type"));
      if (t && strcmp(t, "Prepend") == 0) c->add_prefix = true;
      else if (t && strcmp(t, "Replace") == 0) c->spm = true;
      else return mk_fail(err, "%s: normalizer '%s' is not supported (Prepend, Replace, NFC)", c->path, t ? t : "?");
    }
  } else if (nt && strcmp(nt, "NFC") != 0) {
    return mk_fail(err, "%s: normalizer '%s' is not supported (Prepend, Replace, NFC)", c->path, nt);
  }
  const char *dec = json_string_value(json_object_get(json_object_get(tj, "decoder"), "type"));
  if (dec && strcmp(dec, "ByteLevel") == 0) c->byte_level = true;
  if (c->byte_level == c->spm)
    return mk_fail(err, "%s: cannot tell a byte-level BPE from a SentencePiece-style one (pre_tokenizer / "
                   "normalizer / decoder)", c->path);
  return 0;
}

/* llama.cpp's name for a known regex set (display and add_bos defaults only). */
static const char *pre_name(const tok_ctx_t *c) {
  if (c->spm) return "default";
  if (c->n_re == 2 && !strcmp(c->re[0], "\\p{N}") && !strcmp(c->re[1], HF_RE_BYTELEVEL)) return "smollm";
  if (c->n_re == 1 && !strcmp(c->re[0], HF_RE_BYTELEVEL)) return "gpt2";
  if (c->n_re >= 1 && !strcmp(c->re[0], HF_RE_LLAMA3)) return "llama3";
  if (c->n_re >= 1 && !strcmp(c->re[0], HF_RE_QWEN2)) return "qwen2";
  return "hf-custom";
}

typedef struct vocab {
  int n;
  char **text;  /* text[id] (owned) */
  int32_t *type;
  float *score;
  const char **merges;
  char **merge_own; /* merges given as [a, b] pairs, joined here */
  size_t n_merges;
} vocab_t;

static void vocab_free(vocab_t *v) {
  for (int i = 0; i < v->n; i++) free(v->text[i]);
  for (size_t i = 0; v->merge_own && i < v->n_merges; i++) free(v->merge_own[i]);
  free(v->text);
  free(v->type);
  free(v->score);
  free(v->merges);
  free(v->merge_own);
}

static int set_token(vocab_t *v, const char *path, int id, const char *text, int type, mk_error_t *err) {
  if (id < 0 || id >= v->n) return mk_fail(err, "%s: token '%.40s' has id %d outside 0..%d", path, text, id, v->n - 1);
  if (v->text[id] && strcmp(v->text[id], text) != 0 && type == TT_NORMAL)
    return mk_fail(err, "%s: id %d is both '%.40s' and '%.40s'", path, id, v->text[id], text);
  free(v->text[id]);
  if (!(v->text[id] = strdup(text))) return mk_fail(err, "out of memory");
  v->type[id] = type;
  return 0;
}

static int read_merges(vocab_t *v, const tok_ctx_t *c, const json_t *merges, mk_error_t *err) {
  v->n_merges = json_array_size(merges);
  v->merges = calloc(v->n_merges ? v->n_merges : 1, sizeof *v->merges);
  v->merge_own = calloc(v->n_merges ? v->n_merges : 1, sizeof *v->merge_own);
  if (!v->merges || !v->merge_own) return mk_fail(err, "out of memory");
  for (size_t i = 0; i < v->n_merges; i++) {
    const json_t *m = json_array_get(merges, i);
    if (json_is_string(m)) {
      v->merges[i] = json_string_value(m);
    } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
               json_is_string(json_array_get(m, 1))) {
      const char *a = json_string_value(json_array_get(m, 0)), *b = json_string_value(json_array_get(m, 1));
      size_t n = strlen(a) + strlen(b) + 2;
      if (!(v->merge_own[i] = malloc(n))) return mk_fail(err, "out of memory");
      snprintf(v->merge_own[i], n, "%s %s", a, b);
      v->merges[i] = v->merge_own[i];
    } else {
      return mk_fail(err, "%s: model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", c->path, i);
    }
  }
  return 0;
}

/* SentencePiece-style scores: -(rank) of the first merge forming the token; bytes typed. */
static void spm_scores(vocab_t *v, const json_t *vocab_obj) {
  for (size_t r = 0; r < v->n_merges; r++) {
    char buf[512];
    const char *sp = strchr(v->merges[r], ' ');
    if (!sp || strlen(v->merges[r]) >= sizeof buf) continue;
    size_t la = (size_t)(sp - v->merges[r]);
    memcpy(buf, v->merges[r], la);
    strcpy(buf + la, sp + 1);
    const json_t *id = json_object_get(vocab_obj, buf);
    if (json_is_integer(id) && json_integer_value(id) < v->n && v->score[json_integer_value(id)] == 0)
      v->score[json_integer_value(id)] = -(float)(r + 1);
  }
  for (int i = 0; i < v->n; i++) {
    unsigned x;
    char tail;
    if (v->type[i] == TT_NORMAL && strlen(v->text[i]) == 6 && sscanf(v->text[i], "<0x%2X%c", &x, &tail) == 2 &&
        tail == '>')
      v->type[i] = TT_BYTE;
  }
}

static int read_vocab(vocab_t *v, const tok_ctx_t *c, const json_t *tj, int n_vocab, mk_error_t *err) {
  const json_t *model = json_object_get(tj, "model");
  const char *mt = json_string_value(json_object_get(model, "type"));
  if (!mt || strcmp(mt, "BPE") != 0)
    return mk_fail(err, "%s: tokenizer model '%s' is not supported (BPE)", c->path, mt ? mt : "(none)");
  const json_t *vo = json_object_get(model, "vocab"), *added = json_object_get(tj, "added_tokens");
  if (!json_is_object(vo)) return mk_fail(err, "%s: model.vocab is not an object", c->path);
  int n = n_vocab;
  const char *k;
  json_t *val;
  size_t i;
  json_object_foreach((json_t *)vo, k, val) {
    if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= (1 << 24))
      return mk_fail(err, "%s: model.vocab['%.40s'] is not an id", c->path, k);
    if (json_integer_value(val) >= n) n = (int)json_integer_value(val) + 1;
  }
  json_array_foreach((json_t *)added, i, val) {
    json_int_t id = json_integer_value(json_object_get(val, "id"));
    if (id >= n && id < (1 << 24)) n = (int)id + 1;
  }
  v->n = n;
  v->text = calloc((size_t)n, sizeof *v->text);
  v->type = calloc((size_t)n, sizeof *v->type);
  v->score = calloc((size_t)n, sizeof *v->score);
  if (!v->text || !v->type || !v->score) return mk_fail(err, "out of memory");
  json_object_foreach((json_t *)vo, k, val) if (set_token(v, c->path, (int)json_integer_value(val), k, TT_NORMAL, err))
      return -1;
  json_array_foreach((json_t *)added, i, val) {
    const char *content = json_string_value(json_object_get(val, "content"));
    const json_t *id = json_object_get(val, "id");
    if (!content || !json_is_integer(id)) return mk_fail(err, "%s: added_tokens[%zu] needs id and content", c->path, i);
    int ty = json_is_true(json_object_get(val, "special")) ? TT_CONTROL : TT_USER;
    if (set_token(v, c->path, (int)json_integer_value(id), content, ty, err)) return -1;
  }
  for (int j = 0; j < n; j++) {
    if (v->text[j]) continue;
    char pad[32];
    snprintf(pad, sizeof pad, "[PAD%d]", j); /* llama.cpp's filler for ids the tokenizer lacks */
    if (!(v->text[j] = strdup(pad))) return mk_fail(err, "out of memory");
    v->type[j] = TT_UNUSED;
  }
  if (read_merges(v, c, json_object_get(model, "merges"), err) != 0) return -1;
  if (c->spm) spm_scores(v, vo);
  return 0;
}

/* Id of a special-token field of tokenizer_config.json (a string or {"content": ...}), or -1. */
static int token_field_id(const vocab_t *v, const json_t *tc, const char *key) {
  const json_t *f = json_object_get(tc, key);
  const char *s = json_is_string(f) ? json_string_value(f) : json_string_value(json_object_get(f, "content"));
  if (!s) return -1;
  for (int i = 0; i < v->n; i++)
    if (strcmp(v->text[i], s) == 0) return i;
  return -1;
}

/* eos_token_id of config.json / generation_config.json: an int or a list; appends to ids. */
static int eos_ids(const json_t *j, const char *path, int n, int32_t *ids, int *n_ids, mk_error_t *err) {
  const json_t *e = json_object_get(j, "eos_token_id");
  if (!e || json_is_null(e)) return 0;
  size_t cnt = json_is_array(e) ? json_array_size(e) : 1;
  for (size_t i = 0; i < cnt; i++) {
    const json_t *x = json_is_array(e) ? json_array_get(e, i) : e;
    if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= n)
      return mk_fail(err, "%s: eos_token_id must be ids in 0..%d", path, n - 1);
    bool dup = false;
    for (int k = 0; k < *n_ids; k++) dup |= ids[k] == (int32_t)json_integer_value(x);
    if (!dup && *n_ids < 16) ids[(*n_ids)++] = (int32_t)json_integer_value(x);
  }
  return 0;
}

/* BOS/EOS, add_bos, end-of-generation ids and the chat template. */
static int write_specials(const tok_ctx_t *c, const vocab_t *v, const json_t *tj, const json_t *tc,
                          const json_t *config, const json_t *gen, mk_gb_t *b, mk_error_t *err) {
  int bos = token_field_id(v, tc, "bos_token");
  const json_t *bj = json_object_get(gen ? gen : config, "bos_token_id");
  if (!json_is_integer(bj)) bj = json_object_get(config, "bos_token_id");
  if (json_is_integer(bj) && json_integer_value(bj) >= 0 && json_integer_value(bj) < v->n) bos = (int)json_integer_value(bj);
  int32_t eog[16];
  int n_eog = 0;
  if (eos_ids(gen, "generation_config.json", v->n, eog, &n_eog, err) || eos_ids(config, "config.json", v->n, eog, &n_eog, err))
    return -1;
  int eos_tc = token_field_id(v, tc, "eos_token");
  if (n_eog == 0 && eos_tc >= 0) eog[n_eog++] = eos_tc;
  if (bos >= 0) mk_gb_u32(b, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
  if (n_eog > 0) mk_gb_u32(b, "tokenizer.ggml.eos_token_id", (uint32_t)(eos_tc >= 0 ? eos_tc : eog[0]));
  if (n_eog > 0) mk_gb_arr_i32(b, "morphkv.tokenizer.eog_ids", eog, (uint64_t)n_eog);
  const json_t *ab = json_object_get(tc, "add_bos_token");
  bool add_bos = c->spm;
  if (json_is_boolean(ab)) {
    add_bos = json_is_true(ab);
  } else { /* TemplateProcessing whose single template starts with a special token (Llama 3) */
    const json_t *pp = json_object_get(tj, "post_processor");
    const char *pt = json_string_value(json_object_get(pp, "type"));
    if (pt && strcmp(pt, "Sequence") == 0) pp = json_array_get(json_object_get(pp, "processors"), 1);
    const json_t *first = json_array_get(json_object_get(pp, "single"), 0);
    if (json_object_get(first, "SpecialToken")) add_bos = true;
  }
  mk_gb_bool(b, "tokenizer.ggml.add_bos_token", add_bos && bos >= 0);
  if (c->spm) mk_gb_bool(b, "tokenizer.ggml.add_space_prefix", c->add_prefix);
  const json_t *ct = json_object_get(tc, "chat_template");
  if (json_is_array(ct)) { /* [{"name": "default", "template": ...}, ...] */
    size_t i;
    const json_t *e, *pick = json_array_get(ct, 0);
    json_array_foreach(ct, i, e) if (json_is_string(json_object_get(e, "name")) &&
                                     !strcmp(json_string_value(json_object_get(e, "name")), "default")) pick = e;
    ct = json_object_get(pick, "template");
  }
  if (json_is_string(ct)) mk_gb_str(b, "tokenizer.chat_template", json_string_value(ct));
  return 0;
}

int mk_hf_tokenizer_meta(const char *dir, const json_t *config, int n_vocab, mk_gb_t *b, mk_error_t *err) {
  tok_ctx_t c = {.dir = dir};
  snprintf(c.path, sizeof c.path, "%s/tokenizer.json", dir);
  json_t *tj = NULL, *tc = NULL, *gen = NULL;
  vocab_t v = {0};
  int rc = -1;
  if (load_opt(dir, "tokenizer.json", &tj, err) != 0) goto done;
  if (!tj) {
    mk_fail(err, "%s: missing (a Hugging Face model directory needs it)", c.path);
    goto done;
  }
  if (load_opt(dir, "tokenizer_config.json", &tc, err) != 0 || load_opt(dir, "generation_config.json", &gen, err) != 0 ||
      read_pre(&c, tj, err) != 0 || read_vocab(&v, &c, tj, n_vocab, err) != 0)
    goto done;
  if (v.n > n_vocab) {
    mk_fail(err, "%s: %d tokens, but config.json has vocab_size %d", c.path, v.n, n_vocab);
    goto done;
  }
  mk_gb_str(b, "tokenizer.ggml.model", c.spm ? "llama" : "gpt2");
  mk_gb_str(b, "tokenizer.ggml.pre", pre_name(&c));
  if (!c.spm) mk_gb_arr_str(b, "morphkv.tokenizer.pre_regex", c.re, (uint64_t)c.n_re);
  mk_gb_bool(b, "morphkv.tokenizer.ignore_merges",
             json_is_true(json_object_get(json_object_get(tj, "model"), "ignore_merges")));
  mk_gb_arr_str(b, "tokenizer.ggml.tokens", (const char *const *)v.text, (uint64_t)v.n);
  mk_gb_arr_i32(b, "tokenizer.ggml.token_type", v.type, (uint64_t)v.n);
  if (c.spm) mk_gb_arr_f32(b, "tokenizer.ggml.scores", v.score, (uint64_t)v.n);
  mk_gb_arr_str(b, "tokenizer.ggml.merges", v.merges, v.n_merges);
  rc = write_specials(&c, &v, tj, tc, config, gen, b, err);
done:
  vocab_free(&v);
  json_decref(tj);
  json_decref(tc);
  json_decref(gen);
  return rc;
}
