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

/* Distributed sampling: the same token as mk_sampler_sample on the whole vocabulary, when every
 * rank holds a contiguous slice of the logits, from an exchange of a few candidates per rank:
 *   1. every rank: mk_sampler_local on its slice -> mk_sampler_cand_count(s) entries: its greedy
 *      (max logit, lowest id) first, then (top-k settings) its top_k candidates after the penalty,
 *      id -1 for padding;
 *   2. all-gather the entries, rank-major;
 *   3. every rank: mk_sampler_merge picks the token (same samplers, same seeds: same token).
 * Greedy needs 1 entry per rank; top-k / top-p / min-p / temperature need 1 + top_k. Without a
 * top-k bound (top_k <= 0 or > MK_SAMPLER_MAX_K) the candidates could be the whole vocabulary:
 * mk_sampler_cand_count returns 0 and the caller gathers the full logits instead. */
#define MK_SAMPLER_MAX_K 4096
typedef struct mk_sample_cand {
  float logit;
  int32_t id;
} mk_sample_cand_t;
int mk_sampler_cand_count(const mk_sampler_t *s);
/* slice: logits of ids [v0, v0 + nv), penalised in place; out: mk_sampler_cand_count(s) entries. */
void mk_sampler_local(mk_sampler_t *s, float *slice, int v0, int nv, const int32_t *history,
                      int n_history, mk_sample_cand_t *out);
/* all: n_ranks * mk_sampler_cand_count(s) entries, rank-major. Advances the RNG like
 * mk_sampler_sample. */
int32_t mk_sampler_merge(mk_sampler_t *s, const mk_sample_cand_t *all, int n_ranks);

#endif
