/* Token sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeded.
 * Deterministic for a given seed, so every rank of a tensor-parallel run that samples from the
 * same logits picks the same token. */
#ifndef MK_SAMPLER_H
#define MK_SAMPLER_H

#include <stdint.h>

#include "src/mk_error.h"

typedef struct mk_sampler_params {
  float temperature;    /* <= 0: greedy (argmax, ties to the lowest id) */
  int top_k;            /* <= 0: off */
  float top_p;          /* >= 1: off */
  float min_p;          /* <= 0: off */
  float repeat_penalty; /* 1: off (llama.cpp semantics: logit>0 ? /p : *p) */
  int repeat_last_n;    /* window of recent tokens the penalty looks at */
  uint64_t seed;
} mk_sampler_params_t;

void mk_sampler_params_default(mk_sampler_params_t *p); /* T=0.8, k=40, p=0.95, min_p=0.05, rp=1, n=64, seed 42 */

typedef struct mk_sampler mk_sampler_t;
int mk_sampler_new(const mk_sampler_params_t *p, int n_vocab, mk_sampler_t **out, mk_error_t *err);
void mk_sampler_free(mk_sampler_t *s);
/* Picks the next token from logits (n_vocab; modified in place). history: previous tokens
 * (prompt + generated), for the repetition penalty. */
int32_t mk_sampler_sample(mk_sampler_t *s, float *logits, const int32_t *history, int n_history);

#endif
