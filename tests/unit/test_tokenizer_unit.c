/* Tokenizer unit tests on small synthetic vocabularies (no model needed).
 *
 * Golden ids: tests/golden/tokenizer/synthetic.json, made by make_tokenizer_golden.py with
 * llama.cpp (llama-cpp-python, vocab_only) from the same vocabularies; here each vocabulary is
 * rebuilt as a GGUF in memory with tests/testutil/gguf_writer and tokenized by src/tokenizer.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/gguf.h"
#include "src/tokenizer.h"
#include "tests/testutil/gguf_writer.h"
#include "tests/testutil/testutil.h"

/* ---- building a vocabulary GGUF from a JSON description ------------------------------------ */

typedef struct built {
  void *buf;
  mk_gguf_t *g;
  mk_tokenizer_t *t;
} built_t;

static void built_free(built_t *b) {
  mk_tok_free(b->t);
  mk_gguf_close(b->g);
  free(b->buf);
  memset(b, 0, sizeof *b);
}

/* Writes the vocab described by v (see synthetic.json); pre_override/template may be NULL. */
static mk_gguf_writer_t *writer_from_json(json_t *v, const char *pre_override,
                                          const char *chat_template) {
  mk_gguf_writer_t *w = mk_gw_new();
  assert_non_null(w);
  mk_gw_kv_str(w, "general.architecture", "llama");
  mk_gw_kv_str(w, "tokenizer.ggml.model", json_string_value(json_object_get(v, "model")));
  const char *pre = pre_override ? pre_override : json_string_value(json_object_get(v, "pre"));
  if (pre) mk_gw_kv_str(w, "tokenizer.ggml.pre", pre);

  json_t *toks = json_object_get(v, "tokens");
  size_t n = json_array_size(toks);
  const char **strs = malloc(n * sizeof *strs);
  int32_t *types = malloc(n * sizeof *types);
  assert_non_null(strs);
  assert_non_null(types);
  for (size_t i = 0; i < n; i++) {
    strs[i] = json_string_value(json_array_get(toks, i));
    types[i] = (int32_t)json_integer_value(json_array_get(json_object_get(v, "types"), i));
  }
  mk_gw_kv_arr_str(w, "tokenizer.ggml.tokens", strs, n);
  mk_gw_kv_arr(w, "tokenizer.ggml.token_type", MK_GGUF_INT32, types, n);
  json_t *scores = json_object_get(v, "scores");
  if (scores) {
    float *sc = malloc(n * sizeof *sc);
    assert_non_null(sc);
    for (size_t i = 0; i < n; i++) sc[i] = (float)json_real_value(json_array_get(scores, i));
    mk_gw_kv_arr(w, "tokenizer.ggml.scores", MK_GGUF_FLOAT32, sc, n);
    free(sc);
  }
  json_t *merges = json_object_get(v, "merges");
  if (merges) {
    size_t nm = json_array_size(merges);
    const char **ms = malloc(nm * sizeof *ms);
    assert_non_null(ms);
    for (size_t i = 0; i < nm; i++) ms[i] = json_string_value(json_array_get(merges, i));
    mk_gw_kv_arr_str(w, "tokenizer.ggml.merges", ms, nm);
    free(ms);
  }
  mk_gw_kv_u32(w, "tokenizer.ggml.bos_token_id",
               (uint32_t)json_integer_value(json_object_get(v, "bos")));
  mk_gw_kv_u32(w, "tokenizer.ggml.eos_token_id",
               (uint32_t)json_integer_value(json_object_get(v, "eos")));
  if (json_object_get(v, "unk"))
    mk_gw_kv_u32(w, "tokenizer.ggml.unknown_token_id",
                 (uint32_t)json_integer_value(json_object_get(v, "unk")));
  json_t *asp = json_object_get(v, "add_space_prefix");
  if (asp) mk_gw_kv_bool(w, "tokenizer.ggml.add_space_prefix", json_is_true(asp));
  if (chat_template) mk_gw_kv_str(w, "tokenizer.chat_template", chat_template);
  free(strs);
  free(types);
  return w;
}

/* Opens the writer's bytes; returns the load status (0 / -1) and fills b. */
static int build(mk_gguf_writer_t *w, built_t *b, mk_error_t *err) {
  memset(b, 0, sizeof *b);
  size_t size = 0;
  b->buf = mk_gw_to_buffer(w, &size);
  mk_gw_free(w);
  assert_non_null(b->buf);
  if (mk_gguf_open_memory(b->buf, size, "synthetic.gguf", &b->g, err) != 0) {
    fail_msg("gguf: %s", err->msg);
  }
  return mk_tok_load(b->g, &b->t, err);
}

static json_t *g_golden; /* synthetic.json, loaded in the group setup */

static int group_setup(void **state) {
  (void)state;
  json_error_t je;
  const char *path = mk_test_source_path("tests/golden/tokenizer/synthetic.json");
  g_golden = json_load_file(path, 0, &je);
  if (!g_golden) {
    fprintf(stderr, "cannot read %s: %s (line %d)\n", path, je.text, je.line);
    return -1;
  }
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  json_decref(g_golden);
  return 0;
}

static json_t *vocab_named(const char *name) {
  json_t *vs = json_object_get(g_golden, "vocabs");
  for (size_t i = 0; i < json_array_size(vs); i++) {
    json_t *v = json_array_get(vs, i);
    if (strcmp(json_string_value(json_object_get(v, "name")), name) == 0) return v;
  }
  fail_msg("vocab %s not in synthetic.json", name);
  return NULL;
}

static void fmt_ids(char *buf, size_t cap, const int32_t *ids, int n) {
  size_t o = 0;
  buf[0] = 0;
  for (int i = 0; i < n && o + 16 < cap; i++)
    o += (size_t)snprintf(buf + o, cap - o, "%d ", ids[i]);
}

/* Runs all cases of vocab v against tokenizer t; returns the number of mismatches. */
static int run_cases(json_t *v, const mk_tokenizer_t *t) {
  int bad = 0;
  json_t *cases = json_object_get(v, "cases");
  for (size_t i = 0; i < json_array_size(cases); i++) {
    json_t *c = json_array_get(cases, i);
    const char *text = json_string_value(json_object_get(c, "text"));
    bool add_bos = json_is_true(json_object_get(c, "add_bos"));
    bool special = json_is_true(json_object_get(c, "special"));
    json_t *ids = json_object_get(c, "ids");
    int32_t got[256];
    mk_error_t err = {{0}};
    int n =
        mk_tok_encode(t, text, strlen(text), add_bos && mk_tok_add_bos(t), special, got, 256, &err);
    assert_true(n >= 0);
    bool same = (size_t)n == json_array_size(ids);
    for (int k = 0; same && k < n; k++) same = got[k] == json_integer_value(json_array_get(ids, k));
    if (!same) {
      char gb[1024], wb[1024];
      int32_t want[256];
      int nw = (int)json_array_size(ids);
      for (int k = 0; k < nw && k < 256; k++)
        want[k] = (int32_t)json_integer_value(json_array_get(ids, k));
      fmt_ids(gb, sizeof gb, got, n);
      fmt_ids(wb, sizeof wb, want, nw);
      fprintf(stderr, "[%s] text=\"%s\" add_bos=%d special=%d\n   got: %s\n  want: %s\n",
              json_string_value(json_object_get(v, "name")), text, add_bos, special, gb, wb);
      bad++;
    }
  }
  return bad;
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_synthetic_golden(void **state) {
  (void)state;
  json_t *vs = json_object_get(g_golden, "vocabs");
  assert_true(json_array_size(vs) >= 7);
  int bad = 0, total = 0;
  for (size_t i = 0; i < json_array_size(vs); i++) {
    json_t *v = json_array_get(vs, i);
    built_t b;
    mk_error_t err = {{0}};
    if (build(writer_from_json(v, NULL, NULL), &b, &err) != 0) fail_msg("load: %s", err.msg);
    const char *model = json_string_value(json_object_get(v, "model"));
    assert_int_equal(mk_tok_kind(b.t), strcmp(model, "llama") == 0 ? MK_TOK_SPM : MK_TOK_BPE);
    if (mk_tok_kind(b.t) == MK_TOK_BPE) {
      assert_string_equal(mk_tok_pre_name(b.t), json_string_value(json_object_get(v, "pre")));
      assert_true(mk_tok_pre_known(b.t));
    }
    bad += run_cases(v, b.t);
    total += (int)json_array_size(json_object_get(v, "cases"));
    built_free(&b);
  }
  fprintf(stderr, "synthetic golden: %d/%d cases match\n", total - bad, total);
  assert_int_equal(bad, 0);
}

/* An unknown pre-tokenizer name falls back to llama.cpp's default regex set. */
static void test_unknown_pre_falls_back(void **state) {
  (void)state;
  built_t b;
  mk_error_t err = {{0}};
  json_t *v = vocab_named("bpe_default");
  if (build(writer_from_json(v, "no-such-pre", NULL), &b, &err) != 0) fail_msg("%s", err.msg);
  assert_string_equal(mk_tok_pre_name(b.t), "no-such-pre");
  assert_false(mk_tok_pre_known(b.t));
  assert_int_equal(run_cases(v, b.t), 0);
  built_free(&b);
}

static built_t build_named(const char *name, const char *chat_template) {
  built_t b;
  mk_error_t err = {{0}};
  if (build(writer_from_json(vocab_named(name), NULL, chat_template), &b, &err) != 0)
    fail_msg("%s", err.msg);
  return b;
}

static void test_metadata_and_eog(void **state) {
  (void)state;
  built_t b = build_named("bpe_llama-bpe", NULL);
  assert_int_equal(mk_tok_bos(b.t), 0);
  assert_int_equal(mk_tok_eos(b.t), 0);
  assert_true(mk_tok_add_bos(b.t)); /* llama3 family default */
  assert_int_equal(mk_tok_find(b.t, "<|im_end|>"), 2);
  assert_int_equal(mk_tok_find(b.t, "no such token"), -1);
  assert_string_equal(mk_tok_text(b.t, 1), "<|im_start|>");
  assert_null(mk_tok_text(b.t, -1));
  assert_true(mk_tok_is_eog(b.t, 0));  /* EOS, <|endoftext|> */
  assert_false(mk_tok_is_eog(b.t, 1)); /* <|im_start|> */
  assert_true(mk_tok_is_eog(b.t, 2));  /* <|im_end|> */
  assert_true(mk_tok_is_eog(b.t, 3));  /* <|eot_id|> */
  assert_false(mk_tok_is_eog(b.t, 4));
  assert_false(mk_tok_is_eog(b.t, -1));
  assert_false(mk_tok_is_eog(b.t, mk_tok_n_vocab(b.t)));
  built_free(&b);

  b = build_named("bpe_gpt-2", NULL);
  assert_false(mk_tok_add_bos(b.t));
  built_free(&b);

  b = build_named("spm", NULL);
  assert_true(mk_tok_add_bos(b.t)); /* SPM default */
  assert_int_equal(mk_tok_bos(b.t), 1);
  assert_true(mk_tok_is_eog(b.t, 2)); /* </s> */
  assert_false(mk_tok_is_eog(b.t, 1));
  built_free(&b);
}

static void test_pieces(void **state) {
  (void)state;
  built_t b = build_named("bpe_gpt-2", NULL);
  char buf[64];
  int32_t id = mk_tok_find(b.t, "\xC4\xA0the"); /* "Ġthe" */
  assert_true(id >= 0);
  assert_int_equal(mk_tok_piece(b.t, id, buf, sizeof buf), 4);
  assert_memory_equal(buf, " the", 4);
  assert_int_equal(mk_tok_piece(b.t, id, buf, 2), 4); /* too small: needed size */
  id = mk_tok_find(b.t, "\xC4\x8A");                  /* "Ċ" = '\n' */
  assert_int_equal(mk_tok_piece(b.t, id, buf, sizeof buf), 1);
  assert_int_equal(buf[0], '\n');
  assert_int_equal(mk_tok_piece(b.t, 1, buf, sizeof buf), 12); /* control: its text */
  assert_memory_equal(buf, "<|im_start|>", 12);
  assert_int_equal(mk_tok_piece(b.t, -1, buf, sizeof buf), -1);
  assert_int_equal(mk_tok_piece(b.t, mk_tok_n_vocab(b.t), buf, sizeof buf), -1);
  built_free(&b);

  b = build_named("spm", NULL);
  id = mk_tok_find(b.t, "\xE2\x96\x81hello");
  assert_true(id >= 0);
  assert_int_equal(mk_tok_piece(b.t, id, buf, sizeof buf), 6);
  assert_memory_equal(buf, " hello", 6);
  id = mk_tok_find(b.t, "<0x41>");
  assert_int_equal(mk_tok_piece(b.t, id, buf, sizeof buf), 1);
  assert_int_equal(buf[0], 'A');
  id = mk_tok_find(b.t, "<0xE6>");
  assert_int_equal(mk_tok_piece(b.t, id, buf, sizeof buf), 1);
  assert_int_equal((unsigned char)buf[0], 0xE6);
  built_free(&b);
}

/* Decoding every golden id sequence gives back the text (SPM: minus the prefix space). */
static void test_decode_roundtrip(void **state) {
  (void)state;
  const char *names[] = {"bpe_gpt-2", "bpe_llama-bpe", "spm", "spm_noprefix"};
  for (size_t k = 0; k < 4; k++) {
    built_t b = build_named(names[k], NULL);
    json_t *cases = json_object_get(vocab_named(names[k]), "cases");
    for (size_t i = 0; i < json_array_size(cases); i++) {
      json_t *c = json_array_get(cases, i);
      if (json_is_true(json_object_get(c, "special")) ||
          json_is_true(json_object_get(c, "add_bos")))
        continue;
      const char *text = json_string_value(json_object_get(c, "text"));
      /* SPM adds the prefix space again after a special token: skip those texts */
      if (strncmp(names[k], "spm", 3) == 0 && strchr(text, '<')) continue;
      int32_t ids[256];
      mk_error_t err;
      int n = mk_tok_encode(b.t, text, strlen(text), false, false, ids, 256, &err);
      assert_true(n >= 0 && n <= 256);
      size_t o = 0;
      char *out = mk_test_stream_decode(b.t, ids, (size_t)n, &o);
      assert_non_null(out);
      const char *want = text;
      bool prefix = strcmp(names[k], "spm") == 0 && o > 0 && text[0] != 0;
      if (prefix) {
        assert_int_equal(out[0], ' ');
        assert_string_equal(out + 1, want);
      } else {
        assert_string_equal(out, want);
      }
      free(out);
    }
    built_free(&b);
  }
}

/* Streaming over single-byte tokens: characters are emitted whole, invalid bytes as U+FFFD. */
static void test_stream_utf8(void **state) {
  (void)state;
  built_t b = build_named("bpe_gpt-2", NULL);
  /* byte tokens: encode each byte alone (no merges span a lone byte) */
  int32_t byte_tok[256];
  for (int x = 0; x < 256; x++) {
    char c = (char)x;
    mk_error_t err;
    int32_t ids[8];
    /* lone bytes >= 0x80 are invalid UTF-8 and would be replaced: find their tokens by text */
    if (x < 0x80) {
      assert_int_equal(mk_tok_encode(b.t, &c, 1, false, false, ids, 8, &err), 1);
      byte_tok[x] = ids[0];
    } else {
      byte_tok[x] = -1;
    }
  }
  /* GPT-2 map: 0xF0 -> U+00F0 "ð", 0x9F -> U+0141 "Ł", 0x98 -> U+013A "ĺ", 0x80 -> U+0122 "Ģ" */
  byte_tok[0xF0] = mk_tok_find(b.t, "\xC3\xB0");
  byte_tok[0x9F] = mk_tok_find(b.t, "\xC5\x81");
  byte_tok[0x98] = mk_tok_find(b.t, "\xC4\xBA");
  byte_tok[0x80] = mk_tok_find(b.t, "\xC4\xA2");
  byte_tok[0xC3] = mk_tok_find(b.t, "\xC3\x83");
  byte_tok[0xA9] = mk_tok_find(b.t, "\xC2\xA9");
  const int used[] = {0xF0, 0x9F, 0x98, 0x80, 0xC3, 0xA9};
  for (size_t i = 0; i < sizeof used / sizeof used[0]; i++) assert_true(byte_tok[used[i]] >= 0);

  char out[256];
  mk_tok_stream_t s = {0};
  /* U+1F600 = F0 9F 98 80, one byte per token */
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok[0xF0], out, sizeof out), 0);
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok[0x9F], out, sizeof out), 0);
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok[0x98], out, sizeof out), 0);
  assert_int_equal(s.n_pending, 3);
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok[0x80], out, sizeof out), 4);
  assert_memory_equal(out, "\xF0\x9F\x98\x80", 4);
  assert_int_equal(s.n_pending, 0);
  /* 'a' + lead of é: 'a' goes out at once, C3 waits */
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok['a'], out, sizeof out), 1);
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok[0xC3], out, sizeof out), 0);
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok[0xA9], out, sizeof out), 2);
  assert_memory_equal(out, "\xC3\xA9", 2);
  /* a lone continuation byte is invalid at once */
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok[0x80], out, sizeof out), 3);
  assert_memory_equal(out, "\xEF\xBF\xBD", 3);
  /* C3 followed by 'b': U+FFFD then 'b' */
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok[0xC3], out, sizeof out), 0);
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok['b'], out, sizeof out), 4);
  assert_memory_equal(out,
                      "\xEF\xBF\xBD"
                      "b",
                      4);
  /* truncated 4-byte character at the end: flush gives one U+FFFD */
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok[0xF0], out, sizeof out), 0);
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok[0x9F], out, sizeof out), 0);
  assert_int_equal(mk_tok_stream_flush(&s, out, sizeof out), 3);
  assert_memory_equal(out, "\xEF\xBF\xBD", 3);
  assert_int_equal(s.n_pending, 0);
  assert_int_equal(mk_tok_stream_flush(&s, out, sizeof out), 0);
  /* out too small: -1 and nothing consumed */
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok[0xF0], out, sizeof out), 0);
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok[0x9F], out, sizeof out), 0);
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok[0x98], out, sizeof out), 0);
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok[0x80], out, 2), -1);
  assert_int_equal(s.n_pending, 3);
  assert_int_equal(mk_tok_stream_push(b.t, &s, byte_tok[0x80], out, sizeof out), 4);
  assert_true(mk_test_utf8_valid((const unsigned char *)out, 4));
  assert_int_equal(mk_tok_stream_push(b.t, &s, -5, out, sizeof out), -1);
  built_free(&b);
}

/* Invalid UTF-8 input: each offending byte is read as U+FFFD (llama.cpp's behaviour), and the
 * encoder neither crashes nor loses the valid text around it. */
static void test_encode_invalid_utf8(void **state) {
  (void)state;
  built_t b = build_named("bpe_gpt-2", NULL);
  const char bad[] =
      "a\x80"
      "b\xF0\x9F";
  const char good[] =
      "a\xEF\xBF\xBD"
      "b\xEF\xBF\xBD\xEF\xBF\xBD";
  int32_t x[64], y[64];
  mk_error_t err;
  int nx = mk_tok_encode(b.t, bad, sizeof bad - 1, false, false, x, 64, &err);
  int ny = mk_tok_encode(b.t, good, sizeof good - 1, false, false, y, 64, &err);
  assert_true(nx > 0);
  assert_int_equal(nx, ny);
  assert_memory_equal(x, y, (size_t)nx * sizeof *x);
  built_free(&b);
}

static void test_encode_capacity(void **state) {
  (void)state;
  built_t b = build_named("bpe_gpt-2", NULL);
  const char *text = "hello world the thin then";
  int32_t all[64], few[2] = {-7, -7};
  mk_error_t err;
  int n = mk_tok_encode(b.t, text, strlen(text), false, false, all, 64, &err);
  assert_true(n > 2);
  assert_int_equal(mk_tok_encode(b.t, text, strlen(text), false, false, few, 2, &err), n);
  assert_int_equal(few[0], all[0]);
  assert_int_equal(few[1], all[1]);
  assert_int_equal(mk_tok_encode(b.t, text, strlen(text), false, false, NULL, 0, &err), n);
  /* add_bos prepends the BOS id whether or not the model asks for it */
  assert_int_equal(mk_tok_encode(b.t, text, strlen(text), true, false, all, 64, &err), n + 1);
  assert_int_equal(all[0], mk_tok_bos(b.t));
  assert_int_equal(mk_tok_encode(b.t, "", 0, true, false, all, 64, &err), 1);
  assert_int_equal(mk_tok_encode(b.t, "", 0, false, false, all, 64, &err), 0);
  built_free(&b);
}

/* Long inputs: a long run of one character and a long random text finish and round-trip. */
static void test_encode_long(void **state) {
  (void)state;
  built_t b = build_named("bpe_llama-bpe", NULL);
  size_t n = 200000;
  char *text = malloc(n + 1);
  assert_non_null(text);
  uint64_t seed = 42;
  const char alphabet[] = "the hello world 123 \n\t'!";
  for (size_t i = 0; i < n; i++)
    text[i] = alphabet[mk_test_rand_u64(&seed) % (sizeof alphabet - 1)];
  text[n] = 0;
  memset(text, ' ', 50000); /* one 50000-space word */
  mk_error_t err;
  int cnt = mk_tok_encode(b.t, text, n, false, false, NULL, 0, &err);
  assert_true(cnt > 0);
  int32_t *ids = malloc((size_t)cnt * sizeof *ids);
  assert_non_null(ids);
  assert_int_equal(mk_tok_encode(b.t, text, n, false, false, ids, cnt, &err), cnt);
  char *out = malloc(n + 1);
  assert_non_null(out);
  size_t o = 0;
  for (int i = 0; i < cnt; i++) {
    int r = mk_tok_piece(b.t, ids[i], out + o, (int)(n - o));
    assert_true(r >= 0 && o + (size_t)r <= n);
    o += (size_t)r;
  }
  assert_int_equal(o, n);
  assert_memory_equal(out, text, n);
  free(out);
  free(ids);
  free(text);
  built_free(&b);
}

static void test_chat_render(void **state) {
  (void)state;
  char *s = mk_chat_render(MK_CHAT_CHATML, NULL, "Hi there");
  assert_string_equal(s,
                      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                      "Hugging Face<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                      "<|im_start|>assistant\n");
  free(s);
  s = mk_chat_render(MK_CHAT_CHATML, "Be brief.", "Hi");
  assert_string_equal(s,
                      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                      "<|im_start|>assistant\n");
  free(s);
  s = mk_chat_render(MK_CHAT_LLAMA3, NULL, " Hi \n");
  assert_string_equal(s,
                      "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n");
  free(s);
  s = mk_chat_render(MK_CHAT_LLAMA3, "Sys", "Hi");
  assert_string_equal(s,
                      "<|start_header_id|>system<|end_header_id|>\n\nSys"
                      "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n");
  free(s);
  s = mk_chat_render(MK_CHAT_LLAMA2, NULL, "Hi");
  assert_string_equal(s, "[INST] Hi [/INST]");
  free(s);
  s = mk_chat_render(MK_CHAT_LLAMA2, "Sys", "Hi");
  assert_string_equal(s, "[INST] <<SYS>>\nSys\n<</SYS>>\n\nHi [/INST]");
  free(s);
  s = mk_chat_render(MK_CHAT_NONE, NULL, "raw");
  assert_string_equal(s, "raw");
  free(s);

  mk_chat_tmpl_t t = MK_CHAT_NONE;
  assert_int_equal(mk_chat_parse("chatml", &t), 0);
  assert_int_equal(t, MK_CHAT_CHATML);
  assert_int_equal(mk_chat_parse("llama3", &t), 0);
  assert_int_equal(t, MK_CHAT_LLAMA3);
  assert_int_equal(mk_chat_parse("llama2", &t), 0);
  assert_int_equal(t, MK_CHAT_LLAMA2);
  assert_int_equal(mk_chat_parse("vicuna", &t), -1);
}

static void test_chat_detect(void **state) {
  (void)state;
  static const struct {
    const char *tmpl;
    mk_chat_tmpl_t want;
    const char *sys;
  } cases[] = {
      {"{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + "
       "'<|im_end|>\\n'}}{% endfor %}",
       MK_CHAT_CHATML, NULL},
      {"{{ '<|im_start|>system\nYou are Qwen, a helpful assistant.<|im_end|>\n' }}", MK_CHAT_CHATML,
       "You are Qwen, a helpful assistant."},
      {"{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
       "'<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}",
       MK_CHAT_LLAMA3, NULL},
      {"{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}", MK_CHAT_LLAMA2, NULL},
      {"{{ messages }}", MK_CHAT_NONE, NULL},
      {NULL, MK_CHAT_NONE, NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    built_t b = build_named("bpe_gpt-2", cases[i].tmpl);
    assert_int_equal(mk_chat_detect(b.g), cases[i].want);
    char *sys = mk_chat_default_system(b.g);
    if (cases[i].sys) {
      assert_non_null(sys);
      assert_string_equal(sys, cases[i].sys);
    } else {
      assert_null(sys);
    }
    free(sys);
    built_free(&b);
  }
}

static void test_load_errors(void **state) {
  (void)state;
  built_t b;
  mk_error_t err = {{0}};
  /* no tokenizer.ggml.model */
  mk_gguf_writer_t *w = mk_gw_new();
  mk_gw_kv_str(w, "general.architecture", "llama");
  assert_int_equal(build(w, &b, &err), -1);
  assert_null(b.t);
  assert_non_null(strstr(err.msg, "tokenizer.ggml.model"));
  built_free(&b);
  /* unsupported model */
  w = mk_gw_new();
  mk_gw_kv_str(w, "tokenizer.ggml.model", "bert");
  assert_int_equal(build(w, &b, &err), -1);
  assert_non_null(strstr(err.msg, "bert"));
  built_free(&b);
  /* BPE without merges */
  const char *toks[] = {"a", "b"};
  w = mk_gw_new();
  mk_gw_kv_str(w, "tokenizer.ggml.model", "gpt2");
  mk_gw_kv_arr_str(w, "tokenizer.ggml.tokens", toks, 2);
  assert_int_equal(build(w, &b, &err), -1);
  assert_non_null(strstr(err.msg, "merges"));
  built_free(&b);
  /* token_type of the wrong length */
  int32_t types[3] = {1, 1, 1};
  const char *merges[] = {"a b"};
  w = mk_gw_new();
  mk_gw_kv_str(w, "tokenizer.ggml.model", "gpt2");
  mk_gw_kv_arr_str(w, "tokenizer.ggml.tokens", toks, 2);
  mk_gw_kv_arr_str(w, "tokenizer.ggml.merges", merges, 1);
  mk_gw_kv_arr(w, "tokenizer.ggml.token_type", MK_GGUF_INT32, types, 3);
  assert_int_equal(build(w, &b, &err), -1);
  assert_non_null(strstr(err.msg, "token_type"));
  built_free(&b);
  /* SPM without scores */
  w = mk_gw_new();
  mk_gw_kv_str(w, "tokenizer.ggml.model", "llama");
  mk_gw_kv_arr_str(w, "tokenizer.ggml.tokens", toks, 2);
  assert_int_equal(build(w, &b, &err), -1);
  assert_non_null(strstr(err.msg, "scores"));
  built_free(&b);
  /* tokens of the wrong type */
  w = mk_gw_new();
  mk_gw_kv_str(w, "tokenizer.ggml.model", "gpt2");
  mk_gw_kv_arr(w, "tokenizer.ggml.tokens", MK_GGUF_INT32, types, 3);
  assert_int_equal(build(w, &b, &err), -1);
  assert_non_null(strstr(err.msg, "tokenizer.ggml.tokens"));
  built_free(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_synthetic_golden),    cmocka_unit_test(test_unknown_pre_falls_back),
      cmocka_unit_test(test_metadata_and_eog),    cmocka_unit_test(test_pieces),
      cmocka_unit_test(test_decode_roundtrip),    cmocka_unit_test(test_stream_utf8),
      cmocka_unit_test(test_encode_invalid_utf8), cmocka_unit_test(test_encode_capacity),
      cmocka_unit_test(test_encode_long),         cmocka_unit_test(test_chat_render),
      cmocka_unit_test(test_chat_detect),         cmocka_unit_test(test_load_errors),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
