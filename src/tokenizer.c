/* Tokenizer built from GGUF metadata (a Hugging Face tokenizer.json arrives translated into the
 * same keys by src/hf_tokenizer.c, plus morphkv.tokenizer.pre_regex: the file's own regexes).
 *
 * Design note (invariants this file owns):
 *  - Encoding is a pipeline: (1) special-token partition: the text is cut into raw fragments and
 *    special-token fragments, trying special tokens longest text first (control and unknown
 *    tokens only with parse_special, user-defined tokens always, as llama.cpp and HF tokenizers
 *    do); (2) per raw fragment, the model's encoder: BPE or SPM.
 *  - BPE ("gpt2"): the pre-tokenizer is a list of PCRE2 regexes applied in sequence; each regex
 *    splits every current segment, matching the segment in isolation (lookaheads see the segment
 *    end), and the gaps between matches are kept as segments too. Each final word is merged with
 *    a binary heap of (merge rank, left position) over a linked list of symbols, one symbol per
 *    input byte initially (byte-level BPE: byte b is the token whose text is the GPT-2 code point
 *    for b). A heap entry is valid only if both symbols still hold the ids it was built from, so
 *    stale entries are skipped: O(n log n) per word.
 *  - SPM ("llama"): spaces become U+2581, an optional space prefix is added after BOS/specials,
 *    symbols are UTF-8 characters, the heap picks the pair whose concatenation is the vocab token
 *    with the highest score (ties: leftmost); leftover symbols that are not tokens become
 *    <0xXX> byte tokens (or unk).
 *  - Decoding: every token's bytes (its "piece") are computed once at load; the stream never
 *    emits a partial UTF-8 character and always emits valid UTF-8 (an invalid maximal subpart
 *    becomes one U+FFFD).
 *  - The tokenizer is immutable after load: encode/piece/stream may run from several threads
 *    (all scratch memory is per call). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem, strndup (the build also defines it) */
#endif
#define PCRE2_CODE_UNIT_WIDTH 8
#include "src/tokenizer.h"

#include <ctype.h>
#include <pcre2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
  TT_NORMAL = 1,
  TT_UNKNOWN = 2,
  TT_CONTROL = 3,
  TT_USER = 4,
  TT_UNUSED = 5,
  TT_BYTE = 6,
};

#define MK_TOK_MAX_RE 4

struct mk_tokenizer {
  mk_tok_kind_t kind;
  char *pre_name; /* tokenizer.ggml.pre as stored, or "default" */
  bool pre_known; /* pre_name selected a known regex set */
  int n_vocab;

  /* token texts: text[i] is NUL-terminated, text_len[i] bytes, all inside text_arena */
  char *text_arena;
  char **text;
  uint32_t *text_len;
  uint8_t *type; /* TT_* per token */
  float *score;  /* per token (0 when the file has none) */
  uint8_t *eog;  /* 1 per end-of-generation token */

  /* decoded bytes per token */
  char *piece_arena;
  uint32_t *piece_off, *piece_len;

  /* text -> id: open addressing, slot holds id+1 (0 = empty) */
  int32_t *vocab_slots;
  uint32_t vocab_mask;

  /* (left id, right id) -> (rank, result id), open addressing; rank -1 = empty slot */
  uint64_t *merge_key;
  int32_t *merge_rank, *merge_res;
  uint32_t merge_mask;

  int32_t byte_tok[256]; /* BPE: token of the byte's GPT-2 char; SPM: <0xXX> token; -1 none */
  uint32_t byte_cp[256]; /* GPT-2 byte -> code point */
  int16_t cp_byte[324];  /* inverse (code points < 324), -1 elsewhere */

  int32_t *special; /* control/unknown/user-defined ids, longest text first */
  int n_special;

  int32_t bos, eos, eot, eom, unk;
  bool add_bos, add_space_prefix, ignore_merges;

  pcre2_code *re[MK_TOK_MAX_RE];
  int n_re;
};

/* ---------------------------------------------------------------------------------------------
 * Small helpers */

static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ULL;
  }
  return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

static uint32_t pow2_at_least(uint64_t n) {
  uint32_t c = 16;
  while (c < n) c <<= 1;
  return c;
}

static int utf8_encode(uint32_t cp, char *out) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | (cp >> 18));
  out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Length of the UTF-8 character starting with lead byte c (1 for invalid leads). */
static size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) return 2;
  if ((c & 0xF0) == 0xE0) return 3;
  if ((c & 0xF8) == 0xF0) return 4;
  return 1;
}

/* Examines s[0..n): returns the length of a complete valid UTF-8 character at s (> 0), 0 if the
 * bytes are a valid but incomplete prefix, or -k if s starts an invalid sequence whose maximal
 * valid subpart has k >= 1 bytes (to be replaced by one U+FFFD). */
static int utf8_check(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  if (c < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (size_t i = 1; i < need; i++) {
    if (i >= n) return 0;
    unsigned char b = s[i];
    unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (b < l || b > h) return -(int)i;
  }
  return (int)need;
}

/* Growable int32 vector. */
typedef struct ivec {
  int32_t *v;
  size_t n, cap;
} ivec_t;

static int ivec_push(ivec_t *a, int32_t x) {
  if (a->n == a->cap) {
    size_t nc = a->cap ? a->cap * 2 : 64;
    int32_t *nv = realloc(a->v, nc * sizeof *nv);
    if (!nv) return -1;
    a->v = nv;
    a->cap = nc;
  }
  a->v[a->n++] = x;
  return 0;
}

/* Segment of the input: a byte range, or a token (tok >= 0). */
typedef struct seg {
  size_t off, len;
  int32_t tok;
} seg_t;

typedef struct segvec {
  seg_t *v;
  size_t n, cap;
} segvec_t;

static int segvec_push(segvec_t *a, size_t off, size_t len, int32_t tok) {
  if (a->n == a->cap) {
    size_t nc = a->cap ? a->cap * 2 : 32;
    seg_t *nv = realloc(a->v, nc * sizeof *nv);
    if (!nv) return -1;
    a->v = nv;
    a->cap = nc;
  }
  a->v[a->n++] = (seg_t){off, len, tok};
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Lookups */

static int32_t vocab_lookup(const mk_tokenizer_t *t, const char *s, size_t n) {
  uint32_t i = (uint32_t)hash_bytes(s, n) & t->vocab_mask;
  for (;;) {
    int32_t slot = t->vocab_slots[i];
    if (slot == 0) return -1;
    int32_t id = slot - 1;
    if (t->text_len[id] == n && memcmp(t->text[id], s, n) == 0) return id;
    i = (i + 1) & t->vocab_mask;
  }
}

static bool merge_lookup(const mk_tokenizer_t *t, int32_t a, int32_t b, int32_t *rank,
                         int32_t *res) {
  if (!t->merge_key || a < 0 || b < 0) return false;
  uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
  uint32_t i = (uint32_t)hash_u64(key) & t->merge_mask;
  for (;;) {
    if (t->merge_rank[i] < 0) return false;
    if (t->merge_key[i] == key) {
      *rank = t->merge_rank[i];
      *res = t->merge_res[i];
      return true;
    }
    i = (i + 1) & t->merge_mask;
  }
}

/* ---------------------------------------------------------------------------------------------
 * Pre-tokenizer regexes (facts from llama.cpp's llama-vocab.cpp table; see mk_tok_load) */

#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define RE_LLAMA3                                                                            \
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" \
  "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                             \
  "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" \
  "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

typedef struct pre_def {
  const char *names[10];
  const char *re[MK_TOK_MAX_RE];
  bool ignore_merges;
  bool add_bos;
} pre_def_t;

static const pre_def_t PRE_DEFS[] = {
    {{"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"},
     {"\\p{N}", RE_GPT2},
     false,
     false},
    {{"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"}, {RE_LLAMA3}, true, true},
    {{"dbrx", "smaug-bpe"}, {RE_LLAMA3}, false, false},
    {{"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"}, {RE_QWEN2}, false, false},
    {{"gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais", "jina-es", "jina-de", "gigachat"},
     {RE_GPT2},
     false,
     false},
};

/* llama.cpp's fallback set for a missing or unknown pre-tokenizer name. */
static const pre_def_t PRE_DEFAULT = {
    {"default"},
    {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"},
    false,
    false};

/* ---------------------------------------------------------------------------------------------
 * Loading */

/* Finds an array-valued key; NULL (no error) if absent, -1 path reported through *bad. */
static const mk_gguf_value_t *find_arr(const mk_gguf_t *g, const char *key) {
  const mk_gguf_kv_t *kv = mk_gguf_find(g, key);
  if (!kv || kv->value.type != MK_GGUF_ARRAY) return NULL;
  return &kv->value;
}

static int get_id(const mk_gguf_t *g, const char *key, int n_vocab, int32_t *out, mk_error_t *err) {
  int64_t v;
  int rc = mk_gguf_get_i64(g, key, &v, err);
  if (rc < 0) return -1;
  if (rc == MK_GGUF_MISSING) return 0;
  if (v < 0 || v >= n_vocab) /* a BOS/EOS past the vocabulary would run with a wrong id */
    return mk_fail(err, "tokenizer: %s is %lld, outside the vocabulary 0..%d", key, (long long)v,
                   n_vocab - 1);
  *out = (int32_t)v;
  return 0;
}

static void build_byte_map(mk_tokenizer_t *t) {
  /* GPT-2: printable Latin-1 bytes map to themselves, the other 68 bytes to 256, 257, ... in
   * byte order. */
  int n = 0;
  for (int b = 0; b < 256; b++) {
    bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    t->byte_cp[b] = keep ? (uint32_t)b : (uint32_t)(256 + n++);
  }
  for (int i = 0; i < 324; i++) t->cp_byte[i] = -1;
  for (int b = 0; b < 256; b++) t->cp_byte[t->byte_cp[b]] = (int16_t)b;
}

static int compile_regexes(mk_tokenizer_t *t, const pre_def_t *def, mk_error_t *err) {
  for (int i = 0; i < MK_TOK_MAX_RE && def->re[i]; i++) {
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)def->re[i], PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ec, &eo, NULL);
    if (!re) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(ec, msg, sizeof msg);
      return mk_fail(err, "tokenizer: pre-tokenizer '%s': regex %d does not compile at %zu: %s",
                     t->pre_name, i, (size_t)eo, (const char *)msg);
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional speed-up */
    t->re[t->n_re++] = re;
  }
  return 0;
}

/* Control, user-defined and unknown tokens: written literally, matched before pre-tokenizing. */
static bool is_special_type(uint8_t ty) { return ty == TT_CONTROL || ty == TT_USER || ty == TT_UNKNOWN; }

/* Decoded bytes of token id into out (at least 4 * text_len bytes); returns the length. */
static size_t decode_token(const mk_tokenizer_t *t, int32_t id, char *out) {
  const char *s = t->text[id];
  size_t n = t->text_len[id], o = 0;
  uint8_t ty = t->type[id];
  if (is_special_type(ty)) {
    memcpy(out, s, n);
    return n;
  }
  if (t->kind == MK_TOK_SPM) {
    if (ty == TT_BYTE && n == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>') {
      char hex[3] = {s[3], s[4], 0};
      out[0] = (char)strtol(hex, NULL, 16);
      return 1;
    }
    for (size_t i = 0; i < n;) {
      if (i + 3 <= n && (unsigned char)s[i] == 0xE2 && (unsigned char)s[i + 1] == 0x96 &&
          (unsigned char)s[i + 2] == 0x81) {
        out[o++] = ' ';
        i += 3;
      } else {
        out[o++] = s[i++];
      }
    }
    return o;
  }
  /* byte-level BPE: each code point of the text is one byte, if it is in the GPT-2 map */
  for (size_t i = 0; i < n;) {
    const unsigned char *u = (const unsigned char *)s + i;
    int k = utf8_check(u, n - i);
    if (k <= 0) { /* malformed token text: copy the byte */
      out[o++] = s[i++];
      continue;
    }
    uint32_t cp;
    if (k == 1)
      cp = u[0];
    else if (k == 2)
      cp = ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
    else if (k == 3)
      cp = ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
    else
      cp = ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) |
           ((uint32_t)(u[2] & 0x3F) << 6) | (u[3] & 0x3F);
    if (cp < 324 && t->cp_byte[cp] >= 0) {
      out[o++] = (char)t->cp_byte[cp];
    } else {
      memcpy(out + o, s + i, (size_t)k);
      o += (size_t)k;
    }
    i += (size_t)k;
  }
  return o;
}

static bool is_eog_text(const char *s) {
  static const char *const names[] = {"<|im_end|>",      "<|eot_id|>", "<|endoftext|>",
                                      "<|end_of_text|>", "</s>",       "<end_of_turn>",
                                      "<|end|>",         "<|eom_id|>", "<EOT>"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(s, names[i]) == 0) return true;
  return false;
}

static int cmp_special(const void *a, const void *b, void *ctx) {
  const mk_tokenizer_t *t = ctx;
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  if (t->text_len[x] != t->text_len[y]) return t->text_len[x] > t->text_len[y] ? -1 : 1;
  return x < y ? -1 : x > y;
}

/* Stable merge sort (qsort has no context argument). */
static void sort_special(mk_tokenizer_t *t, int32_t *a, int32_t *tmp, int n) {
  if (n < 2) return;
  int h = n / 2;
  sort_special(t, a, tmp, h);
  sort_special(t, a + h, tmp, n - h);
  int i = 0, j = h, k = 0;
  while (i < h && j < n) tmp[k++] = cmp_special(&a[j], &a[i], t) < 0 ? a[j++] : a[i++];
  while (i < h) tmp[k++] = a[i++];
  while (j < n) tmp[k++] = a[j++];
  memcpy(a, tmp, (size_t)n * sizeof *a);
}

/* ---- loading, in phases: model kind, vocabulary, byte tokens, merges, pre-tokenizer, special
 * ids, pieces. Each fills its part of t or fails with a message naming the key. */

static int tok_load_kind(mk_tokenizer_t *t, const mk_gguf_t *g, mk_error_t *err) {
  char *model = NULL;
  int rc = 0;
  if (mk_gguf_get_str(g, "tokenizer.ggml.model", &model, err) != MK_GGUF_OK) {
    if (!model) mk_fail(err, "tokenizer: key tokenizer.ggml.model is missing");
    rc = -1;
  } else if (strcmp(model, "gpt2") == 0) {
    t->kind = MK_TOK_BPE;
  } else if (strcmp(model, "llama") == 0) {
    t->kind = MK_TOK_SPM;
  } else {
    rc = mk_fail(err, "tokenizer: tokenizer.ggml.model '%s' is not supported (gpt2, llama)", model);
  }
  free(model);
  return rc;
}

/* tokenizer.ggml.tokens: the texts, their hash index (first occurrence wins for duplicates). */
static int tok_load_texts(mk_tokenizer_t *t, const mk_gguf_t *g, mk_error_t *err) {
  const mk_gguf_value_t *toks = find_arr(g, "tokenizer.ggml.tokens");
  if (!toks || toks->v.arr.elem_type != MK_GGUF_STRING)
    return mk_fail(err, "tokenizer: key tokenizer.ggml.tokens is missing or not a string array");
  if (toks->v.arr.n == 0 || toks->v.arr.n > (1u << 30))
    return mk_fail(err, "tokenizer: tokenizer.ggml.tokens has %llu entries",
                   (unsigned long long)toks->v.arr.n);
  int n = (int)toks->v.arr.n;
  t->n_vocab = n;
  size_t total = 0;
  for (int i = 0; i < n; i++) total += toks->v.arr.strs[i].len + 1;
  t->text_arena = malloc(total);
  t->text = malloc((size_t)n * sizeof *t->text);
  t->text_len = malloc((size_t)n * sizeof *t->text_len);
  t->type = malloc((size_t)n);
  t->score = calloc((size_t)n, sizeof *t->score);
  t->eog = calloc((size_t)n, 1);
  t->vocab_mask = pow2_at_least((uint64_t)n * 2) - 1;
  t->vocab_slots = calloc((size_t)t->vocab_mask + 1, sizeof *t->vocab_slots);
  if (!t->text_arena || !t->text || !t->text_len || !t->type || !t->score || !t->eog ||
      !t->vocab_slots)
    return mk_fail(err, "tokenizer: out of memory for %d tokens", n);
  size_t pos = 0;
  for (int i = 0; i < n; i++) {
    const mk_gguf_str_t *s = &toks->v.arr.strs[i];
    if (s->len > UINT32_MAX / 8)
      return mk_fail(err, "tokenizer: token %d is %llu bytes long", i, (unsigned long long)s->len);
    t->text[i] = t->text_arena + pos;
    memcpy(t->text[i], s->ptr, s->len);
    t->text[i][s->len] = 0;
    t->text_len[i] = (uint32_t)s->len;
    pos += s->len + 1;
    t->type[i] = TT_NORMAL;
    if (vocab_lookup(t, t->text[i], s->len) < 0) {
      uint32_t h = (uint32_t)hash_bytes(t->text[i], s->len) & t->vocab_mask;
      while (t->vocab_slots[h]) h = (h + 1) & t->vocab_mask;
      t->vocab_slots[h] = i + 1;
    }
  }
  return 0;
}

/* tokenizer.ggml.token_type and tokenizer.ggml.scores (required for SPM). */
static int tok_load_types_scores(mk_tokenizer_t *t, const mk_gguf_t *g, mk_error_t *err) {
  const int n = t->n_vocab;
  const mk_gguf_value_t *types = find_arr(g, "tokenizer.ggml.token_type");
  if (types) {
    if (!mk_gguf_vtype_is_int(types->v.arr.elem_type) || types->v.arr.n != (uint64_t)n)
      return mk_fail(err, "tokenizer: tokenizer.ggml.token_type must be %d integers (got %llu of %s)", n,
                     (unsigned long long)types->v.arr.n, mk_gguf_vtype_name(types->v.arr.elem_type));
    for (int i = 0; i < n; i++) {
      int64_t ty = mk_gguf_arr_int(types, (uint64_t)i);
      t->type[i] = (ty >= TT_NORMAL && ty <= TT_BYTE) ? (uint8_t)ty : TT_NORMAL;
    }
  }
  const mk_gguf_value_t *scores = find_arr(g, "tokenizer.ggml.scores");
  if (scores) {
    if (scores->v.arr.elem_type != MK_GGUF_FLOAT32 || scores->v.arr.n != (uint64_t)n)
      return mk_fail(err, "tokenizer: tokenizer.ggml.scores must be %d float32 values", n);
    memcpy(t->score, scores->v.arr.raw, (size_t)n * sizeof(float));
  } else if (t->kind == MK_TOK_SPM) {
    return mk_fail(err, "tokenizer: SPM vocabulary without tokenizer.ggml.scores");
  }
  return 0;
}

/* The token of each byte: its GPT-2 code point's text (BPE), or <0xXX> / the ASCII char (SPM). */
static void tok_build_byte_tokens(mk_tokenizer_t *t) {
  for (int b = 0; b < 256; b++) t->byte_tok[b] = -1;
  build_byte_map(t);
  for (int b = 0; b < 256; b++) {
    if (t->kind == MK_TOK_BPE) {
      char u[4];
      int k = utf8_encode(t->byte_cp[b], u);
      t->byte_tok[b] = vocab_lookup(t, u, (size_t)k);
      continue;
    }
    char name[8];
    snprintf(name, sizeof name, "<0x%02X>", b);
    t->byte_tok[b] = vocab_lookup(t, name, 6);
    if (t->byte_tok[b] < 0 && b < 0x80) {
      char c = (char)b;
      t->byte_tok[b] = vocab_lookup(t, &c, 1);
    }
  }
}

/* One merge "left right" into the table (split at the first space after position 0: a part never
 * contains a plain space, spaces are U+0120 in byte-level text). buf holds the joined text. */
static void tok_add_merge(mk_tokenizer_t *t, const mk_gguf_str_t *s, int32_t rank, char *buf) {
  const char *sp = s->len > 1 ? memchr(s->ptr + 1, ' ', s->len - 1) : NULL;
  if (!sp) return;
  size_t la = (size_t)(sp - s->ptr), lb = s->len - la - 1;
  int32_t a = vocab_lookup(t, s->ptr, la), bb = vocab_lookup(t, sp + 1, lb);
  memcpy(buf, s->ptr, la);
  memcpy(buf + la, sp + 1, lb);
  int32_t r = vocab_lookup(t, buf, la + lb);
  if (a < 0 || bb < 0 || r < 0) return; /* unusable merge: parts or result not tokens */
  uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)bb;
  uint32_t h = (uint32_t)hash_u64(key) & t->merge_mask;
  while (t->merge_rank[h] >= 0 && t->merge_key[h] != key) h = (h + 1) & t->merge_mask;
  if (t->merge_rank[h] >= 0) return; /* duplicate: the first (lowest rank) wins */
  t->merge_key[h] = key;
  t->merge_rank[h] = rank;
  t->merge_res[h] = r;
}

/* tokenizer.ggml.merges (BPE only). */
static int tok_load_merges(mk_tokenizer_t *t, const mk_gguf_t *g, mk_error_t *err) {
  if (t->kind != MK_TOK_BPE) return 0;
  const mk_gguf_value_t *merges = find_arr(g, "tokenizer.ggml.merges");
  if (!merges || merges->v.arr.elem_type != MK_GGUF_STRING)
    return mk_fail(err, "tokenizer: BPE vocabulary without tokenizer.ggml.merges (string array)");
  uint64_t nm = merges->v.arr.n;
  if (nm > (1u << 30))
    return mk_fail(err, "tokenizer: tokenizer.ggml.merges has %llu entries", (unsigned long long)nm);
  t->merge_mask = pow2_at_least(nm * 2 + 1) - 1;
  t->merge_key = malloc(((size_t)t->merge_mask + 1) * sizeof *t->merge_key);
  t->merge_rank = malloc(((size_t)t->merge_mask + 1) * sizeof *t->merge_rank);
  t->merge_res = malloc(((size_t)t->merge_mask + 1) * sizeof *t->merge_res);
  size_t maxlen = 0;
  for (uint64_t i = 0; i < nm; i++)
    if (merges->v.arr.strs[i].len > maxlen) maxlen = merges->v.arr.strs[i].len;
  char *buf = malloc(maxlen + 1);
  if (!t->merge_key || !t->merge_rank || !t->merge_res || !buf) {
    free(buf);
    return mk_fail(err, "tokenizer: out of memory for %llu merges", (unsigned long long)nm);
  }
  for (uint32_t i = 0; i <= t->merge_mask; i++) t->merge_rank[i] = -1;
  for (uint64_t i = 0; i < nm; i++) tok_add_merge(t, &merges->v.arr.strs[i], (int32_t)i, buf);
  free(buf);
  return 0;
}

/* tokenizer.ggml.pre: the regex set (BPE), llama.cpp's default for an unknown name. *def is the
 * set chosen (its add_bos is the default for tokenizer.ggml.add_bos_token). */
static int tok_load_pre(mk_tokenizer_t *t, const mk_gguf_t *g, const pre_def_t **def_out,
                        mk_error_t *err) {
  char *pre = NULL;
  if (mk_gguf_get_str(g, "tokenizer.ggml.pre", &pre, err) < 0) return -1;
  t->pre_name = strdup(pre ? pre : "default");
  free(pre);
  if (!t->pre_name) return mk_fail(err, "tokenizer: out of memory");
  const pre_def_t *def = &PRE_DEFAULT;
  for (size_t d = 0; d < sizeof PRE_DEFS / sizeof PRE_DEFS[0] && def == &PRE_DEFAULT; d++)
    for (int k = 0; k < 10 && PRE_DEFS[d].names[k]; k++)
      if (strcmp(PRE_DEFS[d].names[k], t->pre_name) == 0) def = &PRE_DEFS[d];
  t->pre_known = def != &PRE_DEFAULT || strcmp(t->pre_name, "default") == 0;
  *def_out = def;
  if (t->kind != MK_TOK_BPE) return 0;
  t->ignore_merges = def->ignore_merges;
  if (mk_gguf_get_bool(g, "morphkv.tokenizer.ignore_merges", &t->ignore_merges, err) < 0) return -1;
  /* Hugging Face tokenizer.json (src/hf_tokenizer.c): the file's own regexes, verbatim */
  const mk_gguf_value_t *custom = find_arr(g, "morphkv.tokenizer.pre_regex");
  if (!custom) return compile_regexes(t, def, err) < 0 ? -1 : 0;
  if (custom->v.arr.elem_type != MK_GGUF_STRING || custom->v.arr.n > MK_TOK_MAX_RE)
    return mk_fail(err, "tokenizer: morphkv.tokenizer.pre_regex must be at most %d strings", MK_TOK_MAX_RE);
  pre_def_t own = {{"hf"}, {NULL}, false, false};
  char *re[MK_TOK_MAX_RE] = {NULL};
  int rc = 0;
  for (uint64_t i = 0; i < custom->v.arr.n && rc == 0; i++)
    if (!(own.re[i] = re[i] = strndup(custom->v.arr.strs[i].ptr, custom->v.arr.strs[i].len)))
      rc = mk_fail(err, "tokenizer: out of memory");
  t->pre_known = true;
  if (rc == 0 && compile_regexes(t, &own, err) < 0) rc = -1;
  for (int i = 0; i < MK_TOK_MAX_RE; i++) free(re[i]);
  return rc;
}

/* Special ids, add_bos / add_space_prefix, the end-of-generation set, and the special tokens
 * sorted longest first (matched in the text before pre-tokenizing). */
static int tok_load_specials(mk_tokenizer_t *t, const mk_gguf_t *g, const pre_def_t *def,
                             mk_error_t *err) {
  const int n = t->n_vocab;
  t->bos = t->eos = t->eot = t->eom = t->unk = -1;
  if (get_id(g, "tokenizer.ggml.bos_token_id", n, &t->bos, err) < 0 ||
      get_id(g, "tokenizer.ggml.eos_token_id", n, &t->eos, err) < 0 ||
      get_id(g, "tokenizer.ggml.eot_token_id", n, &t->eot, err) < 0 ||
      get_id(g, "tokenizer.ggml.eom_token_id", n, &t->eom, err) < 0 ||
      get_id(g, "tokenizer.ggml.unknown_token_id", n, &t->unk, err) < 0)
    return -1;
  t->add_bos = t->kind == MK_TOK_SPM ? true : def->add_bos;
  t->add_space_prefix = t->kind == MK_TOK_SPM;
  if (mk_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err) < 0) return -1;
  if (mk_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err) < 0) return -1;

  if (t->eos >= 0) t->eog[t->eos] = 1;
  if (t->eot >= 0) t->eog[t->eot] = 1;
  const mk_gguf_value_t *eog = find_arr(g, "morphkv.tokenizer.eog_ids"); /* HF eos_token_id lists */
  for (uint64_t i = 0; eog && mk_gguf_vtype_is_int(eog->v.arr.elem_type) && i < eog->v.arr.n; i++) {
    int64_t id = mk_gguf_arr_int(eog, i);
    if (id < 0 || id >= n) return mk_fail(err, "tokenizer: morphkv.tokenizer.eog_ids[%llu] = %lld is outside the "
                                          "vocabulary", (unsigned long long)i, (long long)id);
    t->eog[id] = 1;
  }
  if (t->eom >= 0) t->eog[t->eom] = 1;
  int n_special = 0;
  for (int i = 0; i < n; i++) {
    if (is_eog_text(t->text[i])) t->eog[i] = 1;
    if (is_special_type(t->type[i]) && t->text_len[i] > 0) n_special++;
  }
  t->special = malloc((size_t)(n_special ? n_special : 1) * 2 * sizeof *t->special);
  if (!t->special) return mk_fail(err, "tokenizer: out of memory");
  for (int i = 0; i < n; i++)
    if (is_special_type(t->type[i]) && t->text_len[i] > 0) t->special[t->n_special++] = i;
  sort_special(t, t->special, t->special + n_special, t->n_special);
  return 0;
}

/* Every token's decoded bytes, once (a piece is never longer than its text: every decoding step
 * shrinks or keeps the length). */
static int tok_build_pieces(mk_tokenizer_t *t, mk_error_t *err) {
  const int n = t->n_vocab;
  size_t ptotal = 0;
  for (int i = 0; i < n; i++) ptotal += t->text_len[i];
  t->piece_arena = malloc(ptotal + 1);
  t->piece_off = malloc((size_t)n * sizeof *t->piece_off);
  t->piece_len = malloc((size_t)n * sizeof *t->piece_len);
  if (!t->piece_arena || !t->piece_off || !t->piece_len) return mk_fail(err, "tokenizer: out of memory");
  size_t ppos = 0;
  for (int i = 0; i < n; i++) {
    t->piece_off[i] = (uint32_t)ppos;
    t->piece_len[i] = (uint32_t)decode_token(t, i, t->piece_arena + ppos);
    ppos += t->piece_len[i];
  }
  return 0;
}

int mk_tok_load(const mk_gguf_t *g, mk_tokenizer_t **out, mk_error_t *err) {
  *out = NULL;
  mk_tokenizer_t *t = calloc(1, sizeof *t);
  if (!t) return mk_fail(err, "tokenizer: out of memory");
  const pre_def_t *def = NULL;
  if (tok_load_kind(t, g, err) != 0 || tok_load_texts(t, g, err) != 0 ||
      tok_load_types_scores(t, g, err) != 0) {
    mk_tok_free(t);
    return -1;
  }
  tok_build_byte_tokens(t);
  if (tok_load_merges(t, g, err) != 0 || tok_load_pre(t, g, &def, err) != 0 ||
      tok_load_specials(t, g, def, err) != 0 || tok_build_pieces(t, err) != 0) {
    mk_tok_free(t);
    return -1;
  }
  *out = t;
  return 0;
}

void mk_tok_free(mk_tokenizer_t *t) {
  if (!t) return;
  for (int i = 0; i < t->n_re; i++) pcre2_code_free(t->re[i]);
  free(t->pre_name);
  free(t->text_arena);
  free(t->text);
  free(t->text_len);
  free(t->type);
  free(t->score);
  free(t->eog);
  free(t->piece_arena);
  free(t->piece_off);
  free(t->piece_len);
  free(t->vocab_slots);
  free(t->merge_key);
  free(t->merge_rank);
  free(t->merge_res);
  free(t->special);
  free(t);
}

/* ---------------------------------------------------------------------------------------------
 * Accessors */

mk_tok_kind_t mk_tok_kind(const mk_tokenizer_t *t) { return t->kind; }
const char *mk_tok_pre_name(const mk_tokenizer_t *t) { return t->pre_name; }
bool mk_tok_pre_known(const mk_tokenizer_t *t) { return t->pre_known; }
int mk_tok_n_vocab(const mk_tokenizer_t *t) { return t->n_vocab; }
int32_t mk_tok_bos(const mk_tokenizer_t *t) { return t->bos; }
int32_t mk_tok_eos(const mk_tokenizer_t *t) { return t->eos; }
bool mk_tok_add_bos(const mk_tokenizer_t *t) { return t->add_bos; }
bool mk_tok_is_eog(const mk_tokenizer_t *t, int32_t id) {
  return id >= 0 && id < t->n_vocab && t->eog[id];
}
int32_t mk_tok_find(const mk_tokenizer_t *t, const char *text) {
  return vocab_lookup(t, text, strlen(text));
}
const char *mk_tok_text(const mk_tokenizer_t *t, int32_t id) {
  return id >= 0 && id < t->n_vocab ? t->text[id] : NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Encoding */

/* Per-call scratch memory. */
typedef struct scratch {
  /* BPE / SPM symbols */
  int32_t *id, *prev, *next;
  uint32_t *start, *len;
  size_t sym_cap;
  /* heap of candidate pairs */
  struct pair {
    float key;    /* SPM: score (max first); BPE: unused */
    int32_t rank; /* BPE: merge rank (min first) */
    int32_t left, right;
    int32_t lid, rid; /* BPE: ids when pushed; SPM: lid = merged length */
    int32_t res;
  } * heap;
  size_t heap_n, heap_cap;
  char *buf; /* SPM escaped text / BPE mapped word */
  size_t buf_cap;
  char *fix; /* BPE text with invalid UTF-8 replaced */
  size_t fix_cap;
  segvec_t segs, segs2;
  pcre2_match_data *md[MK_TOK_MAX_RE];
} scratch_t;

static void scratch_free(scratch_t *s) {
  free(s->id);
  free(s->prev);
  free(s->next);
  free(s->start);
  free(s->len);
  free(s->heap);
  free(s->buf);
  free(s->fix);
  free(s->segs.v);
  free(s->segs2.v);
  for (int i = 0; i < MK_TOK_MAX_RE; i++)
    if (s->md[i]) pcre2_match_data_free(s->md[i]);
}

static int scratch_syms(scratch_t *s, size_t n) {
  if (n <= s->sym_cap) return 0;
  size_t c = n < 256 ? 256 : n;
  int32_t *a = realloc(s->id, c * sizeof *a);
  if (a) s->id = a;
  int32_t *b = realloc(s->prev, c * sizeof *b);
  if (b) s->prev = b;
  int32_t *d = realloc(s->next, c * sizeof *d);
  if (d) s->next = d;
  uint32_t *e = realloc(s->start, c * sizeof *e);
  if (e) s->start = e;
  uint32_t *f = realloc(s->len, c * sizeof *f);
  if (f) s->len = f;
  if (!a || !b || !d || !e || !f) return -1;
  s->sym_cap = c;
  return 0;
}

static int scratch_buf(scratch_t *s, size_t n) {
  if (n <= s->buf_cap) return 0;
  size_t c = n < 1024 ? 1024 : n * 2;
  char *b = realloc(s->buf, c);
  if (!b) return -1;
  s->buf = b;
  s->buf_cap = c;
  return 0;
}

/* Heap order: BPE lowest rank first, SPM highest score first; ties: leftmost first. */
static bool pair_before(bool spm, const struct pair *a, const struct pair *b) {
  if (spm) {
    if (a->key != b->key) return a->key > b->key;
  } else if (a->rank != b->rank) {
    return a->rank < b->rank;
  }
  return a->left < b->left;
}

static int heap_push(scratch_t *s, bool spm, struct pair p) {
  if (s->heap_n == s->heap_cap) {
    size_t c = s->heap_cap ? s->heap_cap * 2 : 256;
    struct pair *h = realloc(s->heap, c * sizeof *h);
    if (!h) return -1;
    s->heap = h;
    s->heap_cap = c;
  }
  size_t i = s->heap_n++;
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!pair_before(spm, &p, &s->heap[parent])) break;
    s->heap[i] = s->heap[parent];
    i = parent;
  }
  s->heap[i] = p;
  return 0;
}

static struct pair heap_pop(scratch_t *s, bool spm) {
  struct pair top = s->heap[0];
  struct pair last = s->heap[--s->heap_n];
  size_t i = 0, n = s->heap_n;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    const struct pair *best = &last;
    if (l < n && pair_before(spm, &s->heap[l], best)) {
      m = l;
      best = &s->heap[l];
    }
    if (r < n && pair_before(spm, &s->heap[r], best)) m = r;
    if (m == i) break;
    s->heap[i] = s->heap[m];
    i = m;
  }
  if (n > 0) s->heap[i] = last;
  return top;
}

static int bpe_try_pair(const mk_tokenizer_t *t, scratch_t *s, int32_t l, int32_t r) {
  if (l < 0 || r < 0) return 0;
  int32_t rank, res;
  if (!merge_lookup(t, s->id[l], s->id[r], &rank, &res)) return 0;
  struct pair p = {0.0f, rank, l, r, s->id[l], s->id[r], res};
  return heap_push(s, false, p);
}

/* Byte-level BPE of one word (raw bytes w[0..n)). */
static int bpe_word(const mk_tokenizer_t *t, scratch_t *s, const char *w, size_t n, ivec_t *out) {
  if (n == 0) return 0;
  if (t->ignore_merges) {
    if (scratch_buf(s, n * 2 + 1) < 0) return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
      o += (size_t)utf8_encode(t->byte_cp[(unsigned char)w[i]], s->buf + o);
    int32_t id = vocab_lookup(t, s->buf, o);
    if (id >= 0) return ivec_push(out, id);
  }
  if (scratch_syms(s, n) < 0) return -1;
  for (size_t i = 0; i < n; i++) {
    s->id[i] = t->byte_tok[(unsigned char)w[i]];
    s->prev[i] = (int32_t)i - 1;
    s->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    s->len[i] = 1;
  }
  s->heap_n = 0;
  for (size_t i = 0; i + 1 < n; i++)
    if (bpe_try_pair(t, s, (int32_t)i, (int32_t)i + 1) < 0) return -1;
  while (s->heap_n > 0) {
    struct pair p = heap_pop(s, false);
    int32_t l = p.left, r = p.right;
    if (s->len[l] == 0 || s->len[r] == 0 || s->next[l] != r || s->id[l] != p.lid ||
        s->id[r] != p.rid)
      continue; /* stale */
    s->id[l] = p.res;
    s->len[l] += s->len[r];
    s->len[r] = 0;
    s->next[l] = s->next[r];
    if (s->next[r] >= 0) s->prev[s->next[r]] = l;
    if (bpe_try_pair(t, s, s->prev[l], l) < 0 || bpe_try_pair(t, s, l, s->next[l]) < 0) return -1;
  }
  /* A byte with no token of its own (SmolLM2 has none for 04 06 13 14 16 1d c0 c1 f1 f2 f5-ff)
   * is dropped, as llama.cpp does; mapping it to unk would put <|endoftext|> (SmolLM2's id 0)
   * into the prompt. */
  for (int32_t i = 0; i >= 0; i = s->next[i]) {
    int32_t id = s->id[i];
    if (id >= 0 && ivec_push(out, id) < 0) return -1;
  }
  return 0;
}

/* Splits every segment in `in` with regex k into `out` (matches and the gaps between them). */
static int regex_split(const mk_tokenizer_t *t, scratch_t *s, int k, const char *text,
                       const segvec_t *in, segvec_t *out) {
  out->n = 0;
  if (!s->md[k]) {
    s->md[k] = pcre2_match_data_create_from_pattern(t->re[k], NULL);
    if (!s->md[k]) return -1;
  }
  for (size_t i = 0; i < in->n; i++) {
    const char *subj = text + in->v[i].off;
    size_t n = in->v[i].len, pos = 0, last = 0;
    while (pos < n) {
      int rc = pcre2_match(t->re[k], (PCRE2_SPTR)subj, n, pos, 0, s->md[k], NULL);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) return -1;
      PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md[k]);
      size_t ms = ov[0], me = ov[1];
      if (me <= ms) { /* empty match: step one character */
        pos = ms + utf8_len((unsigned char)subj[ms]);
        if (pos > n) pos = n;
        continue;
      }
      if (ms > last && segvec_push(out, in->v[i].off + last, ms - last, -1) < 0) return -1;
      if (segvec_push(out, in->v[i].off + ms, me - ms, -1) < 0) return -1;
      last = pos = me;
    }
    if (last < n && segvec_push(out, in->v[i].off + last, n - last, -1) < 0) return -1;
  }
  return 0;
}

/* llama.cpp reads BPE text as code points, turning each byte that does not start a complete
 * UTF-8 sequence into U+FFFD; same here, so invalid input tokenizes as it does there. Returns the
 * text to use: `src` itself when it is valid, else a sanitized copy in s->fix. */
static const char *bpe_sanitize(scratch_t *s, const char *src, size_t *n) {
  size_t len = *n, i = 0;
  bool ok = true;
  while (i < len) {
    size_t k = utf8_len((unsigned char)src[i]);
    bool good = ((unsigned char)src[i] < 0x80) || (k > 1 && k <= len - i);
    for (size_t j = 1; good && j < k; j++) good = ((unsigned char)src[i + j] & 0xC0) == 0x80;
    if (!good) {
      ok = false;
      break;
    }
    i += k;
  }
  if (ok) return src;
  if (len > (SIZE_MAX - 1) / 3) return NULL;
  if (s->fix_cap < len * 3) {
    char *f = realloc(s->fix, len * 3);
    if (!f) return NULL;
    s->fix = f;
    s->fix_cap = len * 3;
  }
  size_t o = 0;
  for (i = 0; i < len;) {
    size_t k = utf8_len((unsigned char)src[i]);
    bool good = ((unsigned char)src[i] < 0x80) || (k > 1 && k <= len - i);
    for (size_t j = 1; good && j < k; j++) good = ((unsigned char)src[i + j] & 0xC0) == 0x80;
    if (good) {
      memcpy(s->fix + o, src + i, k);
      o += k;
      i += k;
    } else {
      memcpy(s->fix + o, "\xEF\xBF\xBD", 3);
      o += 3;
      i += 1;
    }
  }
  *n = o;
  return s->fix;
}

static int bpe_fragment(const mk_tokenizer_t *t, scratch_t *s, const char *src, size_t len,
                        ivec_t *out) {
  const char *text = bpe_sanitize(s, src, &len);
  if (!text) return -1;
  s->segs.n = 0;
  if (segvec_push(&s->segs, 0, len, -1) < 0) return -1;
  for (int k = 0; k < t->n_re; k++) {
    if (regex_split(t, s, k, text, &s->segs, &s->segs2) < 0) return -1;
    segvec_t tmp = s->segs;
    s->segs = s->segs2;
    s->segs2 = tmp;
  }
  for (size_t i = 0; i < s->segs.n; i++)
    if (bpe_word(t, s, text + s->segs.v[i].off, s->segs.v[i].len, out) < 0) return -1;
  return 0;
}

static int spm_try_pair(const mk_tokenizer_t *t, scratch_t *s, int32_t l, int32_t r) {
  if (l < 0 || r < 0) return 0;
  uint32_t n = s->len[l] + s->len[r];
  int32_t id = vocab_lookup(t, s->buf + s->start[l], n);
  if (id < 0) return 0;
  struct pair p = {t->score[id], 0, l, r, (int32_t)n, 0, id};
  return heap_push(s, true, p);
}

/* SentencePiece-style BPE of one raw fragment. */
static int spm_fragment(const mk_tokenizer_t *t, scratch_t *s, const char *src, size_t n,
                        bool prefix_space, ivec_t *out) {
  /* escape: ' ' -> U+2581 (3 bytes), optional leading space */
  size_t spaces = prefix_space ? 1 : 0;
  for (size_t i = 0; i < n; i++) spaces += src[i] == ' ';
  size_t m = n + (prefix_space ? 1 : 0) + spaces * 2;
  if (m == 0) return 0;
  if (scratch_buf(s, m) < 0 || scratch_syms(s, m) < 0) return -1;
  size_t o = 0;
  if (prefix_space) {
    memcpy(s->buf, "\xE2\x96\x81", 3);
    o = 3;
  }
  for (size_t i = 0; i < n; i++) {
    if (src[i] == ' ') {
      memcpy(s->buf + o, "\xE2\x96\x81", 3);
      o += 3;
    } else {
      s->buf[o++] = src[i];
    }
  }
  int32_t ns = 0;
  for (size_t i = 0; i < o;) {
    size_t k = utf8_len((unsigned char)s->buf[i]);
    if (k > o - i) k = o - i;
    s->start[ns] = (uint32_t)i;
    s->len[ns] = (uint32_t)k;
    s->prev[ns] = ns - 1;
    s->next[ns] = ns + 1;
    ns++;
    i += k;
  }
  s->next[ns - 1] = -1;
  s->heap_n = 0;
  for (int32_t i = 0; i + 1 < ns; i++)
    if (spm_try_pair(t, s, i, i + 1) < 0) return -1;
  while (s->heap_n > 0) {
    struct pair p = heap_pop(s, true);
    int32_t l = p.left, r = p.right;
    if (s->len[l] == 0 || s->len[r] == 0 || (int32_t)(s->len[l] + s->len[r]) != p.lid) continue;
    s->len[l] += s->len[r];
    s->len[r] = 0;
    s->next[l] = s->next[r];
    if (s->next[r] >= 0) s->prev[s->next[r]] = l;
    if (spm_try_pair(t, s, s->prev[l], l) < 0 || spm_try_pair(t, s, l, s->next[l]) < 0) return -1;
  }
  for (int32_t i = 0; i >= 0; i = s->next[i]) {
    int32_t id = vocab_lookup(t, s->buf + s->start[i], s->len[i]);
    if (id >= 0) {
      if (ivec_push(out, id) < 0) return -1;
      continue;
    }
    for (uint32_t j = 0; j < s->len[i]; j++) { /* byte fallback */
      int32_t b = t->byte_tok[(unsigned char)s->buf[s->start[i] + j]];
      if (b < 0 && t->unk >= 0 && !t->eog[t->unk]) b = t->unk; /* never an end-of-text id */
      if (b >= 0 && ivec_push(out, b) < 0) return -1;
    }
  }
  return 0;
}

/* Cuts raw segments at occurrences of special tokens, longest token text first. */
static int partition_special(const mk_tokenizer_t *t, scratch_t *s, const char *text, size_t len,
                             bool parse_special) {
  s->segs.n = 0;
  if (len > 0 && segvec_push(&s->segs, 0, len, -1) < 0) return -1;
  for (int k = 0; k < t->n_special; k++) {
    int32_t id = t->special[k];
    if (!parse_special && t->type[id] != TT_USER) continue;
    const char *tt = t->text[id];
    size_t tl = t->text_len[id];
    s->segs2.n = 0;
    bool any = false;
    for (size_t i = 0; i < s->segs.n; i++) {
      seg_t sg = s->segs.v[i];
      if (sg.tok >= 0 || sg.len < tl) {
        if (segvec_push(&s->segs2, sg.off, sg.len, sg.tok) < 0) return -1;
        continue;
      }
      size_t p = sg.off, end = sg.off + sg.len;
      for (;;) {
        const char *hit = end - p >= tl ? memmem(text + p, end - p, tt, tl) : NULL;
        if (!hit) break;
        any = true;
        size_t h = (size_t)(hit - text);
        if (h > p && segvec_push(&s->segs2, p, h - p, -1) < 0) return -1;
        if (segvec_push(&s->segs2, h, tl, id) < 0) return -1;
        p = h + tl;
      }
      if (p < end && segvec_push(&s->segs2, p, end - p, -1) < 0) return -1;
    }
    if (any) {
      segvec_t tmp = s->segs;
      s->segs = s->segs2;
      s->segs2 = tmp;
    }
  }
  return 0;
}

int mk_tok_encode(const mk_tokenizer_t *t, const char *text, size_t len, bool add_bos,
                  bool parse_special, int32_t *ids, int cap, mk_error_t *err) {
  if (!text && len > 0) return mk_fail(err, "tokenizer: encode: NULL text");
  scratch_t s;
  memset(&s, 0, sizeof s);
  ivec_t out = {0};
  segvec_t parts = {0};
  int rc = -1;
  if (add_bos && t->bos >= 0 && ivec_push(&out, t->bos) < 0) goto oom;
  if (partition_special(t, &s, text, len, parse_special) < 0) goto oom;
  /* keep the partition: the encoders reuse s.segs */
  parts = s.segs;
  s.segs = (segvec_t){0};
  bool prev_special = true;
  for (size_t i = 0; i < parts.n; i++) {
    seg_t sg = parts.v[i];
    if (sg.tok >= 0) {
      if (ivec_push(&out, sg.tok) < 0) goto oom;
      prev_special = true;
      continue;
    }
    int r = t->kind == MK_TOK_BPE ? bpe_fragment(t, &s, text + sg.off, sg.len, &out)
                                  : spm_fragment(t, &s, text + sg.off, sg.len,
                                                 t->add_space_prefix && prev_special, &out);
    if (r < 0) goto oom;
    prev_special = false;
  }
  if (out.n > (size_t)INT32_MAX) {
    mk_fail(err, "tokenizer: encode: %zu tokens exceed the int range", out.n);
    goto end;
  }
  if (ids && cap > 0 && out.n > 0)
    memcpy(ids, out.v, (out.n < (size_t)cap ? out.n : (size_t)cap) * sizeof *ids);
  rc = (int)out.n;
  goto end;
oom:
  mk_fail(err, "tokenizer: encode: out of memory (or regex failure) on %zu bytes of text", len);
end:
  free(parts.v);
  free(out.v);
  scratch_free(&s);
  return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Decoding */

int mk_tok_piece(const mk_tokenizer_t *t, int32_t id, char *buf, int cap) {
  if (id < 0 || id >= t->n_vocab) return -1;
  uint32_t n = t->piece_len[id];
  if (n <= (uint32_t)(cap < 0 ? 0 : cap)) memcpy(buf, t->piece_arena + t->piece_off[id], n);
  return (int)n;
}

/* Moves complete characters of in[0..n) to out (invalid subparts -> U+FFFD); the incomplete
 * tail (< 4 bytes) stays in s->pending. Returns bytes written, or -1 if out is too small. */
static int stream_drain(mk_tok_stream_t *s, const char *in, size_t n, char *out, int cap,
                        bool final) {
  size_t o = 0, i = 0;
  while (i < n) {
    int k = utf8_check((const unsigned char *)in + i, n - i);
    if (k == 0 && !final) break; /* incomplete: hold back */
    size_t need = k > 0 ? (size_t)k : 3;
    if (o + need > (size_t)cap) return -1;
    if (k > 0) {
      memcpy(out + o, in + i, (size_t)k);
      o += (size_t)k;
      i += (size_t)k;
    } else {
      memcpy(out + o, "\xEF\xBF\xBD", 3);
      o += 3;
      i += k < 0 ? (size_t)(-k) : n - i;
    }
  }
  s->n_pending = (int)(n - i);
  memmove(s->pending, in + i, n - i);
  return (int)o;
}

int mk_tok_stream_push(const mk_tokenizer_t *t, mk_tok_stream_t *s, int32_t id, char *out,
                       int cap) {
  if (id < 0 || id >= t->n_vocab) return -1;
  uint32_t n = t->piece_len[id];
  size_t total = (size_t)s->n_pending + n;
  char small[256];
  char *in = total <= sizeof small ? small : malloc(total);
  if (!in) return -1;
  memcpy(in, s->pending, (size_t)s->n_pending);
  memcpy(in + s->n_pending, t->piece_arena + t->piece_off[id], n);
  mk_tok_stream_t saved = *s;
  int r = stream_drain(s, in, total, out, cap, false);
  if (r < 0) *s = saved; /* too small: nothing consumed */
  if (in != small) free(in);
  return r;
}

int mk_tok_stream_flush(mk_tok_stream_t *s, char *out, int cap) {
  char in[8];
  size_t n = (size_t)s->n_pending;
  memcpy(in, s->pending, n);
  mk_tok_stream_t saved = *s;
  int r = stream_drain(s, in, n, out, cap, true);
  if (r < 0) *s = saved; /* too small: keep the pending bytes */
  return r;
}

/* ---------------------------------------------------------------------------------------------
 * Chat templates */

mk_chat_tmpl_t mk_chat_detect(const mk_gguf_t *g) {
  char *tmpl = NULL;
  if (mk_gguf_get_str(g, "tokenizer.chat_template", &tmpl, NULL) != MK_GGUF_OK || !tmpl) {
    free(tmpl);
    return MK_CHAT_NONE;
  }
  mk_chat_tmpl_t r = MK_CHAT_NONE;
  if (strstr(tmpl, "<|im_start|>"))
    r = MK_CHAT_CHATML;
  else if (strstr(tmpl, "<|start_header_id|>"))
    r = MK_CHAT_LLAMA3;
  else if (strstr(tmpl, "[INST]"))
    r = MK_CHAT_LLAMA2;
  free(tmpl);
  return r;
}

int mk_chat_parse(const char *name, mk_chat_tmpl_t *out) {
  static const struct {
    const char *name;
    mk_chat_tmpl_t t;
  } names[] = {{"chatml", MK_CHAT_CHATML},
               {"llama3", MK_CHAT_LLAMA3},
               {"llama2", MK_CHAT_LLAMA2},
               {"none", MK_CHAT_NONE}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    if (strcmp(name, names[i].name) == 0) {
      *out = names[i].t;
      return 0;
    }
  }
  return -1;
}

char *mk_chat_default_system(const mk_gguf_t *g) {
  char *tmpl = NULL;
  if (mk_gguf_get_str(g, "tokenizer.chat_template", &tmpl, NULL) != MK_GGUF_OK || !tmpl) {
    free(tmpl);
    return NULL;
  }
  /* a literal "<|im_start|>system\n...<|im_end|>" in the template source is its default */
  static const char head[] = "<|im_start|>system\\n";
  static const char head_raw[] = "<|im_start|>system\n";
  char *res = NULL;
  const char *p = strstr(tmpl, head_raw);
  size_t hl = sizeof head_raw - 1;
  if (!p) {
    p = strstr(tmpl, head);
    hl = sizeof head - 1;
  }
  if (p) {
    p += hl;
    const char *e = strstr(p, "<|im_end|>");
    /* reject template code (an expression, not a literal) */
    if (e && e > p && !memchr(p, '\'', (size_t)(e - p)) && !memchr(p, '{', (size_t)(e - p)) &&
        !memchr(p, '+', (size_t)(e - p))) {
      res = strndup(p, (size_t)(e - p));
    }
  }
  free(tmpl);
  return res;
}

static const char CHATML_DEFAULT_SYSTEM[] =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/* Copy of s without leading/trailing whitespace (Jinja's |trim / Python's strip). */
static char *trimmed(const char *s) {
  while (*s && isspace((unsigned char)*s)) s++;
  size_t n = strlen(s);
  while (n > 0 && isspace((unsigned char)s[n - 1])) n--;
  return strndup(s, n);
}

static char *join(const char *const *parts, int n) {
  size_t total = 1;
  for (int i = 0; i < n; i++) total += strlen(parts[i]);
  char *r = malloc(total);
  if (!r) return NULL;
  size_t o = 0;
  for (int i = 0; i < n; i++) {
    size_t l = strlen(parts[i]);
    memcpy(r + o, parts[i], l);
    o += l;
  }
  r[o] = 0;
  return r;
}

char *mk_chat_render(mk_chat_tmpl_t tmpl, const char *system, const char *user) {
  if (!user) user = "";
  switch (tmpl) {
    case MK_CHAT_CHATML: {
      const char *sys = system ? system : CHATML_DEFAULT_SYSTEM;
      const char *p[] = {"<|im_start|>system\n", sys, "<|im_end|>\n<|im_start|>user\n", user,
                         "<|im_end|>\n<|im_start|>assistant\n"};
      return join(p, 5);
    }
    case MK_CHAT_LLAMA3: {
      char *u = trimmed(user), *sy = system ? trimmed(system) : NULL;
      char *r = NULL;
      if (u && (!system || sy)) {
        if (sy) {
          const char *p[] = {"<|start_header_id|>system<|end_header_id|>\n\n", sy,
                             "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n", u,
                             "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"};
          r = join(p, 5);
        } else {
          const char *p[] = {"<|start_header_id|>user<|end_header_id|>\n\n", u,
                             "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"};
          r = join(p, 3);
        }
      }
      free(u);
      free(sy);
      return r;
    }
    case MK_CHAT_LLAMA2: {
      char *u = trimmed(user), *sy = system ? trimmed(system) : NULL;
      char *r = NULL;
      if (u && (!system || sy)) {
        if (sy) {
          const char *p[] = {"[INST] <<SYS>>\n", sy, "\n<</SYS>>\n\n", u, " [/INST]"};
          r = join(p, 5);
        } else {
          const char *p[] = {"[INST] ", u, " [/INST]"};
          r = join(p, 3);
        }
      }
      free(u);
      free(sy);
      return r;
    }
    case MK_CHAT_NONE:
    default: {
      const char *p[] = {user};
      return join(p, 1);
    }
  }
}
