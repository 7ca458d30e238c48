/* Fuzz target: tokenizer encode and streamed decode on arbitrary bytes, with the demo model's
 * vocabulary (SmolLM2, byte-level BPE; $MORPHKV_TEST_MODEL, else ~/.cache/morphkv/...), or the
 * synthetic model's when that file is missing. The first input byte picks the flags (add_bos,
 * parse_special), the rest is the text. Properties:
 *   - every id is inside the vocabulary;
 *   - without parse_special, no end-of-generation id appears unless the text... never: a text can
 *     only produce a special token when parse_special is set (issue 15, bug 1);
 *   - the streamed decode of the ids is valid UTF-8, whatever the input;
 *   - round trip: for valid UTF-8 input without parse_special and without BOS, decode(encode(x))
 *     is x minus the bytes that have no token (SmolLM2: 04 06 13 14 16 1d, and f1/f2 leads). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/gguf.h"
#include "src/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"
#include "tests/testutil/synth_model.h"
#include "tests/testutil/testutil.h"

static mk_gguf_t *g_gguf;
static mk_tokenizer_t *g_tok;
static bool g_no_token[256]; /* bytes without a single-byte token (GPT-2 byte map) */

static int utf8_put(uint32_t cp, char *o) {
  if (cp < 0x80) return o[0] = (char)cp, 1;
  if (cp < 0x800) return o[0] = (char)(0xc0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3f)), 2;
  o[0] = (char)(0xe0 | cp >> 12), o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
  o[2] = (char)(0x80 | (cp & 0x3f));
  return 3;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  const char *path = getenv("MORPHKV_TEST_MODEL");
  char def[512], tmp[64];
  if (!path || access(path, R_OK) != 0) {
    snprintf(def, sizeof def, "%s/.cache/morphkv/SmolLM2-135M-Instruct.Q4_1.gguf",
             getenv("HOME") ? getenv("HOME") : "");
    path = def;
  }
  if (access(path, R_OK) != 0) {
    snprintf(tmp, sizeof tmp, "/tmp/mk_fuzz_vocab_%ld.gguf", (long)getpid());
    mk_synth_params_t p;
    mk_synth_params_default(&p);
    p.n_layer = 1;
    if (mk_synth_model_write(tmp, &p) != 0) abort();
    path = tmp;
  }
  mk_error_t err;
  if (mk_gguf_open(path, &g_gguf, &err) != 0 || mk_tok_load(g_gguf, &g_tok, &err) != 0) {
    fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
    abort();
  }
  fprintf(stderr, "fuzz_tokenizer: vocabulary of %s (%d tokens)\n", path, mk_tok_n_vocab(g_tok));
  /* GPT-2: printable Latin-1 bytes stand for themselves, the other 68 for U+0100.. in order */
  int k = 0;
  for (int b = 0; b < 256; b++) {
    bool keep = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
    char s[4] = {0};
    utf8_put(keep ? (uint32_t)b : (uint32_t)(256 + k++), s);
    g_no_token[b] = mk_tok_kind(g_tok) == MK_TOK_BPE && mk_tok_find(g_tok, s) < 0;
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1 || size > 4096) return 0;
  const bool add_bos = data[0] & 1, special = data[0] & 2;
  const char *text = (const char *)data + 1;
  const size_t len = size - 1;
  const int V = mk_tok_n_vocab(g_tok);
  int cap = (int)len + 8;
  int32_t *ids = malloc(sizeof *ids * (size_t)cap);
  mk_error_t err;
  int n = mk_tok_encode(g_tok, text, len, add_bos, special, ids, cap, &err);
  FUZZ_CHECK(n >= 0 && n <= cap, "encode returned %d for %zu bytes (cap %d)", n, len, cap);
  char *out = malloc((size_t)n * 300 + 16);
  size_t o = 0;
  mk_tok_stream_t s = {{0}, 0};
  for (int i = 0; i < n; i++) {
    FUZZ_CHECK(ids[i] >= 0 && ids[i] < V, "id %d outside 0..%d", ids[i], V - 1);
    FUZZ_CHECK(special || !mk_tok_is_eog(g_tok, ids[i]) || (add_bos && i == 0),
               "end-of-generation id %d at %d from plain text", ids[i], i);
    int r = mk_tok_stream_push(g_tok, &s, ids[i], out + o, 300);
    FUZZ_CHECK(r >= 0, "stream push of %d failed", ids[i]);
    FUZZ_CHECK(mk_test_utf8_valid((unsigned char *)out + o, (size_t)r), "push %d not UTF-8", i);
    o += (size_t)r;
  }
  o += (size_t)mk_tok_stream_flush(&s, out + o, 16);
  FUZZ_CHECK(mk_test_utf8_valid((unsigned char *)out, o), "decoded text not UTF-8");
  if (!special && !add_bos && mk_tok_kind(g_tok) == MK_TOK_BPE &&
      mk_test_utf8_valid((const unsigned char *)text, len)) {
    size_t m = 0;
    char *want = malloc(len + 1);
    for (size_t i = 0; i < len; i++)
      if (!g_no_token[(uint8_t)text[i]]) want[m++] = text[i];
    /* a dropped lead byte leaves its continuation bytes, which decode as U+FFFD each */
    bool lead_dropped = false;
    for (size_t i = 0; i < len; i++) lead_dropped |= g_no_token[(uint8_t)text[i]] && (uint8_t)text[i] >= 0x80;
    if (!lead_dropped)
      FUZZ_CHECK(o == m && memcmp(out, want, m) == 0, "round trip: %zu bytes in, %zu out", m, o);
    free(want);
  }
  free(out);
  free(ids);
  return 0;
}
