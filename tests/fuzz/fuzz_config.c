/* Fuzz target: `morphkv generate` config files (JSON, src/config.c) on arbitrary bytes.
 * Properties:
 *   - a refused file leaves a message;
 *   - an accepted file leaves every option inside the range its flag accepts (the JSON front end
 *     goes through the same validation as the flags);
 *   - loading the same text into two fresh option sets gives the same result (no hidden state);
 *   - mk_gen_opts_check and mk_gen_opts_free never fail on what was accepted. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "src/config.h"
#include "tests/fuzz/fuzz_common.h"

static void check_ranges(const mk_gen_opts_t *o) {
  FUZZ_CHECK(o->max_new_tokens >= 0 && o->ctx_size >= 0, "max_new %d ctx %d", o->max_new_tokens,
             o->ctx_size);
  FUZZ_CHECK(o->threads >= 0 && o->threads <= 4096, "threads %d", o->threads);
  FUZZ_CHECK(o->stats_every >= 1, "stats_every %d", o->stats_every);
  FUZZ_CHECK(o->n_stop >= 0 && o->n_stop <= MK_GEN_MAX_STOP, "n_stop %d", o->n_stop);
  for (int i = 0; i < o->n_stop; i++) FUZZ_CHECK(o->stop[i] && o->stop[i][0], "stop %d empty", i);
  const mk_sampler_params_t *s = &o->sampling;
  FUZZ_CHECK(isfinite(s->temperature) && s->temperature >= 0, "temperature %g", (double)s->temperature);
  FUZZ_CHECK(s->top_p > 0 && s->top_p <= 1, "top_p %g", (double)s->top_p);
  FUZZ_CHECK(s->min_p >= 0 && s->min_p <= 1, "min_p %g", (double)s->min_p);
  FUZZ_CHECK(s->repeat_penalty > 0 && isfinite(s->repeat_penalty), "penalty %g", (double)s->repeat_penalty);
  FUZZ_CHECK(s->repeat_last_n >= -1 && s->top_k >= 0, "last_n %d top_k %d", s->repeat_last_n, s->top_k);
  FUZZ_CHECK(o->comm_timeout >= 0 && isfinite(o->comm_timeout), "comm_timeout %g", (double)o->comm_timeout);
  FUZZ_CHECK(o->kv.window >= 0 && o->kv.capacity >= 0 && o->kv.sinks >= MK_KV_SINKS_DEFAULT, "kv sizes");
  FUZZ_CHECK(o->kv.evict_after >= 1 && o->kv.snapkv_pool >= 1 && o->kv.snapkv_pool % 2 == 1,
             "evict_after %g pool %d", (double)o->kv.evict_after, o->kv.snapkv_pool);
  FUZZ_CHECK(o->tp >= 0 && o->simd >= -1, "tp %d simd %d", o->tp, o->simd);
}

static int same_str(const char *a, const char *b) {
  return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 65536) return 0;
  char *text = malloc(size + 1);
  memcpy(text, data, size);
  text[size] = 0;
  mk_gen_opts_t a, b;
  mk_gen_opts_default(&a);
  mk_gen_opts_default(&b);
  mk_error_t ea = {{0}}, eb = {{0}};
  int ra = mk_gen_opts_load_json_text(&a, text, "fuzz.json", &ea);
  int rb = mk_gen_opts_load_json_text(&b, text, "fuzz.json", &eb);
  FUZZ_CHECK(ra == rb, "two loads disagree: %d vs %d", ra, rb);
  if (ra != 0) {
    FUZZ_CHECK(ea.msg[0] && strcmp(ea.msg, eb.msg) == 0, "message '%s' vs '%s'", ea.msg, eb.msg);
  } else {
    check_ranges(&a);
    FUZZ_CHECK(a.max_new_tokens == b.max_new_tokens && a.n_stop == b.n_stop &&
                   same_str(a.model, b.model) && same_str(a.prompt, b.prompt) &&
                   memcmp(&a.kv, &b.kv, sizeof a.kv) == 0,
               "two loads of the same text differ");
    mk_error_t ec = {{0}};
    if (mk_gen_opts_check(&a, &ec) != 0) FUZZ_CHECK(ec.msg[0], "check failed without a message");
  }
  mk_gen_opts_free(&a);
  mk_gen_opts_free(&b);
  free(text);
  return 0;
}
