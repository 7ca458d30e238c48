/* Tokenizer of the demo model (SmolLM2-135M-Instruct: gpt2 byte-level BPE, pre "smollm")
 * against llama.cpp: tests/golden/tokenizer/smollm2.jsonl and smollm2_chat.jsonl, made by
 * make_tokenizer_golden.py with llama-cpp-python (vocab_only) and jinja2. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/gguf.h"
#include "src/tokenizer.h"
#include "tests/testutil/testutil.h"

typedef struct fixture {
  mk_gguf_t *g;
  mk_tokenizer_t *t;
} fixture_t;

static int setup(void **state) {
  const char *path = mk_test_model_path();
  if (!path) return -1;
  fixture_t *f = calloc(1, sizeof *f);
  mk_error_t err = {{0}};
  if (!f || mk_gguf_open(path, &f->g, &err) != 0 || mk_tok_load(f->g, &f->t, &err) != 0) {
    fprintf(stderr, "loading %s: %s\n", path, err.msg);
    if (f) mk_gguf_close(f->g);
    free(f);
    return -1;
  }
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  if (!f) return 0;
  mk_tok_free(f->t);
  mk_gguf_close(f->g);
  free(f);
  return 0;
}

/* Reads a JSON-lines golden file into an array. */
static json_t *read_jsonl(const char *rel) {
  size_t len = 0;
  char *buf = mk_test_read_file(mk_test_source_path(rel), &len);
  if (!buf) fail_msg("cannot read %s", rel);
  json_t *arr = json_array();
  char *line = buf;
  while (line && *line) {
    char *nl = strchr(line, '\n');
    if (nl) *nl = 0;
    if (*line) {
      json_error_t je;
      json_t *o = json_loads(line, 0, &je);
      if (!o) fail_msg("%s: bad JSON line: %s", rel, je.text);
      json_array_append_new(arr, o);
    }
    line = nl ? nl + 1 : NULL;
  }
  free(buf);
  return arr;
}

/* The case's input bytes ("text", or "hex" for invalid UTF-8); malloc'd, length in *n. */
static char *case_bytes(json_t *c, size_t *n) {
  json_t *text = json_object_get(c, "text");
  if (text) {
    *n = json_string_length(text);
    char *s = malloc(*n + 1);
    memcpy(s, json_string_value(text), *n + 1);
    return s;
  }
  const char *hex = json_string_value(json_object_get(c, "hex"));
  size_t m = strlen(hex) / 2;
  char *s = malloc(m + 1);
  for (size_t i = 0; i < m; i++) {
    unsigned v;
    sscanf(hex + 2 * i, "%2x", &v);
    s[i] = (char)v;
  }
  s[m] = 0;
  *n = m;
  return s;
}

static void print_ids(const char *label, const int32_t *ids, int n) {
  fprintf(stderr, "  %s:", label);
  for (int i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
  fprintf(stderr, "\n");
}

static void test_metadata(void **state) {
  fixture_t *f = *state;
  assert_int_equal(mk_tok_kind(f->t), MK_TOK_BPE);
  assert_string_equal(mk_tok_pre_name(f->t), "smollm");
  assert_true(mk_tok_pre_known(f->t));
  assert_int_equal(mk_tok_n_vocab(f->t), 49152);
  assert_int_equal(mk_tok_bos(f->t), 1);
  assert_int_equal(mk_tok_eos(f->t), 2);
  assert_false(mk_tok_add_bos(f->t));
  assert_int_equal(mk_tok_find(f->t, "<|im_start|>"), 1);
  assert_int_equal(mk_tok_find(f->t, "<|im_end|>"), 2);
  assert_true(mk_tok_is_eog(f->t, 2));  /* <|im_end|> = EOS */
  assert_true(mk_tok_is_eog(f->t, 0));  /* <|endoftext|> */
  assert_false(mk_tok_is_eog(f->t, 1)); /* <|im_start|> */
  assert_false(mk_tok_is_eog(f->t, 28));
}

/* Every golden string encodes to exactly llama.cpp's ids. */
static void test_golden_ids(void **state) {
  fixture_t *f = *state;
  json_t *cases = read_jsonl("tests/golden/tokenizer/smollm2.jsonl");
  size_t n_cases = json_array_size(cases);
  assert_true(n_cases >= 60);
  int bad = 0;
  for (size_t i = 0; i < n_cases; i++) {
    json_t *c = json_array_get(cases, i);
    size_t len;
    char *text = case_bytes(c, &len);
    bool special = json_is_true(json_object_get(c, "special"));
    json_t *want = json_object_get(c, "ids");
    size_t nw = json_array_size(want);
    mk_error_t err = {{0}};
    int n = mk_tok_encode(f->t, text, len, false, special, NULL, 0, &err);
    assert_true(n >= 0);
    int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
    assert_int_equal(mk_tok_encode(f->t, text, len, false, special, ids, n, &err), n);
    bool same = (size_t)n == nw;
    for (size_t k = 0; same && k < nw; k++)
      same = ids[k] == json_integer_value(json_array_get(want, k));
    if (!same) {
      int32_t *w = malloc((nw + 1) * sizeof *w);
      for (size_t k = 0; k < nw; k++) w[k] = (int32_t)json_integer_value(json_array_get(want, k));
      fprintf(stderr, "mismatch for \"%s\" (special=%d)\n", text, special);
      print_ids("got ", ids, n);
      print_ids("want", w, (int)nw);
      free(w);
      bad++;
    }
    free(ids);
    free(text);
  }
  fprintf(stderr, "golden: %zu/%zu cases match llama.cpp\n", n_cases - (size_t)bad, n_cases);
  json_decref(cases);
  assert_int_equal(bad, 0);
}

/* mk_test_stream_decode, which must succeed. */
static char *stream_decode(const mk_tokenizer_t *t, const int32_t *ids, size_t n, size_t *out_len) {
  char *out = mk_test_stream_decode(t, ids, n, out_len);
  assert_non_null(out);
  return out;
}

/* decode(golden ids) == llama.cpp's detokenized text, and decode(encode(s)) == s without
 * specials. */
static void test_decode(void **state) {
  fixture_t *f = *state;
  json_t *cases = read_jsonl("tests/golden/tokenizer/smollm2.jsonl");
  int roundtrips = 0;
  for (size_t i = 0; i < json_array_size(cases); i++) {
    json_t *c = json_array_get(cases, i);
    json_t *want = json_object_get(c, "ids");
    size_t nw = json_array_size(want);
    int32_t *ids = malloc((nw + 1) * sizeof *ids);
    for (size_t k = 0; k < nw; k++) ids[k] = (int32_t)json_integer_value(json_array_get(want, k));
    size_t dl;
    char *dec = stream_decode(f->t, ids, nw, &dl);
    const char *detok = json_string_value(json_object_get(c, "detok"));
    if (strcmp(dec, detok) != 0)
      fail_msg("decode(%s) = \"%s\", llama.cpp: \"%s\"", json_dumps(c, 0), dec, detok);
    free(dec);
    free(ids);

    json_t *text = json_object_get(c, "text");
    if (!text || json_is_true(json_object_get(c, "special"))) continue;
    const char *s = json_string_value(text);
    size_t len = json_string_length(text);
    mk_error_t err;
    int n = mk_tok_encode(f->t, s, len, false, false, NULL, 0, &err);
    int32_t *enc = malloc(((size_t)n + 1) * sizeof *enc);
    assert_int_equal(mk_tok_encode(f->t, s, len, false, false, enc, n, &err), n);
    dec = stream_decode(f->t, enc, (size_t)n, &dl);
    assert_int_equal(dl, len);
    assert_memory_equal(dec, s, len);
    roundtrips++;
    free(dec);
    free(enc);
  }
  assert_true(roundtrips >= 60);
  json_decref(cases);
}

/* Emoji whose bytes are split across tokens come out as whole characters. */
static void test_stream_emoji(void **state) {
  fixture_t *f = *state;
  const char *text = "👨‍👩‍👧‍👦 family 🇫🇷 flag 🦀😀";
  size_t len = strlen(text);
  int32_t ids[128];
  mk_error_t err;
  int n = mk_tok_encode(f->t, text, len, false, false, ids, 128, &err);
  assert_true(n > 0 && n <= 128);
  int split = 0; /* tokens whose piece alone is not valid UTF-8 */
  char out[512];
  size_t o = 0;
  mk_tok_stream_t s = {0};
  for (int i = 0; i < n; i++) {
    char piece[256];
    int pl = mk_tok_piece(f->t, ids[i], piece, sizeof piece);
    assert_true(pl >= 0 && pl <= (int)sizeof piece);
    if (!mk_test_utf8_valid((const unsigned char *)piece, (size_t)pl)) split++;
    int r = mk_tok_stream_push(f->t, &s, ids[i], out + o, (int)(sizeof out - o));
    assert_true(r >= 0);
    assert_true(mk_test_utf8_valid((const unsigned char *)out + o, (size_t)r)); /* each push: whole characters only */
    o += (size_t)r;
  }
  assert_int_equal(s.n_pending, 0);
  assert_int_equal(mk_tok_stream_flush(&s, out + o, (int)(sizeof out - o)), 0);
  assert_true(split > 0); /* the text does exercise split characters */
  assert_int_equal(o, len);
  assert_memory_equal(out, text, len);
}

/* The rendered chat prompt equals the GGUF template rendered by jinja2, and its ids equal
 * llama.cpp's. */
static void test_chat(void **state) {
  fixture_t *f = *state;
  assert_int_equal(mk_chat_detect(f->g), MK_CHAT_CHATML);
  char *sys = mk_chat_default_system(f->g);
  assert_non_null(sys);
  assert_string_equal(sys, "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  json_t *cases = read_jsonl("tests/golden/tokenizer/smollm2_chat.jsonl");
  assert_true(json_array_size(cases) >= 1);
  for (size_t i = 0; i < json_array_size(cases); i++) {
    json_t *c = json_array_get(cases, i);
    const char *user = json_string_value(json_object_get(c, "user"));
    const char *prompt = json_string_value(json_object_get(c, "prompt"));
    for (int with_sys = 0; with_sys < 2; with_sys++) {
      char *r = mk_chat_render(MK_CHAT_CHATML, with_sys ? sys : NULL, user);
      assert_string_equal(r, prompt);
      json_t *want = json_object_get(c, "ids");
      int32_t ids[512];
      mk_error_t err;
      int n = mk_tok_encode(f->t, r, strlen(r), mk_tok_add_bos(f->t), true, ids, 512, &err);
      assert_int_equal((size_t)n, json_array_size(want));
      for (int k = 0; k < n; k++)
        assert_int_equal(ids[k], json_integer_value(json_array_get(want, k)));
      free(r);
    }
  }
  free(sys);
  json_decref(cases);
}

/* Issue 15, bug 1: the 21 byte values without a single-byte token in SmolLM2's vocabulary are
 * dropped, as llama.cpp does ("x\x04y" -> [x, y]); they used to become the unknown id 0, which is
 * <|endoftext|>, an end-of-generation token, in the middle of the prompt. */
static void test_control_bytes(void **state) {
  fixture_t *f = *state;
  const int32_t x = mk_tok_find(f->t, "x"), y = mk_tok_find(f->t, "y");
  assert_true(x >= 0 && y >= 0);
  int32_t ids[16];
  mk_error_t err;
  int n = mk_tok_encode(f->t, "x\x04y", 3, false, false, ids, 16, &err);
  assert_int_equal(n, 2);
  assert_int_equal(ids[0], x);
  assert_int_equal(ids[1], y);
  /* control bytes without a token of their own; c0 c1 f5-ff are never valid UTF-8 and become
   * U+FFFD first (as in llama.cpp); f1 and f2 lead valid 4-byte characters (tested below) */
  const unsigned char missing[] = {0x04, 0x06, 0x13, 0x14, 0x16, 0x1d};
  for (int b = 0; b < 256; b++) {
    char text[3] = {'x', (char)b, 'y'};
    n = mk_tok_encode(f->t, text, 3, false, false, ids, 16, &err);
    assert_true(n >= 2 && n <= 3);
    for (int i = 0; i < n; i++)
      if (mk_tok_is_eog(f->t, ids[i])) fail_msg("byte %02x encodes to end-of-generation id %d", b, ids[i]);
    bool is_missing = memchr(missing, b, sizeof missing) != NULL;
    if (is_missing && (n != 2 || ids[0] != x || ids[1] != y))
      fail_msg("byte %02x: %d tokens, expected [x, y] (the byte dropped)", b, n);
  }
  const char *four[] = {"x\xf1\x80\x80\x80y", "x\xf2\x80\x80\x80y"}; /* U+40000, U+80000 */
  for (int k = 0; k < 2; k++) {
    n = mk_tok_encode(f->t, four[k], 6, false, false, ids, 16, &err);
    assert_true(n >= 2);
    for (int i = 0; i < n; i++)
      if (mk_tok_is_eog(f->t, ids[i])) fail_msg("U+%c0000 encodes to end-of-generation id %d", k ? '8' : '4', ids[i]);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_metadata), cmocka_unit_test(test_golden_ids),
      cmocka_unit_test(test_decode),   cmocka_unit_test(test_stream_emoji),
      cmocka_unit_test(test_chat),     cmocka_unit_test(test_control_bytes),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
