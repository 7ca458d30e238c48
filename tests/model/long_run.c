/* The long run (ctest label slow, not in CI): a 20,000-token MorphKV generation on the demo model
 * in one process (no MPI, so LeakSanitizer sees only our allocations), built with ASan + LSan in
 * the sanitizer build. Checks:
 *   - every step succeeds and every sampled id is in range; the streamed text is valid UTF-8;
 *   - resident memory (VmRSS) at the end is within MK_LONG_RSS_BOUND of its value after the first
 *     1,000 tokens (MorphKV's cache is constant-size, so nothing may grow with the length);
 *   - at exit, LeakSanitizer reports no leak (the sanitizer build fails the test on one).
 * SmolLM2's training context (8,192) is shorter than the run, so the model is copied to a
 * temporary file with llama.context_length raised to 32,768 (RoPE itself has no length limit;
 * the text past 8k is not the point, the memory is).
 *   long_run [MODEL [N_TOKENS]]       (MODEL defaults to $MORPHKV_TEST_MODEL)
 *   long_run synth [N_TOKENS]         the synthetic model instead (tests/testutil/synth_model.h:
 *                                     4 layers, 8 heads over 2 KV heads, context 32,768): the same
 *                                     code paths in minutes instead of hours under ASan
 * Prints "rss: after 1000 tokens X KiB, at the end Y KiB" and PASS or FAIL. Run under ASan with
 * a small quarantine (ASAN_OPTIONS=quarantine_size_mb=16, set by ctest), else freed blocks held
 * by the quarantine read as growth. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "src/engine.h"
#include "src/sampler.h"
#include "tests/testutil/synth_model.h"
#include "tests/testutil/testutil.h"

#define MK_LONG_RSS_BOUND (16L << 20) /* bytes */
#define MK_LONG_CTX 32768u

static long rss_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kib = -1;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "VmRSS:", 6) == 0) kib = strtol(line + 6, NULL, 10);
  if (f) fclose(f);
  return kib;
}

/* Copies the model to a temporary file with llama.context_length = MK_LONG_CTX (the uint32 after
 * the key's name and its type tag 4). Returns 0 and the path, or -1. */
static int patched_copy(const char *src, char *path, size_t cap) {
  FILE *f = fopen(src, "rb");
  if (!f) return -1;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = n > 0 ? malloc((size_t)n) : NULL;
  int ok = b && fread(b, 1, (size_t)n, f) == (size_t)n;
  fclose(f);
  const char key[] = "llama.context_length";
  const size_t kl = sizeof key - 1;
  long at = -1;
  for (long i = 8; ok && i + (long)kl + 8 <= n && i < (1L << 24); i++) {
    uint64_t len;
    memcpy(&len, b + i - 8, 8);
    uint32_t type;
    memcpy(&type, b + i + kl, 4);
    if (len == kl && memcmp(b + i, key, kl) == 0 && type == 4) {
      at = i + (long)kl + 4;
      break;
    }
  }
  if (at < 0) ok = 0;
  if (ok) {
    uint32_t v = MK_LONG_CTX;
    memcpy(b + at, &v, 4);
    snprintf(path, cap, "/tmp/morphkv-long-run-%ld.gguf", (long)getpid());
    FILE *o = fopen(path, "wb");
    ok = o && fwrite(b, 1, (size_t)n, o) == (size_t)n;
    if (o && fclose(o) != 0) ok = 0;
  }
  free(b);
  return ok ? 0 : -1;
}

int main(int argc, char **argv) {
  const char *model = argc > 1 ? argv[1] : getenv("MORPHKV_TEST_MODEL");
  const int n_tok = argc > 2 ? atoi(argv[2]) : 20000;
  char path[256];
  int bad = !model || n_tok < 1000;
  if (!bad && strcmp(model, "synth") == 0) {
    mk_synth_params_t sp0;
    mk_synth_params_default(&sp0);
    sp0.n_ctx = (int)MK_LONG_CTX;
    sp0.n_layer = 4;
    snprintf(path, sizeof path, "/tmp/morphkv-long-run-%ld.gguf", (long)getpid());
    bad = mk_synth_model_write(path, &sp0) != 0;
  } else if (!bad) {
    bad = patched_copy(model, path, sizeof path) != 0;
  }
  if (bad) {
    printf("FAIL: long_run: cannot read or patch the model (%s)\n", model ? model : "unset");
    return 1;
  }
  mk_error_t err = {{0}};
  mk_engine_params_t ep = {.model_path = path,
                           .backend = {.kind = MK_BACKEND_CPU, .n_threads = 1, .simd = -1}};
  mk_engine_t *e = NULL;
  mk_sampler_t *smp = NULL;
  int rc = 1;
  int32_t *hist = malloc(sizeof *hist * ((size_t)n_tok + 64));
  unsigned char *text = malloc((size_t)n_tok * 64);
  const char *prompt = "Write a very long story about a lighthouse keeper and the sea.";
  int np = 0;
  size_t tl = 0;
  long rss1k = -1, rss_end = -1;
  mk_kv_config_t kv;
  mk_kv_config_default(&kv);
  kv.policy = MK_KV_MORPHKV;
  kv.window = 32;
  kv.capacity = 256;
  mk_sampler_params_t sp;
  mk_sampler_params_default(&sp);
  sp.repeat_penalty = 1.1f;
  if (!hist || !text || mk_engine_open(&e, &ep, NULL, &err) != 0) goto out;
  const int V = mk_engine_n_vocab(e);
  float *logits = malloc(sizeof(float) * (size_t)V);
  np = mk_tok_encode(mk_engine_tokenizer(e), prompt, strlen(prompt), true, false, hist, 64, &err);
  if (!logits || np <= 0 || mk_engine_begin(e, &kv, 1, np, np + n_tok + 1, &err) != 0 ||
      mk_sampler_new(&sp, V, &smp, &err) != 0 ||
      mk_engine_step(e, 0, hist, np, false, logits, &err) != 0) {
    free(logits);
    goto out;
  }
  mk_tok_stream_t st = {{0}, 0};
  char piece[512];
  time_t t0 = time(NULL);
  for (int t = 0; t < n_tok; t++) {
    int32_t id = mk_sampler_sample(smp, logits, hist, np + t);
    int nb = id >= 0 && id < V ? mk_tok_stream_push(mk_engine_tokenizer(e), &st, id, piece, 512) : -1;
    if (nb < 0) {
      snprintf(err.msg, sizeof err.msg, "token %d: id %d out of range or not decodable", t, id);
      free(logits);
      goto out;
    }
    memcpy(text + tl, piece, (size_t)nb);
    tl += (size_t)nb;
    hist[np + t] = id;
    if (mk_engine_step(e, 0, &id, 1, false, logits, &err) != 0) {
      free(logits);
      goto out;
    }
    if (t + 1 == 1000) {
      rss1k = rss_kib();
      fprintf(stderr, "long_run: 1000 tokens, %ld s, rss %ld KiB\n", (long)(time(NULL) - t0), rss1k);
    }
    if ((t + 1) % 2000 == 0)
      fprintf(stderr, "long_run: %d tokens, %ld s, rss %ld KiB\n", t + 1, (long)(time(NULL) - t0),
              rss_kib());
  }
  int nb = mk_tok_stream_flush(&st, piece, 512);
  if (nb > 0) memcpy(text + tl, piece, (size_t)nb), tl += (size_t)nb;
  rss_end = rss_kib();
  free(logits);
  mk_engine_stats_t es;
  mk_engine_get_stats(e, &es);
  printf("rss: after 1000 tokens %ld KiB, at the end (%d tokens) %ld KiB, growth %ld KiB (bound "
         "%ld KiB); %zu bytes of text, KV live %zu bytes, peak %zu\n",
         rss1k, n_tok, rss_end, rss_end - rss1k, MK_LONG_RSS_BOUND >> 10, tl, es.kv_live_bytes,
         es.kv_peak_bytes);
  if (!mk_test_utf8_valid(text, tl))
    snprintf(err.msg, sizeof err.msg, "the streamed text is not valid UTF-8");
  else if (rss1k < 0 || rss_end - rss1k > (MK_LONG_RSS_BOUND >> 10))
    snprintf(err.msg, sizeof err.msg, "resident memory grew by %ld KiB (bound %ld KiB)",
             rss_end - rss1k, MK_LONG_RSS_BOUND >> 10);
  else
    rc = 0;
out:
  if (rc) printf("FAIL: long_run: %s\n", err.msg);
  else printf("PASS: long_run: %d MorphKV tokens\n", n_tok);
  mk_sampler_free(smp);
  mk_engine_close(e);
  free(hist);
  free(text);
  unlink(path);
  return rc;
}
