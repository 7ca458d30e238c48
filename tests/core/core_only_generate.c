/* A single-process user of the core library (morphkv_core) and nothing else: loads the demo model,
 * tokenizes a golden prompt, generates 16 tokens greedily with the full cache and compares them with
 * llama.cpp's greedy continuation from tests/golden/logits/smollm2_logits.json (case "1, 2, 3, 4,
 * 5, 6, 7, 8, 9, 10,", whose top-2 margin never falls below 1.6 logits along the path, so the
 * comparison is exact, not a near-tie). The JSON is read with a few lines of C here: the core needs
 * no Jansson, and neither does its user.
 *   core_only_generate MODEL GOLDEN_JSON   -> "PASS: core_only_generate" and 0, or FAIL and 1 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/engine.h"
#include "src/sampler.h"
#include "src/tokenizer.h"

#ifdef MPI_VERSION
#error "the core's public headers (engine.h, sampler.h, tokenizer.h) must not need mpi.h"
#endif

#define PROMPT "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
#define N_GEN 16

static int fail(const char *what, const char *msg) {
  printf("FAIL: core_only_generate: %s: %s\n", what, msg);
  return 1;
}

static char *read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = NULL;
  long n = -1;
  if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
      (buf = malloc((size_t)n + 1)) && fread(buf, 1, (size_t)n, f) == (size_t)n)
    buf[n] = '\0';
  else {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  return buf;
}

/* The integers of the array after "key": in the object that contains "text":"<text>". */
static int golden_ids(const char *json, const char *text, const char *key, int32_t *ids, int cap) {
  char needle[128];
  snprintf(needle, sizeof needle, "\"text\":\"%s\"", text);
  const char *c = strstr(json, needle);
  if (!c) return -1;
  snprintf(needle, sizeof needle, "\"%s\":[", key);
  if (!(c = strstr(c, needle))) return -1;
  c += strlen(needle);
  int n = 0;
  while (*c && *c != ']' && n < cap) {
    char *end;
    long v = strtol(c, &end, 10);
    if (end == c) return -1;
    ids[n++] = (int32_t)v;
    c = end;
    if (*c == ',') c++;
  }
  return *c == ']' || n == cap ? n : -1;
}

int main(int argc, char **argv) {
  if (argc != 3) return fail("usage", "core_only_generate MODEL GOLDEN_JSON");
  char *json = read_file(argv[2]);
  if (!json) return fail(argv[2], "cannot read");
  int32_t want_prompt[64], want_gen[N_GEN];
  int n_want_prompt = golden_ids(json, PROMPT, "prompt_ids", want_prompt, 64);
  int n_want_gen = golden_ids(json, PROMPT, "greedy_ids", want_gen, N_GEN);
  free(json);
  if (n_want_prompt <= 0 || n_want_gen != N_GEN) return fail(argv[2], "golden case not found");

  mk_error_t err = {{0}};
  mk_engine_t *e = NULL;
  mk_engine_params_t p = {.model_path = argv[1],
                          .backend = {.kind = MK_BACKEND_CPU, .n_threads = 1, .simd = -1}};
  if (mk_engine_open(&e, &p, NULL, &err) != 0) return fail("mk_engine_open", err.msg);
  const mk_tokenizer_t *tok = mk_engine_tokenizer(e);
  int32_t ids[64 + N_GEN];
  int n = mk_tok_encode(tok, PROMPT, strlen(PROMPT), mk_tok_add_bos(tok), false, ids, 64, &err);
  int rc = 0;
  if (n < 0) rc = fail("mk_tok_encode", err.msg);
  else if (n != n_want_prompt || memcmp(ids, want_prompt, sizeof(int32_t) * (size_t)n) != 0)
    rc = fail("prompt", "token ids differ from llama.cpp's");

  mk_kv_config_t kv;
  mk_kv_config_default(&kv);
  mk_sampler_params_t sp;
  mk_sampler_params_default(&sp);
  sp.temperature = 0.0f;
  mk_sampler_t *smp = NULL;
  const int V = mk_engine_n_vocab(e);
  float *logits = malloc(sizeof(float) * (size_t)V);
  if (rc == 0 && !logits) rc = fail("logits", "out of memory");
  if (rc == 0 && (mk_engine_begin(e, &kv, 1, n, n + N_GEN, &err) != 0 ||
                  mk_sampler_new(&sp, V, &smp, &err) != 0))
    rc = fail("mk_engine_begin / mk_sampler_new", err.msg);
  if (rc == 0 && mk_engine_step(e, 0, ids, n, false, logits, &err) != 0) rc = fail("prefill", err.msg);
  char text[N_GEN * 16 + 1] = "";
  size_t len = 0;
  mk_tok_stream_t stream = {{0}, 0};
  for (int i = 0; rc == 0 && i < N_GEN; i++) {
    int32_t id = mk_sampler_sample(smp, logits, ids, n);
    if (id != want_gen[i]) {
      char msg[96];
      snprintf(msg, sizeof msg, "token %d is %d, llama.cpp's greedy token is %d", i, id, want_gen[i]);
      rc = fail("greedy", msg);
      break;
    }
    ids[n++] = id;
    char piece[256];
    int nb = mk_tok_stream_push(tok, &stream, id, piece, (int)sizeof piece);
    if (nb < 0 || len + (size_t)nb >= sizeof text) {
      rc = fail("detokenize", "bad piece");
      break;
    }
    memcpy(text + len, piece, (size_t)nb);
    text[len += (size_t)nb] = '\0';
    if (i + 1 < N_GEN && mk_engine_step(e, 0, &id, 1, false, logits, &err) != 0) rc = fail("decode", err.msg);
  }
  /* the golden ids spell the count going on */
  if (rc == 0 && strcmp(text, " 11, 12, 13, 14,") != 0) rc = fail("text", text);
  if (rc == 0) printf("PASS: core_only_generate: \"%s\" + \"%s\"\n", PROMPT, text);
  free(logits);
  mk_sampler_free(smp);
  mk_engine_close(e);
  return rc;
}
